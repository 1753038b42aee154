"""Loading and saving: external data inside the model's folder only, atomic outputs, large models."""

import os

import numpy as np
import onnx
import pytest
from onnx import external_data_helper

import onnxprune
from onnxprune import io
from onnxprune.errors import OnnxPruneError

HERE = os.path.dirname(__file__)
RESNET = os.path.join(HERE, "models", "resnet_style.onnx")


def external_copy(folder, location="weights.bin"):
    model = onnx.load(RESNET)
    external_data_helper.convert_model_to_external_data(model, all_tensors_to_one_file=True, location=location,
                                                        size_threshold=0)
    path = folder / "model.onnx"
    onnx.save_model(model, str(path))
    return path


def test_external_data_model_prunes(tmp_path):
    path = external_copy(tmp_path)
    result = onnxprune.prune(str(path), ratio=0.5)
    assert result.report["verification"]["valid"]


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "sub/../../outside.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    path = external_copy(tmp_path)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in external_data_helper._get_all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(path))
    with pytest.raises(OnnxPruneError, match="refusing"):
        io.load(path)


def test_missing_external_data_file(tmp_path):
    path = external_copy(tmp_path)
    os.unlink(tmp_path / "weights.bin")
    with pytest.raises(OnnxPruneError, match="not found"):
        io.load(path)


def test_save_above_the_limit_writes_external_data(tmp_path):
    model = onnx.load(RESNET)
    written = io.save(model, tmp_path / "big.onnx", size_limit=1000)   # test hook: a tiny limit
    assert [p.name for p in written] == ["big.onnx", "big.onnx.data"]
    loaded = io.load(tmp_path / "big.onnx")
    a = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    b = {i.name: onnx.numpy_helper.to_array(i) for i in loaded.graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous")

    class Boom(Exception):
        pass

    def explode(*a, **k):
        raise Boom()

    monkeypatch.setattr(os, "replace", explode)
    with pytest.raises(Boom):
        io.save(onnx.load(RESNET), target)
    assert target.read_bytes() == b"previous"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_opset_too_old_and_empty_graph(tmp_path):
    model = onnx.load(RESNET)
    model.opset_import[0].version = 6
    with pytest.raises(OnnxPruneError, match="opset 6"):
        io.check_supported(model)
    empty = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    with pytest.raises(OnnxPruneError, match="no nodes"):
        io.check_supported(empty)
