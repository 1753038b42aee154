"""One fixture per op of the rule table (onnxprune/analysis/ops.py RULES) and per blocking reason.

Every fixture is Conv c0 -> Relu -> Conv c1 -> <the op under test> -> Conv c2 (a graph output).
A *pass* case asserts that c1's group is prunable, that the oracle (pruned == masked original)
holds with channels of c1 removed, and what the rewrite changed; a *block* case asserts that
c1's group is blocked with the rule's reason (words of the message) while c0 still prunes
correctly. `test_every_rule_op_has_a_fixture` and `test_every_blocking_reason_is_asserted` fail
when an op or a reason is added to onnxprune without a test here or in test_topologies.py.
"""

from __future__ import annotations

import ast
import os
import re

import numpy as np
import pytest
from onnx import TensorProto, helper

from fixtures import B, X, weight
from helpers import bn_params, tensor
from onnxprune.analysis.ops import RULES
from test_topologies import assert_blocked, assert_prunable, groups, kept, oracle

HERE = os.path.dirname(os.path.abspath(__file__))


def around(fn, opset=13, out_shape=None):
    """c0 -> relu -> c1 -> fn(b, h) -> c2. `fn` returns (tensor, its channels); `out_shape`: c2's
    output shape where onnx shape inference cannot give it (function ops, run-time axes)."""
    b = B(21)
    h = b.relu(b.conv("x", 3, 8, "c0"), "r0")
    h = b.conv(h, 8, 8, "c1")
    y, c = fn(b, h)
    return b.model(X, [b.conv(y, c, 4, "c2")], opset=opset, out_shapes=[out_shape] if out_shape else None)


def cast(b, h, name):
    return b.op("Cast", [h], name, to=TensorProto.FLOAT)


def thr(b, name, lo=-0.5, hi=0.5):
    return b.f32(name, b.rng.uniform(lo, hi, (1, 8, 1, 1)))


# ---- ops whose channels pass (c1 prunable) ---------------------------------------------------------

PASS = {
    # ArgMax/ArgMin over a spatial axis keep the channels, on axis 1 or (axis 0 reduced) axis 0
    "ArgMax_keepdims": lambda b, h: (b.op("Mul", [h, cast(b, b.op("ArgMax", [h], "am", axis=2, keepdims=1), "amf")],
                                          "y"), 8),
    "ArgMax_drop_after": lambda b, h: (b.op("Mul", [h, b.op("Unsqueeze", [cast(b, b.op(
        "ArgMax", [h], "am", axis=3, keepdims=0), "amf"), b.i64("ax", [3])], "amu")], "y"), 8),
    "ArgMin_drop_batch": lambda b, h: (b.op("Mul", [h, b.op("Unsqueeze", [cast(b, b.op(
        "ArgMin", [h], "am", keepdims=0), "amf"), b.i64("ax", [0])], "amu")], "y"), 8),
    "LpPool": lambda b, h: (b.op("LpPool", [h], "lp", kernel_shape=[2, 2], strides=[2, 2], p=2), 8),
    "GlobalLpPool": lambda b, h: (b.op("Mul", [h, b.op("GlobalLpPool", [h], "glp", p=2)], "y"), 8),
    "Pow_channel_exponent": lambda b, h: (b.op("Pow", [b.op("Abs", [h], "a"), thr(b, "e", 0.5, 2.0)], "y"), 8),
    "Pow_scalar": lambda b, h: (b.op("Pow", [h, b.f32("e", 2.0)], "y"), 8),
    **{f"{op}_mask": (lambda op: lambda b, h: (b.op("Mul", [h, cast(b, b.op(op, [h, thr(b, "t")], "cmp"), "m")],
                                                    "y"), 8))(op)
       for op in ("Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual")},
    **{f"{op}_mask": (lambda op: lambda b, h: (b.op("Mul", [h, cast(b, b.op(op, [
        b.op("Greater", [h, b.f32("z", 0.0)], "p"), b.op("Less", [h, thr(b, "t", 0.2, 1.0)], "q")], "l"), "m")],
        "y"), 8))(op) for op in ("And", "Or", "Xor")},
    "Not_mask": lambda b, h: (b.op("Mul", [h, cast(b, b.op("Not", [b.op("Greater", [h, thr(b, "t")], "p")], "n"),
                                                   "m")], "y"), 8),
    "Mod_fmod": lambda b, h: (b.op("Mod", [h, thr(b, "d", 0.5, 1.5)], "y", fmod=1), 8),
    "ReduceSum_noop_empty_axes": lambda b, h: (b.op("ReduceSum", [h, b.i64("axes", np.zeros(0))], "y",
                                                    noop_with_empty_axes=1), 8),
    "Expand_channel_shape": lambda b, h: (b.op("Mul", [h, b.op("Expand", [
        b.op("GlobalAveragePool", [h], "g"), b.i64("shape", [1, 8, 16, 16])], "e")], "y"), 8),
    "Expand_batch": lambda b, h: (b.op("Expand", [h, b.i64("shape", [2, 1, 1, 1])], "y"), 8),
    "ReduceL2_spatial": lambda b, h: (b.op("Mul", [h, b.op("ReduceL2", [h], "r", axes=[2, 3])], "y"), 8),
}
PASS_OPSET = {}


