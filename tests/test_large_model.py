"""Models above the protobuf limit (2 GiB): the route through files, exercised on a small model.

Protobuf cannot serialize a ModelProto above 2 GiB, so such a model reaches onnxruntime, the
checker and shape inference as a file with external data, and is written as `<out>` +
`<out>.data`. `io.PROTOBUF_LIMIT` is read at call time: lowered to a few KB here, every step of a
full prune takes that route on a 150 KB model, and must give what the in-memory route gives.
The real size is measured by `benchmarks/large_model.py`.
"""

import json
import os
import tempfile

import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from onnxprune import io
from onnxprune.runtime import sessions
from onnxprune.verification import verify
from onnxprune.cli import main

HERE = os.path.dirname(__file__)
RESNET = os.path.join(HERE, "models", "resnet_style.onnx")
TINY_LIMIT = 4096


def prune_cli(out, report):
    args = [RESNET, "--calib", "random", "--calib-samples", "64", "--seed", "1", "-o", out, "--report", report]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return json.load(open(report))


def weights(path):
    model = onnx.load(str(path))
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_full_prune_through_files_equals_in_memory(tmp_path, monkeypatch):
    mem_report = prune_cli(tmp_path / "mem.onnx", tmp_path / "mem.json")
    assert not (tmp_path / "mem.onnx.data").exists()

    monkeypatch.setattr(io, "PROTOBUF_LIMIT", TINY_LIMIT)
    written, ort_sources, inferred_paths, checked = [], [], [], []
    real_write, real_session = io.write_external, onnxruntime.InferenceSession
    real_infer, real_infer_path = onnx.shape_inference.infer_shapes, onnx.shape_inference.infer_shapes_path
    real_check = onnx.checker.check_model

    def write_external(model, model_path, *args, **kwargs):
        written.append(str(model_path))
        return real_write(model, model_path, *args, **kwargs)

    def session(source, *args, **kwargs):
        ort_sources.append(source)
        return real_session(source, *args, **kwargs)

    def infer_shapes(model, *args, **kwargs):
        assert model.ByteSize() <= TINY_LIMIT, "shape inference on a proto above the limit"
        return real_infer(model, *args, **kwargs)

    def infer_shapes_path(path, *args, **kwargs):
        inferred_paths.append(path)
        return real_infer_path(path, *args, **kwargs)

    def check_model(model, *args, **kwargs):
        assert isinstance(model, (str, os.PathLike)) or model.ByteSize() <= TINY_LIMIT, "checker on a big proto"
        checked.append(model)
        return real_check(model, *args, **kwargs)

    monkeypatch.setattr(io, "write_external", write_external)
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", infer_shapes)
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes_path", infer_shapes_path)
    monkeypatch.setattr(onnx.checker, "check_model", check_model)
    out = tmp_path / "big.onnx"
    file_report = prune_cli(out, tmp_path / "big.json")

    # onnxruntime never got bytes above the limit: the models went as files (tiny sub-models as bytes)
    paths = [s for s in ort_sources if isinstance(s, str)]
    assert len(paths) >= 5 and all(len(s) <= TINY_LIMIT for s in ort_sources if not isinstance(s, str))
    assert inferred_paths, "shape inference never took the path route"
    assert any(isinstance(c, str) for c in checked), "the checker never took the path route"
    # the temporary copies lived in private folders, all removed
    temp = [p for p in written if os.path.dirname(os.path.dirname(p)) == tempfile.gettempdir()]
    assert len(temp) >= 3 and set(paths) <= set(temp) and set(inferred_paths) <= set(temp)
    assert not [p for p in temp if os.path.exists(os.path.dirname(p))]
    # the output: <out> + <out>.data, named by a relative location
    assert sorted(os.listdir(tmp_path)) == ["big.json", "big.onnx", "big.onnx.data", "mem.json", "mem.onnx"]
    graph_only = onnx.load(str(out), load_external_data=False)
    locations = {e.value for t in graph_only.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"big.onnx.data"}
    assert os.path.getsize(out) < os.path.getsize(tmp_path / "big.onnx.data")
    real_check(str(out))
    # same result as in memory
    a, b = weights(tmp_path / "mem.onnx"), weights(out)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    for key in ("verification", "holdout", "recovery", "groups", "macs_kept", "params_kept"):
        assert file_report[key] == mem_report[key], key
    assert file_report["verification"]["valid"]
    assert file_report["after"]["params"] == mem_report["after"]["params"]


