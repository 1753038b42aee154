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
from onnxprune.analysis import fold, graph, metrics
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


# ---- data-dependent output shapes --------------------------------------------------------------

def detector(topk=False, threshold=0.0, width=5):
    """A backbone, a 5-channel head (4 box values and a score per position), then the detections:
    the rows whose score passes `threshold` (NonZero: a data-dependent count), and with `topk`
    the scores of those rows again through a TopK whose K is their number (another output)."""
    b = B(7)
    h = b.relu(b.conv("x", 3, 8, "c0"), "r0")
    h = b.relu(b.conv(h, 8, 8, "c1"), "r1")
    head = b.conv(h, 8, width, "head")
    rows = b.op("Transpose", [b.op("Reshape", [head, b.i64("flat", [width, -1])], "flat5")], "rows", perm=[1, 0])
    score = b.op("Gather", [rows, b.i64("col", 4)], "score", axis=1)
    passed = b.op("Greater", [score, b.f32("thr", threshold)], "passed")
    idx = b.op("Squeeze", [b.op("NonZero", [passed], "nz"), b.i64("ax0", [0])], "idx")
    dets = b.op("Gather", [rows, idx], "output0", axis=0)
    outs = [dets]
    if topk:
        k = b.op("ReduceSum", [b.op("Cast", [passed], "passed_i", to=TensorProto.INT64)], "k", keepdims=1)
        outs.append(b.op("TopK", [score, k], "top", n_out=2)[0])
    m = b.model(X, outs)
    return m


def test_data_dependent_output_dims_found():
    from onnxprune.verification.verify import data_dependent_dims
    m = detector(topk=True)
    assert data_dependent_dims(m, {"x": [2, 3, 16, 16]}) == {"output0": [0], "top_0": [0]}
    assert data_dependent_dims(_small_cnn(), {"x": [2, 3, 16, 16]}) == {}


def test_detector_with_data_dependent_count_prunes_and_verifies():
    model = detector(topk=True)
    g = groups(model)
    assert_prunable(g["c0"], 8)
    assert_prunable(g["c1"], 8)
    check_oracle(model, "l1", 0.5)
    result = prune(model, "l1", 0.5)
    ver = result.report["verification"]
    assert ver["valid"], ver["problems"]
    out = ver["outputs"]["output0"]
    assert out["data_dependent_dims"] == [0]
    assert out["pruned_shape"][1:] == out["shape"][1:] == [5]
    assert out["shape"][0] != out["pruned_shape"][0]   # the number of detections changed: no refusal


def test_static_dim_change_of_data_dependent_output_is_refused():
    from onnxprune.verification.verify import verify
    a, b = detector(), detector(width=6)   # rows [K, 5] -> [K, 6]
    for m in (a, b):   # declared with symbolic dims only: only the run can tell
        m.graph.output[0].CopyFrom(helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["n", "m"]))
    check = verify(a, b, {"x": [1, 3, 16, 16]})
    assert not check.valid
    assert any("output0" in p and "shape changed" in p for p in check.problems), check.problems


def test_detector_with_data_dependent_count_prunes_with_calibration():
    """Sensitivity probes, the order check and recovery compare outputs whose number of rows
    differs from the original's (detections) without failing; the held-out table gives the shapes."""
    from onnxprune.verification.evaluate import compare, fidelity_loss
    ref, out = [np.ones((7, 5), np.float32)], [np.ones((3, 5), np.float32)]
    assert fidelity_loss(ref, out) == pytest.approx(4 / 7)
    assert fidelity_loss(ref, ref) == pytest.approx(0.0, abs=1e-9)
    assert compare(ref, out, ["dets"]) == {"dets": {"shape": [7, 5], "pruned_shape": [3, 5]}}
    result = prune(detector(topk=True), "l1", 0.5, calib="random", calib_samples=24, batch_size=4)
    assert result.report["verification"]["valid"]
    assert result.report["macs_kept"] < 0.8
    assert set(result.report["holdout"]) == {"output0", "top_0"}


