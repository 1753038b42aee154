"""`onnxprune bench`: latency numbers, alternation, JSON schema, providers, batch and shape handling, exit codes."""

import json
import os
import subprocess
import sys

import click
import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.runtime import bench as bench_mod
from onnxprune.runtime.bench import BenchConfig, RunEvent, bench, read_profile, time_models
from onnxprune.cli.bench import bench as bench_command
from onnxprune.errors import OnnxPruneError

HERE = os.path.dirname(__file__)
RESNET = os.path.join(HERE, "models", "resnet_style.onnx")
FAST = ["--warmup", "1", "--repeat", "3"]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "pruned.onnx"
    onnxprune.save(onnxprune.prune(RESNET, ratio=0.5).model, path)
    return str(path)


def conv_model(path, dims):
    """x (dims, 3 channels) -> Conv 3->4 -> Relu -> y; dims may hold dim_param strings."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnxprune.save(model, path)
    return str(path)


def invoke(*args):
    group = click.Group()
    group.add_command(bench_command)
    return CliRunner().invoke(group, ["bench", *[str(a) for a in args]])


def run_json(*args):
    result = invoke(*args, *FAST, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


# --- measurement --------------------------------------------------------------------------------

def test_numbers_present_and_positive(pruned):
    result = bench([RESNET, pruned], BenchConfig(batches=(1, 2), warmup=1, repeat=3))
    assert [(t.model, t.batch) for t in result.timings] == [
        ("resnet_style.onnx", 1), ("pruned.onnx", 1), ("resnet_style.onnx", 2), ("pruned.onnx", 2)]
    for t in result.timings:
        assert len(t.times_ms) == 3 and all(x > 0 for x in t.times_ms)
        assert 0 < t.min_ms <= t.median_ms <= t.p90_ms
        assert t.throughput == pytest.approx(t.batch / (t.median_ms / 1000))
        assert t.speedup > 0 and t.mac_ratio > 0 and t.efficiency > 0
        assert t.efficiency == pytest.approx(t.speedup * t.mac_ratio)  # speedup / (macs_first / macs)
    first, second = result.timings[:2]
    assert first.speedup == 1.0 and first.mac_ratio == 1.0
    assert second.speedup == pytest.approx(first.median_ms / second.median_ms)
    orig, small = result.models
    assert second.mac_ratio == pytest.approx(small.macs / orig.macs) and second.mac_ratio < 0.5
    assert orig.macs > small.macs > 0 and orig.params > small.params > 0


def test_runs_alternate_between_models(pruned):
    events = []
    bench([RESNET, pruned, RESNET], BenchConfig(batches=(1, 4), warmup=2, repeat=3),
          labels=["A", "B", "C"], hook=events.append)
    expected = []
    for batch in (1, 4):
        for phase, n in (("warmup", 2), ("timed", 3)):
            expected += [RunEvent(phase, "cpu", batch, m) for _ in range(n) for m in "ABC"]
    assert events == expected


def test_time_models_order_and_counts():
    order = []
    runners = [lambda: order.append("A"), lambda: order.append("B")]
    times = time_models(runners, warmup=1, repeat=4)
    assert "".join(order) == "AB" * 5
    assert [len(t) for t in times] == [4, 4] and all(x >= 0 for t in times for x in t)


def test_read_profile(tmp_path):
    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 50},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 10, "dur": 999, "args": {"op_name": "Conv"}},  # dropped
        {"cat": "Session", "name": "model_run", "ts": 100, "dur": 50},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 110, "dur": 3000, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "relu_kernel_time", "ts": 120, "dur": 1000, "args": {"op_name": "Relu"}},
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 50},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 210, "dur": 5000, "args": {"op_name": "Conv"}},
    ]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(events))
    runs, total, top, by_type = read_profile(str(path))
    assert runs == 2 and total == pytest.approx(4.5)
    assert by_type == pytest.approx({"Conv": 4.0, "Relu": 0.5}) and list(by_type) == ["Conv", "Relu"]
    assert [(r["node"], r["op_type"], r["ms"]) for r in top] == [("conv", "Conv", 4.0), ("relu", "Relu", 0.5)]
    assert top[0]["share"] == pytest.approx(4.0 / 4.5)


# --- command line -------------------------------------------------------------------------------

def test_json_schema(pruned):
    doc, _ = run_json(RESNET, pruned, "--batch", "1", "--batch", "2", "--threads", "1")
    assert doc["schema_version"] == 1
    assert set(doc) >= {"onnxruntime", "available_providers", "config", "models", "results", "profiles", "notes"}
    assert doc["config"]["threads"] == 1 and doc["config"]["batches"] == [1, 2] and doc["config"]["repeat"] == 3
    assert [m["label"] for m in doc["models"]] == ["resnet_style.onnx", "pruned.onnx"]
    assert all(m["macs"] > 0 and m["static_batch"] is None for m in doc["models"])
    assert len(doc["results"]) == 4
    keys = {"model", "provider", "batch", "input_shapes", "times_ms", "median_ms", "p90_ms", "min_ms", "throughput",
            "speedup", "mac_ratio", "efficiency"}
    for r in doc["results"]:
        assert set(r) == keys and r["provider"] == "cpu" and len(r["times_ms"]) == 3
        assert r["input_shapes"] == {"input": [r["batch"], 3, 32, 32]}


def test_table_output(pruned):
    result = invoke(RESNET, pruned, *FAST)
    assert result.exit_code == 0, result.output
    for word in ("median", "p90", "speedup", "efficiency", "pruned.onnx", "1.00x"):
        assert word in result.stdout


def test_missing_provider_is_one_note_and_the_others_run(pruned):
    doc, err = run_json(RESNET, pruned, "--provider", "cpu", "--provider", "cuda", "--provider", "tensorrt")
    assert "note: CUDA provider not available: install onnxruntime-gpu" in err
    assert "TensorRT provider not available" in err
    assert {r["provider"] for r in doc["results"]} == {"cpu"}
    assert "CUDA provider not available: install onnxruntime-gpu" in doc["notes"]


def test_no_requested_provider_available_exits_1(pruned):
    result = invoke(RESNET, pruned, "--provider", "cuda", *FAST)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: none of the requested providers is available (CUDA provider not available")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def fake_cuda(monkeypatch):
    """onnxruntime claims CUDA, but sessions cannot use it (no GPU, CPU-only wheel)."""
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    calls = []
    if hasattr(ort, "preload_dlls"):
        monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: calls.append(1))
    return calls


def test_cuda_session_failure_is_one_line(fake_cuda, pruned):
    result = invoke(RESNET, pruned, "--provider", "cuda", *FAST)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    assert lines[-1].startswith("error: nothing was measured: CUDA provider could not be used for resnet_style.onnx")
    assert len([line for line in lines if line.startswith("error:")]) == 1
    if hasattr(ort, "preload_dlls"):
        assert fake_cuda, "preload_dlls is called before a CUDA session"


def test_cuda_session_failure_skips_cuda_and_keeps_cpu(fake_cuda, pruned):
    doc, err = run_json(RESNET, pruned, "--provider", "cuda", "--provider", "cpu")
    assert "CUDA provider could not be used" in err and "skipping CUDA" in err
    assert {r["provider"] for r in doc["results"]} == {"cpu"}


def test_cuda_session_exception_is_one_line(monkeypatch, pruned):
    """A session constructor that raises (driver missing) gives the first line of the error only."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])

    def boom(*args, **kwargs):
        raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected\n  at some/file.cc:123")

    monkeypatch.setattr(ort, "InferenceSession", boom)
    with pytest.raises(OnnxPruneError, match=r"^CUDA session for resnet_style.onnx failed: CUDA failure 100: "
                                             r"no CUDA-capable device is detected$"):
        bench_mod._session(bench_mod._prepare([RESNET], ["resnet_style.onnx"], {})[0], "cuda", BenchConfig())