def mixed_model():
    """A model whose tensors are stored in every way: raw bytes, float_data, int64, small and large."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    b = helper.make_tensor("b", onnx.TensorProto.FLOAT, [16], rng.standard_normal(16).tolist())   # float_data
    shape = numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape")
    fc = numpy_helper.from_array(rng.standard_normal((16 * 36, 10)).astype(np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Reshape", ["c", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", 1, [1, 10])],
                          initializer=[numpy_helper.from_array(w, "w"), b, shape, fc])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_write_external_keeps_the_model_and_its_values(tmp_path):
    model = mixed_model()
    before = model.SerializeToString()
    io.write_external(model, tmp_path / "m.onnx", tmp_path / "m.onnx.data")
    assert model.SerializeToString() == before   # the model given is never changed
    graph_only = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    external = {t.name: {e.key: e.value for e in t.external_data} for t in graph_only.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL}
    assert set(external) == {"w", "fc"}   # tensors under 1 KB (bias, shape) stay inside the .onnx
    assert all(e["location"] == "m.onnx.data" and int(e["offset"]) % 64 == 0 for e in external.values())
    loaded = io.load(tmp_path / "m.onnx")
    a = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in loaded.graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    x = {"x": np.ones((1, 3, 8, 8), np.float32)}
    np.testing.assert_array_equal(sessions.session(model).run(None, x)[0],
                                  sessions.session(str(tmp_path / "m.onnx")).run(None, x)[0])


def test_ort_model_route_and_cleanup(monkeypatch):
    model = mixed_model()
    with sessions.OrtModel(model) as small:
        assert isinstance(small.source, bytes)
    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 1000)
    with sessions.OrtModel(model) as big:
        assert big.is_path and os.path.isfile(big.source) and os.path.isfile(big.source + ".data")
        folder = os.path.dirname(big.source)
        assert oct(os.stat(folder).st_mode & 0o777) == "0o700"   # private
    assert not os.path.exists(folder)
    dropped = sessions.OrtModel(model)   # without close: removed when garbage-collected
    folder = dropped.temp.folder
    del dropped
    assert not os.path.exists(folder)


def test_verify_checks_big_models_through_a_file(monkeypatch):
    model = mixed_model()
    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 1000)
    result = verify.verify(model, model, {"x": [1, 3, 8, 8]})
    assert result.valid, result.problems
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.node[0].input[1] = "missing"
    result = verify.verify(model, broken, {"x": [1, 3, 8, 8]})
    assert not result.valid and result.problems[0].startswith("onnx.checker")


@pytest.mark.parametrize("limit", [None, 1000])
def test_save_threshold_is_read_at_call_time(tmp_path, monkeypatch, limit):
    if limit:
        monkeypatch.setattr(io, "PROTOBUF_LIMIT", limit)
    written = io.save(mixed_model(), tmp_path / "out.onnx")
    assert [p.name for p in written] == (["out.onnx", "out.onnx.data"] if limit else ["out.onnx"])
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in written)   # no temporary files left


@pytest.mark.parametrize("model, ignore", [("resnet_style.onnx", ()), ("resnet_style.onnx", ("/stem/stem.0/Conv",)),
                                           ("densenet_style_definit.onnx", ()), ("shufflenet_style.onnx", ()),
                                           ("zoo:squeezenet", ())])   # IR 3: initializers listed as inputs
def test_rewrite_without_copying_large_weights_gives_the_same_model(monkeypatch, model, ignore):
    """Weights above graph.LARGE_CONST are read from the analysed model, not copied then replaced;
    those left whole (an ignored group) are copied back."""
    import onnxprune
    from onnxprune.analysis import graph

    if model.startswith("zoo:"):
        import zoo

        path = zoo.materialise(model[4:])
    else:
        path = os.path.join(HERE, "models", model)
    expected = onnxprune.prune(path, criterion="l1", ratio=0.5, ignore=ignore, verify=False, recover=False).model
    monkeypatch.setattr(graph, "LARGE_CONST", 256)
    split = []
    real = graph.copy_without_large

    def spy(m, *args, **kwargs):
        copy, large = real(m, *args, **kwargs)
        split.append(len(large))
        return copy, large

    real_restore = graph.restore_large

    def restore(m, large):
        before = len(m.graph.initializer)
        real_restore(m, large)
        restored.append(len(m.graph.initializer) - before)

    restored = []
    monkeypatch.setattr("onnxprune.rewrite.restore_large", restore)

    monkeypatch.setattr("onnxprune.rewrite.copy_without_large", spy)
    result = onnxprune.prune(path, criterion="l1", ratio=0.5, ignore=ignore, recover=False)
    assert split and split[0] > 0 and result.report["verification"]["valid"]
    assert restored[0] > 0 or not ignore   # an ignored group's weights are copied back
    got = result.model
    assert [n.SerializeToString() for n in got.graph.node] == [n.SerializeToString() for n in expected.graph.node]
    a = {i.name: numpy_helper.to_array(i) for i in expected.graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in got.graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert [i.name for i in got.graph.input] == [i.name for i in expected.graph.input]