def _resize_axes(b, h):
    return b.op("Resize", [h, "", b.f32("scales", [2.0, 2.0])], "y", mode="nearest", axes=[2, 3]), 8


def _resize_axes_sizes(b, h):
    return b.op("Resize", [h, "", "", b.i64("sizes", [8, 32, 32])], "y", mode="nearest", axes=[1, 2, 3]), 8


def _pad_axes(b, h):
    return b.op("Pad", [h, b.i64("pads", [1, 2, 1, 2]), "", b.i64("axes", [2, 3])], "y"), 8


PASS.update({"Resize_axes_scales": _resize_axes, "Resize_axes_sizes": _resize_axes_sizes, "Pad_axes": _pad_axes})
PASS_OPSET.update({"Resize_axes_scales": 18, "Resize_axes_sizes": 18, "Pad_axes": 18})


@pytest.mark.parametrize("case", list(PASS))
def test_rule_passes_channels(case):
    model = around(PASS[case], opset=PASS_OPSET.get(case, 13))
    g = groups(model)
    assert_prunable(g["c0"], 8)
    assert_prunable(g["c1"], 8)
    pruned, an, removed = oracle(model)
    assert kept(an, removed, "c1") == 4
    assert weight(pruned, "c2").shape[1] == 4
    if case == "Resize_axes_sizes":
        assert list(weight(pruned, "y", 3)) == [4, 32, 32]
    if case == "Pow_channel_exponent":
        assert weight(pruned, "y", 1).shape == (1, 4, 1, 1)


def _positive(b, h):
    """Values in (0.9, 1.1): safe for logs, roots, products."""
    return b.op("Add", [b.op("Mul", [b.op("Sigmoid", [h], "sg"), b.f32("k02", 0.2)], "sg2"), b.f32("k09", 0.9)], "pos")


def _unary(op):
    def fn(b, h):
        x = _positive(b, h) if op in ("Log", "Sqrt", "Reciprocal") else h
        if op in ("IsNaN", "IsInf"):
            return b.op("Mul", [h, cast(b, b.op(op, [x], "u"), "uf")], "y"), 8
        if op == "Not":
            return b.op("Mul", [h, cast(b, b.op("Not", [b.op("Greater", [h, thr(b, "t")], "p")], "u"), "uf")], "y"), 8
        if op == "Cast":
            return b.op("Cast", [x], "y", to=TensorProto.FLOAT), 8
        if op == "CastLike":
            return b.op("CastLike", [x, b.f32("like", 0.0)], "y"), 8
        if op == "BitShift":
            q = b.op("Cast", [b.op("Mul", [b.op("Abs", [h], "a"), b.f32("ten", 10.0)], "a10")], "q", to=TensorProto.UINT32)
            s_ = b.const("sh", b.rng.integers(0, 3, (1, 8, 1, 1)).astype(np.uint32))
            return cast(b, b.op("BitShift", [q, s_], "bs", direction="LEFT"), "y"), 8
        return b.op(op, [x], "y"), 8
    return fn