def test_input_shape_for_dynamic_dims(tmp_path):
    dyn = conv_model(tmp_path / "dyn.onnx", ["N", 3, "H", "W"])
    result = invoke(dyn, *FAST)
    assert result.exit_code == 1 and "--input-shape" in result.stderr
    doc, _ = run_json(dyn, "--input-shape", "x:1,3,8,8", "--batch", "2", "--batch", "3")
    assert [(r["batch"], r["input_shapes"]["x"]) for r in doc["results"]] == [(2, [2, 3, 8, 8]), (3, [3, 3, 8, 8])]
    assert doc["models"][0]["macs"] == 4 * 8 * 8 * 3 * 3 * 3
    doc, _ = run_json(dyn, "--input-shape", "x:4,3,5,6")  # no --batch: the batch of --input-shape
    assert [(r["batch"], r["input_shapes"]["x"]) for r in doc["results"]] == [(4, [4, 3, 5, 6])]
    result = invoke(dyn, "--input-shape", "y:1,3,8,8", *FAST)
    assert result.exit_code == 1 and "no model has that input" in result.stderr


def test_static_batch_runs_at_its_own_batch(tmp_path):
    dyn = conv_model(tmp_path / "dyn.onnx", ["N", 3, 8, 8])
    static = conv_model(tmp_path / "static.onnx", [2, 3, 8, 8])
    doc, err = run_json(dyn, static, "--batch", "1", "--batch", "4")
    assert "static.onnx has a static batch of 2: it runs at batch 2 only (not at 1, 4)" in err
    got = [(r["model"], r["batch"], r["speedup"]) for r in doc["results"]]
    # batch 2 has only the static model: no reference there, so no speedup
    assert got == [("dyn.onnx", 1, 1.0), ("static.onnx", 2, None), ("dyn.onnx", 4, 1.0)]
    assert doc["models"][1]["static_batch"] == 2
    doc, err = run_json(static)  # default batch: no note
    assert [r["batch"] for r in doc["results"]] == [2] and "static batch" not in err


