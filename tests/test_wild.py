"""Patterns from exported models in the wild (issue #20): each a small graph built here.

- infinite constants where they are bounds (Clip max +inf) pass; infinite weights are refused
- parameters counted wherever the weights live (Constant nodes)
- outputs with data-dependent dims (NonZero, TopK with a run-time K) verified by rank, dtype
  and static dims
- constant-only weight preparation (NF-Net weight standardisation) and run-time "same" pads
  folded or proven not to follow the channel count
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fixtures import B, X, const_nodes, weight
from helpers import check_oracle
from onnxprune import graph, metrics
from onnxprune.errors import OnnxPruneError
from onnxprune.pipeline import prepare, prune
from test_topologies import assert_prunable, groups


def _clip_inf(hi=np.inf, lo=0.0, extra=None):
    """c0 -> Clip(lo, hi) -> c1 -> Clip(lo, hi) -> c2 (graph output)."""
    b = B(3)
    lo_name, hi_name = b.f32("lo", lo), b.f32("hi", hi)
    h = b.op("Clip", [b.conv("x", 3, 8, "c0"), lo_name, hi_name], "a0")
    h = b.op("Clip", [b.conv(h, 8, 8, "c1"), lo_name, hi_name], "a1")
    if extra is not None:
        h = extra(b, h)
    return b.model(X, [b.conv(h, 8, 4, "c2")])


# ---- infinite constants ------------------------------------------------------------------------

@pytest.mark.parametrize("hi,lo", [(np.inf, 0.0), (np.inf, -np.inf)])
def test_clip_with_infinite_bound_prunes(hi, lo):
    model = _clip_inf(hi, lo)
    g = groups(model)
    assert_prunable(g["c0"], 8)
    assert_prunable(g["c1"], 8)
    pruned, an, removed = check_oracle(model, "l1", 0.5)
    assert weight(pruned, "c2").shape[1] == 4
    assert np.isinf(graph.GraphIndex(pruned).const(next(n for n in pruned.graph.node if n.name == "a1").input[2]))


def test_clip_bound_as_constant_node_prunes():
    """torch exports the bound as a Constant node (`onnx::Clip_40`)."""
    model = const_nodes(_clip_inf())
    pruned, _, _ = check_oracle(model, "l1", 0.5)
    assert weight(pruned, "c1").shape[0] == 4


def test_infinite_threshold_and_masked_fill_prune():
    def extra(b, h):
        m = b.op("Greater", [h, b.f32("t", -np.inf)], "m")
        return b.op("Where", [m, h, b.f32("fill", -np.inf)], "w")
    model = _clip_inf(extra=lambda b, h: b.op("Max", [extra(b, h), b.f32("floor", 0.0)], "mx"))
    check_oracle(model, "l1", 0.5)


def test_infinite_weight_is_refused():
    b = B(3)
    w = np.ones((8, 3, 3, 3), dtype=np.float32)
    w[0, 0, 0, 0] = np.inf
    h = b.relu(b.conv("x", 3, 8, "c0", weight=b.f32("w0", w)), "r0")
    model = b.model(X, [b.conv(h, 8, 4, "c1")])
    with pytest.raises(OnnxPruneError, match="'w0' contains NaN or Inf"):
        prepare(model)


def test_infinite_bound_also_read_as_a_weight_is_refused():
    """The same +inf constant read by a Clip and by a Mul: the Mul makes it a broken weight."""
    model = _clip_inf(extra=lambda b, h: b.op("Mul", [h, "hi"], "scaled"))
    with pytest.raises(OnnxPruneError, match="'hi' contains NaN or Inf"):
        prepare(model)


def test_nan_bound_is_refused():
    with pytest.raises(OnnxPruneError, match="'hi' contains NaN or Inf"):
        prepare(_clip_inf(hi=np.nan))


def test_clip_inf_model_prunes_end_to_end_with_calibration():
    result = prune(_clip_inf(), "l1", 0.5, calib="random", calib_samples=32, batch_size=8)
    assert result.report["verification"]["valid"]
    assert result.report["macs_kept"] < 0.8


# ---- counts ------------------------------------------------------------------------------------

def _small_cnn():
    b = B(5)
    h = b.relu(b.bn(b.conv("x", 3, 8, "c0"), 8, "bn0"), "r0")
    h = b.relu(b.conv(h, 8, 8, "c1"), "r1")
    return b.model(X, [b.conv(h, 8, 4, "c2")])


def test_params_counted_in_constant_nodes():
    model = _small_cnn()
    expected = 8 * 27 + 8 + 4 * 8 + 8 * 72 + 8 + 4 * 72 + 4
    assert metrics.count_params(model) == expected
    assert metrics.count_params(const_nodes(model)) == expected
    scalar = const_nodes(model)
    scalar.graph.node.insert(0, helper.make_node("Constant", [], ["k"], value_float=2.0))
    scalar.graph.node.insert(0, helper.make_node("Constant", [], ["ks"], value_floats=[1.0, 2.0]))
    scalar.graph.node.insert(0, helper.make_node("Constant", [], ["shape"], value_ints=[1, 2]))
    assert metrics.count_params(scalar) == expected + 3


def test_params_kept_with_constant_node_weights():
    plain = prune(_small_cnn(), "l1", 0.5).report
    consts = prune(const_nodes(_small_cnn()), "l1", 0.5).report
    assert consts["before"]["params"] == plain["before"]["params"] > 0
    assert consts["params_kept"] == pytest.approx(plain["params_kept"])
    assert consts["params_kept"] < 0.6