UNARY_OPS = [op for op, rule in RULES.items() if type(rule).__name__ == "Passthrough"] + ["BitShift"]
REDUCE_OPS = [op for op, rule in RULES.items() if type(rule).__name__ == "Reduce" and op != "ReduceSum"]


UNARY_OPSET = {"HardSwish": 14, "CastLike": 15, "Mish": 18, "Gelu": 20}


@pytest.mark.parametrize("op", UNARY_OPS)
def test_elementwise_op_passes_channels(op):
    model = around(_unary(op), opset=UNARY_OPSET.get(op, 13))
    assert_prunable(groups(model)["c1"], 8)
    pruned, an, removed = oracle(model)
    assert weight(pruned, "c2").shape[1] == 4


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_spatial_reduction_passes_channels(op):
    """Every reduction over H (axes attribute at opset 13) keeps the channels: c1 * op(c1, H)."""
    def fn(b, h):
        return b.op("Mul", [h, b.op(op, [_positive(b, h)], "r", axes=[2])], "y"), 8
    model = around(fn)
    assert_prunable(groups(model)["c1"], 8)
    oracle(model)


def test_maxroipool_passes_channels():
    rois = np.array([[0, 0, 0, 7, 7], [0, 4, 4, 15, 15]], dtype=np.float32)
    model = around(lambda b, h: (b.op("MaxRoiPool", [h, b.f32("rois", rois)], "y", pooled_shape=[4, 4]), 8))
    assert_prunable(groups(model)["c1"], 8)
    pruned, an, removed = oracle(model)
    assert kept(an, removed, "c1") == 4


def test_gemm_per_row_bias_is_sliced_by_output():
    """Gemm C of shape [N, n] (one bias row per batch row): the kept output columns are taken."""
    b = B(22)
    h = b.relu(b.conv("x", 3, 8, "c0"), "r0")
    f = b.op("Flatten", [b.op("GlobalAveragePool", [h], "gap")], "flat")
    c = b.rng.normal(0, 0.5, (2, 6)).astype(np.float32)
    h1 = b.op("Relu", [b.op("Gemm", [f, b.f32("fc1_B", b.rng.standard_normal((8, 6))), b.f32("fc1_C", c)], "fc1")],
              "r1")
    model = b.model({"x": [2, 3, 16, 16]}, [b.gemm(h1, 6, 3, "fc2")])
    g = groups(model)
    assert_prunable(g["fc1"], 6)
    pruned, an, removed = oracle(model)
    assert kept(an, removed, "fc1") == 3
    assert weight(pruned, "fc1", 2).shape == (2, 3)
    keep = an.kept_channels(np.asarray(removed))["fc1"]
    np.testing.assert_array_equal(weight(pruned, "fc1", 2), c[:, keep])


# ---- ops and forms that block ----------------------------------------------------------------------

def _runtime_one(b):
    """A run-time int64 [1] equal to 1 (the static batch), so that values computed from it are not constants."""
    return b.op("Gather", [b.op("Shape", ["x"], "shp"), b.i64("zero", [0])], "one", axis=0)


def _runtime_f32(b, values, name):
    """Constant `values` times a run-time 1.0: a float tensor onnxprune cannot read as a constant."""
    return b.op("Mul", [b.f32(f"{name}_v", values), cast(b, _runtime_one(b), f"{name}_one")], name)


def _runtime_i64(b, values, name):
    return b.op("Mul", [b.i64(f"{name}_v", values), _runtime_one(b)], name)