def test_profile(tmp_path, pruned):
    result = invoke(RESNET, pruned, "--profile", tmp_path / "prof", *FAST)
    assert result.exit_code == 0, result.output
    files = sorted(os.listdir(tmp_path / "prof"))
    assert len(files) == 2 and all(f.endswith(".json") for f in files)
    assert "profile resnet_style.onnx" in result.stdout and "by op type (ms/run): " in result.stdout
    doc, _ = run_json(RESNET, "--profile", tmp_path / "prof2")
    (prof,) = doc["profiles"]
    assert prof["runs"] == 3 and prof["total_ms"] > 0 and 0 < len(prof["top"]) <= 10
    assert prof["top"][0]["ms"] >= prof["top"][-1]["ms"]
    assert sum(prof["by_op_type"].values()) == pytest.approx(prof["total_ms"])


@pytest.mark.parametrize("args", [[], ["--provider", "opencl"], ["--repeat", "0"], ["--batch", "0"],
                                  ["--input-shape", "x:1,a"]])
def test_usage_errors_exit_2(args):
    result = invoke(*([RESNET] if args else []), *args)
    assert result.exit_code == 2, result.output


def test_bad_model_exits_1(tmp_path):
    result = invoke(tmp_path / "missing.onnx", *FAST)
    assert result.exit_code == 1 and "file not found" in result.stderr and "Traceback" not in result.output
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    result = invoke(RESNET, tmp_path / "junk.onnx", *FAST)
    assert result.exit_code == 1 and "not a valid ONNX model" in result.stderr


def test_help_is_lazy():
    code = ("import sys; import onnxprune.cli.bench; "
            "assert not {'onnx', 'onnxruntime', 'numpy', 'rich'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
    result = invoke("--help")
    assert result.exit_code == 0 and "--provider" in result.output
