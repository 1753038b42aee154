"""Models exported from PyTorch (tests/models, see its README): oracle for every criterion.

The six data-free criteria run on all 16 models; the calibrated ones (with random calibration
data, uniform ratios and recovery off, so the oracle applies) on a few, since `ensemble` and
`interactions` cost seconds each (they run on the smallest, shufflenet_style).

Each architecture comes twice: with randomised BN statistics, and with default init, where the
exporter shares identical bias initializers between convs (a trap for in-place slicing).
"""

import glob
import os

import onnx
import pytest

import onnxprune
from helpers import assert_matches_masked, check_oracle
from onnxprune.analysis import graph
from onnxprune.cli import CRITERIA
from onnxprune.criteria import DATA_CRITERIA

HERE = os.path.dirname(__file__)
MODELS = sorted(glob.glob(os.path.join(HERE, "models", "*.onnx")))
NAMES = [os.path.basename(m)[:-5] for m in MODELS]


def test_fixtures_present():
    assert len(MODELS) >= 16


@pytest.mark.parametrize("criterion", [c for c in CRITERIA if c not in DATA_CRITERIA])
@pytest.mark.parametrize("path", MODELS, ids=NAMES)
def test_oracle_every_criterion(path, criterion):
    check_oracle(onnx.load(path), criterion=criterion, ratio=0.5)


CHEAP_DATA = [c for c in DATA_CRITERIA if c not in ("ensemble", "interactions")] + ["blend"]


@pytest.mark.parametrize("name,criterion", [("shufflenet_style", c) for c in (*DATA_CRITERIA, "blend")]
                         + [(m, c) for m in ("resnet_style", "mobilenetv3_style", "yolo_style_definit")
                            for c in CHEAP_DATA])
def test_oracle_data_criteria(name, criterion):
    path = os.path.join(HERE, "models", f"{name}.onnx")
    model = onnx.load(path)
    result = onnxprune.prune(path, criterion=criterion, ratio=0.5, calib="random", calib_samples=16, batch_size=8,
                             recover=False, allocate="uniform", variety="off", order_check=False, verify=False)
    assert result.report["criterion"] == criterion
    an = result.analysis
    removed = result.plan.removed_units(an)
    assert len(removed) >= 0.3 * sum(g.size for g in an.groups if g.prunable)
    assert_matches_masked(model, an, removed, result.model, graph.fixed_input_shapes(model, None))


@pytest.mark.parametrize("path", MODELS, ids=NAMES)
def test_prune_valid_fewer_macs_same_io(path):
    original = onnx.load(path)
    result = onnxprune.prune(path, criterion="l1", ratio=0.5)
    rep = result.report
    assert rep["verification"]["valid"], rep["verification"]["problems"]
    assert rep["after"]["macs"] < rep["before"]["macs"]
    assert [i.name for i in result.model.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in result.model.graph.output] == [o.name for o in original.graph.output]
    # the dynamic batch dim is kept as it was
    dim = result.model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == original.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert result.model.opset_import == original.opset_import
    assert result.model.ir_version == original.ir_version


@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_other_ratios_and_round_to(ratio):
    path = os.path.join(HERE, "models", "resnet_style.onnx")
    check_oracle(onnx.load(path), criterion="l2", ratio=ratio)
    pruned, an, removed = check_oracle(onnx.load(path), criterion="l1", ratio=ratio, round_to=8)
    kept = an.kept_channels(removed)
    for g in an.groups:
        if g.prunable and g.size > 8:
            src = next(t for t in g.tensors if t in an.source_nodes)
            n = len(kept.get(src, range(an.tensors[src].size)))
            assert n % 8 == 0 or n == g.size