BLOCK = {
    "ArgMax_channels": (lambda b, h: (b.op("Mul", [h, cast(b, b.op("ArgMax", [h], "am", axis=1), "amf")], "y"), 8),
                        ("ArgMax", "picks along the channel axis")),
    "ArgMin_channels_neg": (lambda b, h: (b.op("Mul", [h, cast(b, b.op("ArgMin", [h], "am", axis=-3), "amf")],
                                               "y"), 8), ("ArgMin", "picks along the channel axis")),
    "MaxPool_nhwc": (lambda b, h: (b.op("Transpose", [b.op("MaxPool", [b.op("Transpose", [h], "t", perm=[0, 2, 1, 3])],
                                                           "mp", kernel_shape=[1, 1]), ], "y", perm=[0, 2, 1, 3]), 8),
                     ("MaxPool", "pools a tensor whose channels are on axis 2")),
    "BatchNorm_nhwc": (lambda b, h: (b.op("Transpose", [b.bn(b.op("Transpose", [h], "t", perm=[0, 2, 1, 3]), 16, "bnt")],
                                          "y", perm=[0, 2, 1, 3]), 8),
                       ("BatchNormalization", "normalises axis 1 but channels are on axis 2")),
    "BatchNorm_runtime_scale": (lambda b, h: (b.op("BatchNormalization", [
        h, _runtime_f32(b, np.ones(8), "s"), b.f32("bb", np.zeros(8)), b.f32("bm", np.zeros(8)),
        b.f32("bv", np.ones(8))], "y"), 8), ("BatchNormalization", "non-constant parameter")),
    "DepthToSpace": (lambda b, h: (b.op("DepthToSpace", [h], "y", blocksize=2), 2), ("DepthToSpace", "moves channels")),
    "SpaceToDepth": (lambda b, h: (b.op("SpaceToDepth", [h], "y", blocksize=2), 32), ("SpaceToDepth", "moves space")),
    "Expand_runtime_shape": (lambda b, h: (b.op("Mul", [h, b.op("Expand", [
        b.op("GlobalAveragePool", [h], "g"), _runtime_i64(b, [1, 1, 16, 16], "shape")], "e")], "y"), 8),
        ("Expand", "expands the channel axis to a size that does not follow the channel count")),
    "Tile": (lambda b, h: (b.op("Tile", [h, b.i64("reps", [1, 2, 1, 1])], "y"), 16), ("Tile", "repeats channels")),
    "Einsum": (lambda b, h: (b.op("Einsum", [h, b.f32("s", np.ones(16, np.float32))], "y", equation="nchw,w->nchw"), 8),
               ("Einsum", "contracts arbitrary axes")),
    "LogSoftmax_channels": (lambda b, h: (b.op("LogSoftmax", [h], "y", axis=1), 8),
                            ("LogSoftmax", "normalises over the channel axis")),
    "Hardmax_channels": (lambda b, h: (b.op("Hardmax", [h], "y", axis=-3), 8),
                         ("Hardmax", "normalises over the channel axis")),
    "LpNormalization": (lambda b, h: (b.op("LpNormalization", [h], "y", axis=1, p=2), 8),
                        ("LpNormalization", "normalises across channels")),
    "MeanVarianceNormalization": (lambda b, h: (b.op("MeanVarianceNormalization", [h], "y"), 8),
                                  ("MeanVarianceNormalization", "statistics")),
    "ReduceMean_channels": (lambda b, h: (b.op("Mul", [h, b.op("ReduceMean", [h], "r", axes=[1])], "y"), 8),
                            ("ReduceMean", "reduces over the channel axis")),
    "ReduceSum_empty_axes_reduces_all": (lambda b, h: (b.op("Mul", [h, b.op("ReduceSum", [
        h, b.i64("axes", np.zeros(0))], "r")], "y"), 8), ("ReduceSum", "reduces over the channel axis")),
    "ReduceSum_runtime_axes": (lambda b, h: (b.op("Mul", [h, b.op("ReduceSum", [
        h, b.op("Add", [_runtime_one(b), b.i64("two", [1])], "axes")], "r")], "y"), 8),
        ("ReduceSum", "reduces run-time axes")),
    "Resize_channel_scale": (lambda b, h: (b.op("Resize", [h, "", b.f32("sc", [1.0, 2.0, 1.0, 1.0])], "y",
                                                mode="nearest"), 16), ("Resize", "resizes the channel axis")),
    "Resize_runtime_scales": (lambda b, h: (b.op("Resize", [h, "", _runtime_f32(b, [1.0, 1.0, 2.0, 2.0], "sc")], "y",
                                                 mode="nearest"), 8), ("Resize", "run-time scales or sizes")),
    "Pad_runtime_pads": (lambda b, h: (b.op("Pad", [h, _runtime_i64(b, [0, 0, 1, 1, 0, 0, 1, 1], "pads")], "y"), 8),
                         ("Pad", "run-time pads")),
    "Slice_runtime_bounds": (lambda b, h: (b.op("Slice", [h, b.op("Sub", [_runtime_one(b), b.i64("o", [1])], "st"),
                                                          b.i64("en", [4]), b.i64("ax", [1])], "y"), 4),
                             ("Slice", "run-time bounds")),
    "MatMul_by_channel_tensor": (lambda b, h: (b.op("MatMul", [h, h], "y"), 8),
                                 ("MatMul", "multiplies by a tensor that carries channels")),
    "MatMul_contracts_width": (lambda b, h: (b.op("MatMul", [h, b.f32("mm", b.rng.standard_normal((16, 16)))], "y"), 8),
                               ("MatMul", "contracts axis 3 but channels are on axis 1")),
    "Concat_spatial_fixed": (lambda b, h: (b.op("Concat", [h, b.f32("pad", np.ones((1, 8, 2, 16)))], "y", axis=2), 8),
                             ("Concat", "along axis 2 mixes in fixed channels")),
    # split axes moved apart keep channels on the inner axis; merging them back with a spatial axis in between mixes
    "Transpose_separates_shuffle_axes": (lambda b, h: (b.op("Reshape", [b.op("Transpose", [
        b.op("Reshape", [h, b.i64("s5", [1, 2, 4, 16, 16])], "r5")], "t", perm=[0, 1, 3, 2, 4]),
        b.i64("s4", [1, 8, 16, 16])], "y"), 8), ("Reshape", "mixes the channel axis with others")),
}
BLOCK_OPSET = {}
BLOCK_SHAPE = {"MeanVarianceNormalization": [1, 4, 16, 16], "ReduceSum_runtime_axes": [1, 4, 16, 16],
               "GroupNormalization": [1, 4, 16, 16], "Pad_runtime_axes": [1, 4, 18, 18]}


