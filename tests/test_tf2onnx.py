"""A real tf2onnx export (tests/models_tf/keras_nhwc.onnx, scripts/export_keras_model.py): NCHW
convs between Transposes, a residual Add, a depthwise conv, and a channels-last Flatten whose
Reshape target is computed from Shape through int32 Casts."""

import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from helpers import check_oracle
from onnxprune.cli import main
from onnxprune.pipeline import prepare

MODEL = os.path.join(os.path.dirname(__file__), "models_tf", "keras_nhwc.onnx")


def test_every_conv_group_is_prunable():
    an = prepare(onnx.load(MODEL)).analysis
    prunable = [g for g in an.groups if g.prunable]
    # conv+add (8), depthwise (tied to them), the last conv (16) through the flatten, the hidden Dense
    assert sorted(g.size for g in prunable) == [8, 16, 16], [(g.name, g.size, g.reasons) for g in an.groups]


@pytest.mark.parametrize("criterion", ["l1", "random"])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_oracle(criterion, ratio):
    pruned, an, removed = check_oracle(onnx.load(MODEL), criterion, ratio)
    assert len(removed) > 0


def test_flatten_rows_follow_the_kept_channels():
    pruned, an, removed = check_oracle(onnx.load(MODEL), "l1", 0.5)
    flat = next(n for n in an.model.graph.node if n.op_type == "Reshape")
    last = an.tensors[flat.input[0]]          # [1, 4, 4, 16] channels last
    kept = an.kept_channels(np.asarray(removed, dtype=np.int64))
    channels, features = kept[last.name], kept[flat.output[0]]
    assert len(features) == 16 * len(channels)
    np.testing.assert_array_equal(features.reshape(16, -1) - np.arange(16)[:, None] * 16, np.tile(channels, (16, 1)))
    matmul = next(n for n in pruned.graph.node if n.op_type == "MatMul")
    w = next(i for i in pruned.graph.initializer if i.name == matmul.input[1])
    assert w.dims[0] == len(features)


def test_cli_prunes_it(tmp_path):
    out = tmp_path / "p.onnx"
    result = CliRunner().invoke(main, [MODEL, "--criterion", "l1", "--ratio", "0.5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and out.exists()