def test_mask_runner_runs_masks_alone_when_rows_are_not_the_batch():
    """A dynamic batch lets several masks share one run; a NonZero output's rows are then not
    per mask, so each mask runs alone and gets its own detections."""
    from onnxprune.runtime.masking import MaskRunner
    model = detector()
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16]))
    an = prepare(model).analysis
    gid = next(g.id for g in an.groups if g.name == "c1")
    runner = MaskRunner(an, [gid])
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    size = an.groups[gid].size
    masks = [{gid: np.ones(size, np.float32)}, {gid: np.zeros(size, np.float32)}]
    full, empty = runner.run(feeds, masks)
    assert runner.unaligned
    from helpers import run
    assert np.array_equal(full[0], run(model, feeds)["output0"])
    assert full[0].shape != empty[0].shape


# ---- constant folding --------------------------------------------------------------------------

def _standardised(b, name, c_out, c_in, kind):
    """NF-Net weight standardisation of a raw initializer: ``(w - mean) / std * gain`` per filter,
    by ReduceMean/Sub/Mul/Sqrt/Div ("reduce") or by BatchNormalization(training_mode=1) over the
    weight reshaped to [1, C_out, -1] and reshaped back ("bn", as torch exports timm's
    ScaledStdConv2d)."""
    raw = b.f32(f"{name}_raw", b.rng.standard_normal((c_out, c_in, 3, 3)))
    if kind == "reduce":
        mean = b.op("ReduceMean", [raw], f"{name}_mean", axes=[1, 2, 3], keepdims=1)
        d = b.op("Sub", [raw, mean], f"{name}_d")
        var = b.op("ReduceMean", [b.op("Mul", [d, d], f"{name}_d2")], f"{name}_var", axes=[1, 2, 3], keepdims=1)
        std = b.op("Sqrt", [b.op("Add", [var, b.f32(f"{name}_eps", 1e-5)], f"{name}_ve")], f"{name}_std")
        gain = b.f32(f"{name}_gain", b.rng.uniform(0.5, 1.5, (c_out, 1, 1, 1)) / np.sqrt(c_in * 9))
        return b.op("Mul", [b.op("Div", [d, std], f"{name}_z"), gain], f"{name}_w")
    flat = b.op("Reshape", [raw, b.i64(f"{name}_flat", [1, c_out, -1])], f"{name}_r")
    ones, zeros = np.ones(c_out, np.float32), np.zeros(c_out, np.float32)
    y = b.op("BatchNormalization", [flat, b.f32(f"{name}_gain", b.rng.uniform(0.5, 1.5, c_out) / np.sqrt(c_in * 9)),
                                    b.f32(f"{name}_beta", zeros), b.f32(f"{name}_m0", zeros), b.f32(f"{name}_v0", ones)],
             f"{name}_bn", n_out=3, epsilon=1e-5, training_mode=1)[0]   # Y, running mean and var
    return b.op("Reshape", [y, b.i64(f"{name}_shape", [c_out, c_in, 3, 3])], f"{name}_w")


def nfnet(kind="reduce"):
    b = B(9)
    h = b.relu(b.conv("x", 3, 8, "c0", weight=_standardised(b, "c0", 8, 3, kind)), "r0")
    h = b.relu(b.conv(h, 8, 8, "c1", weight=_standardised(b, "c1", 8, 8, kind)), "r1")
    return b.model(X, [b.conv(h, 8, 4, "c2")], opset=15, out_shapes=[[1, 4, 16, 16]])


@pytest.mark.parametrize("kind", ["reduce", "bn"])
def test_weight_standardisation_folds_and_prunes(kind):
    model = nfnet(kind)
    g = groups(model)
    assert_prunable(g["c0"], 8)
    assert_prunable(g["c1"], 8)
    pruned, an, removed = check_oracle(model, "l1", 0.5)
    assert weight(pruned, "c1").shape == (4, 4, 3, 3)
    assert not any(n.op_type in ("ReduceMean", "BatchNormalization") for n in pruned.graph.node)
    report = prune(model, "l1", 0.5).report
    folded = report["folded"]
    assert folded["kept"] and folded["check"].startswith("matches the original")
    assert folded["ops"] == ({"Add": 2, "Div": 2, "Mul": 4, "ReduceMean": 4, "Sqrt": 2, "Sub": 2} if kind == "reduce"
                             else {"BatchNormalization": 2, "Reshape": 2})
    assert report["verification"]["valid"]
    assert report["macs_kept"] < 0.6