def _group_norm(b, h):
    return b.op("GroupNormalization", [h, b.f32("gs", np.ones(8)), b.f32("gb", np.zeros(8))], "y", num_groups=2), 8


def _pad_runtime_axes(b, h):
    return b.op("Pad", [h, b.i64("pads", [1, 1, 1, 1]), "", b.op("Add", [_runtime_one(b), b.i64("a", [1, 2])],
                                                                  "axes")], "y"), 8


BLOCK.update({"GroupNormalization": (_group_norm, ("GroupNormalization", "normalises over groups")),
              "Pad_runtime_axes": (_pad_runtime_axes, ("Pad", "run-time axes"))})
BLOCK_OPSET.update({"GroupNormalization": 21, "Pad_runtime_axes": 18})


@pytest.mark.parametrize("case", list(BLOCK))
def test_rule_blocks_with_reason(case):
    fn, words = BLOCK[case]
    model = around(fn, opset=BLOCK_OPSET.get(case, 13), out_shape=BLOCK_SHAPE.get(case))
    g = groups(model)
    assert_prunable(g["c0"], 8)
    assert_blocked(g["c1"], *words)
    pruned, an, removed = oracle(model)
    assert kept(an, removed, "c1") == 8
    assert weight(pruned, "c1").shape == (8, 4, 3, 3)


def _nhwc_conv(b, h):
    """A Conv reading an NHWC view: its axis 1 is H (16), not the 8 channels."""
    t = b.op("Transpose", [h], "t", perm=[0, 2, 3, 1])
    return b.conv(t, 16, 4, "cn"), 4


def _split_axes_relu(b, h):
    r5 = b.op("Reshape", [h, b.i64("s5", [1, 2, 4, 16, 16])], "r5")
    return b.op("Reshape", [b.op("Relu", [r5], "rl"), b.i64("s4", [1, 8, 16, 16])], "y"), 8


BLOCK.update({
    "Conv_reads_nhwc": (_nhwc_conv, ("Conv 'cn' reads 16 channels on axis 1",)),
    "split_channel_axes_read_by_Relu": (_split_axes_relu, ("channels split over two axes are read by Relu 'rl'",)),
})


def _two_axes(op):
    """`a` (channels on axis 1) combined with `bt`, whose channels are on axis 2 (a transposed conv output)."""
    b = B(25)
    a = b.relu(b.conv("x", 3, 16, "ca"), "ra")
    bt = b.op("Transpose", [b.conv("x", 3, 16, "cb")], "bt", perm=[0, 2, 1, 3])
    y = b.op(op, [a, bt], "y", **({"axis": 1} if op == "Concat" else {}))
    c = 32 if op == "Concat" else 16
    return b.model(X, [b.conv(b.relu(b.conv("x", 3, 8, "c0"), "r0"), 8, 4, "c2"), b.conv(y, c, 4, "cy")])


@pytest.mark.parametrize("op,words", [("Add", "Add 'y' combines tensors with channels on different axes"),
                                      ("Concat", "Concat 'y' joins tensors with channels on different axes")])
def test_channels_on_different_axes_block(op, words):
    model = _two_axes(op)
    g = groups(model)
    assert_blocked(g["ca"], words)
    assert_blocked(g["cb"], words)
    assert_prunable(g["c0"], 8)
    oracle(model)


def test_reshape_copying_a_changed_dimension_blocks():
    """Reshape [1, 8, 8, 8] by [0, 1, 0, -1]: the second 0 copies input dim 2 (8) into the axis that now
    holds the channels; pruning changes that count but not the copied dimension."""
    b = B(26)
    h = b.relu(b.conv("x", 3, 8, "c0"), "r0")
    h = b.conv(h, 8, 8, "c1")
    y = b.op("Reshape", [h, b.i64("shape", [0, 1, 0, -1])], "rs")
    model = b.model({"x": [1, 3, 8, 8]}, [b.conv(y, 1, 4, "c2")])
    g = groups(model)
    assert_prunable(g["c0"], 8)
    assert_blocked(g["c1"], "Reshape 'rs' copies a dimension that pruning changes")
    oracle(model)


def test_gemm_reading_channels_on_axis_0_blocks():
    b = B(27)
    h = b.relu(b.conv("x", 3, 8, "c0"), "r0")
    h = b.conv(h, 8, 8, "c1")
    col = b.op("Reshape", [b.op("GlobalAveragePool", [h], "gap"), b.i64("shape", [8, 1])], "col")  # channels on axis 0
    y = b.op("Gemm", [col, b.f32("fc_B", b.rng.standard_normal((1, 4)))], "fc")
    model = b.model(X, [y])
    g = groups(model)
    assert_blocked(g["c1"], "Gemm 'fc' reads 1 features on axis 1")
    oracle(model)


def test_training_mode_batchnorm_outputs_block():
    """BatchNormalization whose running-mean output is read (analysis only: onnxruntime has no training BN)."""
    b = B(28)
    h = b.relu(b.conv("x", 3, 8, "c0"), "r0")
    h = b.conv(h, 8, 8, "c1")
    p = {k: b.const(k, v) for k, v in bn_params(b.rng, 8, "bn").items()}
    y, rm, rv = b.op("BatchNormalization", [h, *p], "bn", n_out=3, training_mode=1)
    model = b.model(X, [b.conv(y, 8, 4, "c2"), b.op("Identity", [rm], "rm_out")], opset=15)
    g = groups(model)
    assert_prunable(g["c0"], 8)
    assert_blocked(g["c1"], "BatchNormalization 'bn' uses training-mode outputs")