def test_fold_that_differs_from_the_original_is_dropped(monkeypatch):
    from onnxprune.analysis import fold
    monkeypatch.setattr(fold, "CHECK_RTOL", -1.0)   # no result passes the check
    folded = {}
    norm = fold.normalise(nfnet(), {"x": [1, 3, 16, 16]}, folded)
    assert not folded["kept"] and folded["check"].startswith("differs")
    assert any(n.op_type == "ReduceMean" for n in norm.graph.node)
    assert "c0" not in {g.name for g in prepare(norm).analysis.groups if g.prunable}


def test_fold_keeps_interface_and_reads_no_input():
    """Only constants fold: a node that reads a graph input or writes a graph output stays."""
    b = B(9)
    w = _standardised(b, "c0", 8, 3, "reduce")
    h = b.conv(b.op("Mul", ["x", b.op("ReduceMax", [b.f32("k", [1.0, 2.0])], "kmax", keepdims=1)], "xs"), 3, 8, "c0",
               weight=w)
    stat = b.op("ReduceMean", [b.f32("side", [1.0, 3.0])], "stat", keepdims=1)   # a graph output of constants
    model = b.model(X, [h, stat])
    folded = {}
    norm = fold.normalise(model, {"x": [1, 3, 16, 16]}, folded)
    assert [o.name for o in norm.graph.output] == ["c0", "stat"]
    assert [i.name for i in graph.real_inputs(norm)] == ["x"]
    assert any(n.output[0] == "stat" for n in norm.graph.node)
    assert not any(n.op_type == "ReduceMax" for n in norm.graph.node)
    assert folded["ops"] == {"Add": 1, "Div": 1, "Mul": 2, "ReduceMax": 1, "ReduceMean": 2, "Sqrt": 1, "Sub": 1}


# ---- run-time "same" pads ----------------------------------------------------------------------

INT64_MIN = np.iinfo(np.int64).min


def _same_pads(b, h, name, k=3, s=2, index_h=2, index_w=-1):
    """timm's pad_same as torch exports it: pads from Shape(h)'s spatial dims,
    ``max((ceil(i / s) - 1) * s + k - i, 0)`` split in halves, then F.pad's reordering of the
    pads vector (zeros for the leading axes by ConstantOfShape, Reshape to pairs, reversed by a
    Slice with step -1, Transpose, Reshape)."""
    shape = b.op("Shape", [h], f"{name}_shape")
    halves = []
    for axis, idx in (("h", index_h), ("w", index_w)):
        i = b.op("Gather", [shape, b.i64(f"{name}_{axis}_idx", idx)], f"{name}_{axis}")
        fi = b.op("Cast", [i], f"{name}_{axis}_f", to=TensorProto.FLOAT)
        steps = b.op("Ceil", [b.op("Div", [fi, b.f32(f"{name}_s", float(s))], f"{name}_{axis}_div")], f"{name}_{axis}_c")
        span = b.op("Add", [b.op("Mul", [b.op("Sub", [steps, b.f32(f"{name}_one", 1.0)], f"{name}_{axis}_m1"),
                                         f"{name}_s"], f"{name}_{axis}_ms"), b.f32(f"{name}_k", float(k))],
                    f"{name}_{axis}_span")
        pad = b.op("Clip", [b.op("Sub", [span, fi], f"{name}_{axis}_need"), b.f32(f"{name}_zero", 0.0)],
                   f"{name}_{axis}_pad")
        pad = b.op("Cast", [pad], f"{name}_{axis}_pad_i", to=TensorProto.INT64)
        first = b.op("Div", [pad, b.i64(f"{name}_two", 2)], f"{name}_{axis}_lo")
        halves.append((first, b.op("Sub", [pad, first], f"{name}_{axis}_hi")))
    (top, bottom), (left, right) = halves
    ax = b.i64(f"{name}_ax0", [0])
    p4 = b.op("Concat", [b.op("Unsqueeze", [v, ax], f"{v}_u") for v in (left, right, top, bottom)],
              f"{name}_p4", axis=0)
    n = b.op("Gather", [b.op("Shape", [p4], f"{name}_p4_shape"), b.i64(f"{name}_i0", 0)], f"{name}_p4_n")
    rest = b.op("Unsqueeze", [b.op("Sub", [b.i64(f"{name}_eight", 8), n], f"{name}_rest"), ax], f"{name}_rest_u")
    zeros = b.op("ConstantOfShape", [rest], f"{name}_zeros", value=helper.make_tensor("v", TensorProto.INT64, [1], [0]))
    pairs = b.op("Reshape", [b.op("Concat", [p4, zeros], f"{name}_p8", axis=0), b.i64(f"{name}_pairs", [-1, 2])],
                 f"{name}_pairs_r")
    rev = b.op("Slice", [pairs, b.i64(f"{name}_st", [-1]), b.i64(f"{name}_en", [INT64_MIN]), ax,
                         b.i64(f"{name}_step", [-1])], f"{name}_rev")
    flat = b.op("Reshape", [b.op("Transpose", [rev], f"{name}_t", perm=[1, 0]), b.i64(f"{name}_m1f", [-1])],
                f"{name}_pads")
    return b.op("Pad", [h, flat, b.f32(f"{name}_value", 0.0)], f"{name}_padded")