def test_empty_channel_slice_blocks():
    b = B(29)
    h = b.relu(b.conv("x", 3, 8, "c0"), "r0")
    h = b.conv(h, 8, 8, "c1")
    y = b.op("Slice", [h, b.i64("st", [5]), b.i64("en", [5]), b.i64("ax", [1])], "sl")
    model = b.model(X, [b.conv(h, 8, 4, "c2"), b.op("ReduceSum", [y], "empty_sum", keepdims=0)])
    assert_blocked(groups(model)["c1"], "Slice 'sl' selects no channels")


# ---- weights, biases and parameters that are not constants ----------------------------------------

def _graph_input_case(kind):
    b = B(23)
    h = b.relu(b.conv("x", 3, 8, "c0"), "r0")
    h = b.relu(b.conv(h, 8, 8, "c1"), "r1")
    extra = {}
    if kind == "conv_weight":
        y = b.op("Conv", [h, "w_in"], "c2", kernel_shape=[1, 1])
        extra["w_in"] = [4, 8, 1, 1]
    elif kind == "conv_bias":
        y = b.op("Conv", [h, b.f32("c2_w", b.rng.standard_normal((4, 8, 1, 1))), "b_in"], "c2", kernel_shape=[1, 1])
        extra["b_in"] = [4]
    elif kind == "gemm_bias":
        f = b.op("Flatten", [b.op("GlobalAveragePool", [h], "gap")], "flat")
        y = b.op("Gemm", [f, b.f32("fc_B", b.rng.standard_normal((8, 4))), "b_in"], "fc")
        extra["b_in"] = [4]
    elif kind == "gemm_transA":
        f = b.op("Flatten", [b.op("GlobalAveragePool", [h], "gap")], "flat")  # [1, 8]
        y = b.op("Gemm", [f, b.f32("fc_B", b.rng.standard_normal((1, 4)))], "fc", transA=1)  # [8, 4]
    else:  # matmul by a graph input
        t = b.op("Transpose", [h], "t", perm=[0, 2, 3, 1])
        y = b.op("MatMul", [t, "m_in"], "mm")
        extra["m_in"] = [8, 4]
    return b.model({**X, **extra}, [y])


@pytest.mark.parametrize("kind,words", [
    ("conv_weight", ("Conv", "non-constant weight")), ("conv_bias", ("Conv", "non-constant bias")),
    ("gemm_bias", ("Gemm", "non-constant bias")), ("gemm_transA", ("Gemm", "non-constant or transposed operand")),
    ("matmul_input", ("MatMul", "not a product with a constant matrix")),
])
def test_non_constant_operands_block(kind, words):
    model = _graph_input_case(kind)
    g = groups(model)
    assert_prunable(g["c0"], 8)
    assert_blocked(g["c1"], *words)
    pruned, an, removed = oracle(model)
    assert kept(an, removed, "c1") == 8


def test_subgraph_read_blocks():
    """A tensor read inside an If branch (outer-scope name) cannot be pruned."""
    b = B(24)
    h = b.relu(b.conv("x", 3, 8, "c0"), "r0")
    h = b.conv(h, 8, 8, "c1")
    then_g = helper.make_graph([helper.make_node("Relu", ["c1"], ["t_out"])], "then", [],
                               [tensor("t_out", [1, 8, 16, 16])])
    else_g = helper.make_graph([helper.make_node("Neg", ["c1"], ["e_out"])], "else", [],
                               [tensor("e_out", [1, 8, 16, 16])])
    cond = b.op("Greater", [b.op("ReduceSum", ["x"], "sx", keepdims=0), b.f32("zero", 0.0)], "cond")
    y = b.op("If", [cond], "iff", then_branch=then_g, else_branch=else_g)
    model = b.model(X, [b.conv(y, 8, 4, "c2")], out_shapes=[[1, 4, 16, 16]])
    g = groups(model)
    assert_prunable(g["c0"], 8)
    assert_blocked(g["c1"], "read inside the subgraph of If", "iff")
    oracle(model)