def same_padded(reads_channels=False):
    """c0 -> Relu -> same-pad -> c1 (stride 2, no pads) -> Relu -> same-pad -> c2 (graph output);
    `reads_channels`: the second pads are computed from the channel dim instead (must block)."""
    b = B(11)
    h = b.relu(b.conv("x", 3, 8, "c0"), "r0")
    h = b.op("Conv", [_same_pads(b, h, "p1"), b.f32("c1_w", b.rng.standard_normal((8, 8, 3, 3)) / 8)], "c1",
             kernel_shape=[3, 3], strides=[2, 2])
    h = b.relu(h, "r1")
    h = b.op("Conv", [_same_pads(b, h, "p2", index_h=1 if reads_channels else 2),
                      b.f32("c2_w", b.rng.standard_normal((4, 8, 3, 3)) / 8)], "c2", kernel_shape=[3, 3], strides=[2, 2])
    return b.model({"x": ["n", 3, "h", "w"]}, ["c2"], out_shapes=[["n", 4, "oh", "ow"]])


def test_runtime_same_pads_let_channels_pass():
    model = same_padded()
    shape = {"x": [1, 3, 17, 17]}
    g = groups(model, shape)
    assert_prunable(g["c0"], 8)
    assert_prunable(g["c1"], 8)
    pruned, an, removed = check_oracle(model, "l1", 0.5, input_shape=shape)
    assert weight(pruned, "c1").shape == (4, 4, 3, 3)
    assert any(n.op_type == "Shape" for n in pruned.graph.node)   # the pads stay computed at run time
    # ... so the pruned model is right at other sizes too
    from helpers import assert_matches_masked
    for size in ([2, 3, 20, 23], [1, 3, 9, 16]):
        assert_matches_masked(prepare(model, shape).original, an, removed, pruned, {"x": size})


def test_runtime_pads_that_follow_the_channel_count_block():
    g = groups(same_padded(reads_channels=True), {"x": [1, 3, 17, 17]})
    assert_prunable(g["c0"], 8)
    assert not g["c1"].prunable
    assert any("has run-time pads" in r for r in g["c1"].reasons), g["c1"].reasons


# ---- N-D tensors on the data path --------------------------------------------------------------

@pytest.mark.parametrize("spatial,kw", [
    ((11,), dict(pads=[1, 2], strides=[2])),
    ((9, 9), dict(strides=[2, 2], pads=[0, 1, 1, 0])),
    ((5, 7, 6), dict(pads=[1, 1, 0, 1, 1, 1], strides=[1, 2, 2], dilations=[2, 1, 1])),
    ((5, 6, 7), dict(auto_pad="SAME_UPPER", strides=[2, 2, 1])),
])
def test_im2col_rows_reproduce_nd_convs(spatial, kw):
    from helpers import make_model, run, tensor
    from onnxprune.recovery.reconstruct import out_spatial, _positions, im2col_rows

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, *spatial)).astype(np.float32)
    w = rng.standard_normal((4, 3, *([3] * len(spatial)))).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], **kw)
    model = make_model([node], [tensor("x", list(x.shape))], [onnx.ValueInfoProto(name="y")], {"w": w})
    y = run(model, {"x": x})["y"]
    assert out_spatial(node, x.shape, w.shape) == y.shape[2:]
    pos = _positions(node, y.shape, 5, (0, 1, 2))
    rows = im2col_rows(x, node, w.shape, pos)
    np.testing.assert_allclose(rows @ w.reshape(4, -1).T, y[(pos[0], slice(None), *pos[1:])], atol=1e-4)