# ---- the tables themselves ---------------------------------------------------------------------------

def _test_sources():
    texts = {}
    for name in os.listdir(HERE):
        if name.startswith("test_") and name.endswith(".py"):
            with open(os.path.join(HERE, name)) as f:
                texts[name] = f.read()
    return texts


def _fixture_ops():
    """Op types of every model this file builds (the fixtures above, built without running them)."""
    ops = set()
    models = [around(PASS[c], opset=PASS_OPSET.get(c, 13)) for c in PASS]
    models += [around(BLOCK[c][0], opset=BLOCK_OPSET.get(c, 13), out_shape=BLOCK_SHAPE.get(c)) for c in BLOCK]
    models += [around(_unary(op), opset=UNARY_OPSET.get(op, 13)) for op in UNARY_OPS]
    models += [around(lambda b, h, op=op: (b.op(op, [h], "r", axes=[2]), 8)) for op in REDUCE_OPS]
    models += [_graph_input_case(k) for k in ("conv_weight", "gemm_bias", "matmul_input")]
    for m in models:
        ops |= {n.op_type for n in m.graph.node}
    return ops | {"MaxRoiPool", "Gemm", "If"}


def test_every_rule_op_has_a_fixture():
    covered = _fixture_ops()
    texts = "\n".join(_test_sources().values())
    # an op is covered when a fixture here builds it, or another test file builds a node of it
    # ("Op" as the op_type argument of b.op / helper.make_node / a parametrized op list)
    missing = [op for op in RULES if op not in covered and not re.search(rf'"{op}"', texts)]
    assert not missing, f"ops of the rule table without any fixture: {missing}"


def _reason_fragments():
    """The fixed words of every `an.block(...)` reason in onnxprune (the longest literal piece of each)."""
    frags = []
    for mod in ("analysis/ops.py", "analysis/groups.py"):
        path = os.path.join(HERE, "..", "onnxprune", mod)
        tree = ast.parse(open(path).read())
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                    and call.func.attr in ("block", "block_channels") and len(call.args) >= 2):
                continue
            msg = call.args[-1]
            pieces = [v.value for v in msg.values if isinstance(v, ast.Constant)] if isinstance(msg, ast.JoinedStr) \
                else ([msg.value] if isinstance(msg, ast.Constant) else [])
            pieces = [p.strip(" '():->") for p in pieces]
            pieces = [p for p in pieces if len(p) >= 6]
            if pieces:
                frags.append((mod, call.lineno, max(pieces, key=len)))
    return frags


# reasons no valid model reaches (onnx shape inference fills in every shape these guard against, or
# onnx.checker rejects the form first); each is a defensive branch
UNREACHED = {
    "output shape unknown", "input shape unknown", "output sizes unknown", "shapes unknown",
    "input rank unknown", "is unknown or inconsistent", "disagree on the channel count",
}


def _test_literals():
    """Every string constant of the test files (the words tests assert)."""
    lits = set()
    for text in _test_sources().values():
        for n in ast.walk(ast.parse(text)):
            if isinstance(n, ast.Constant) and isinstance(n.value, str):
                lits.add(n.value)
    return lits


def test_every_blocking_reason_is_asserted():
    """Each reason's fixed words are asserted by some test: a string constant that covers most of them."""
    lits = [x for x in _test_literals() if len(x) >= 5]
    missing = [(mod, line, frag) for mod, line, frag in _reason_fragments()
               if frag not in UNREACHED and not any(frag in x or (x in frag and len(x) >= 0.4 * len(frag)) for x in lits)]
    assert not missing, f"blocking reasons no test asserts: {missing}"