def video_net(rank=3):
    """Conv3d (or Conv1d with rank=1) -> BN -> Relu -> Conv -> Relu -> global pool -> Gemm head."""
    b = B(13)
    k = [3] * rank
    spatial = [4, 8, 8][-rank:] if rank <= 3 else None

    def conv(x, c_in, c_out, name):
        w = b.f32(f"{name}_w", b.rng.standard_normal((c_out, c_in, *k)) / np.sqrt(c_in * 3 ** rank))
        return b.op("Conv", [x, w, b.f32(f"{name}_b", b.rng.normal(0, 0.1, c_out))], name,
                    kernel_shape=k, pads=[1] * (2 * rank))
    h = b.relu(b.bn(conv("x", 3, 8, "c0"), 8, "bn0"), "r0")
    h = b.relu(conv(h, 8, 8, "c1"), "r1")
    h = b.op("Flatten", [b.op("GlobalAveragePool", [h], "gap")], "flat")
    return b.model({"x": [1, 3, *spatial]}, [b.gemm(h, 8, 5, "fc")])


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("criterion", ["thinet", "blend"])
def test_nd_convs_prune_with_calibration(rank, criterion):
    model = video_net(rank)
    check_oracle(model, "l1", 0.5)
    result = prune(model, criterion, 0.5, calib="random", calib_samples=24, batch_size=4)
    assert result.report["verification"]["valid"]
    steps = {s["step"] for s in result.report["recovery"]}
    assert "least_squares" in steps


def recogniser(probabilities=True):
    """A CNN+sequence recogniser whose output is time-major: conv features [N, C, H, W] averaged
    over H, then [W, N, C] (time first, as an LSTM/CTC head takes them), a MatMul to K classes and
    a Softmax: [T, N, K]."""
    b = B(17)
    h = b.relu(b.conv("x", 3, 8, "c0"), "r0")
    h = b.relu(b.conv(h, 8, 8, "c1"), "r1")
    seq = b.op("Transpose", [b.op("ReduceMean", [h], "col", axes=[2], keepdims=0)], "seq", perm=[2, 0, 1])
    logits = b.matmul(seq, 8, 6, "cls")
    out = b.op("Softmax", [logits], "probs", axis=2) if probabilities else logits
    return b.model({"x": ["n", 3, 8, 12]}, [out], out_shapes=[[12, "n", 6]])


def test_output_batch_axes_from_the_graph():
    assert graph.output_batch_axes(recogniser()) == [1]
    assert graph.output_batch_axes(_small_cnn()) == [0]
    assert graph.output_batch_axes(video_net(3)) == [0]


@pytest.mark.parametrize("probabilities", [True, False])
def test_time_major_output_prunes_with_calibration(probabilities):
    model = recogniser(probabilities)
    g = groups(model)
    assert_prunable(g["c0"], 8)
    check_oracle(model, "l1", 0.5)
    result = prune(model, "blend", 0.5, calib="random", calib_samples=24, batch_size=4)
    assert result.report["verification"]["valid"]
    assert result.report["holdout"]["probs" if probabilities else "cls"]["cosine"] > 0


def test_mask_runner_cuts_masks_on_the_batch_axis():
    """Masks batched into one run are cut apart on the output's batch axis (1 for [T, N, K])."""
    from helpers import run
    from onnxprune.runtime.masking import MaskRunner
    model = recogniser()
    an = prepare(model).analysis
    gid = next(g.id for g in an.groups if g.name == "c1")
    runner = MaskRunner(an, [gid])
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 3, 8, 12)).astype(np.float32)}
    ones = np.ones(an.groups[gid].size, np.float32)
    outs = runner.run(feeds, [{gid: ones}, {gid: ones}])
    want = run(model, feeds)["probs"]
    for out in outs:
        np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-6)


def test_cli_reports_folding_and_detection_counts(tmp_path):
    from click.testing import CliRunner
    from onnxprune.cli import main
    for name, model, words in (("nf.onnx", nfnet("bn"), ["constant folding: 4 node(s)", "BatchNormalization 2",
                                                         "matches the original"]),
                               ("det.onnx", detector(), ["output 'output0' (data-dependent dims)", "valid"])):
        onnx.save(model, str(tmp_path / name))
        res = CliRunner().invoke(main, [str(tmp_path / name), "--ratio", "0.5", "--criterion", "l1",
                                        "-o", str(tmp_path / f"p_{name}")], env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        text = " ".join(res.output.split())
        for w in words:
            assert w in text, (w, res.output)
