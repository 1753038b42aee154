"""Channel statistics and attention blocks from the wild (issue #20, items 2-3), small graphs built here.

Approximate (``approximate=True`` / ``--approximate``; blocked without it, the reason naming the
option): LayerNorm over channels (channels-last LayerNormalization, a channels-first LayerNorm2d
spelled ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add), CBAM's spatial map from a mean and a
max over channels, ConvNeXt-V2's GRN. Their rewrite is checked against what it should compute
(the statistics over the kept channels, the affine parameters sliced) and the pipeline's fidelity
check against the masked original. Exact, under the oracle: selective-kernel and split-attention
weighting (Softmax and sum over the radix axis of channels split into (radix, C)). The same
patterns as timm's own layers export them (tests/models_wild): under the oracle without the
option, pruned approximately with it.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

from fixtures import B, X, init, weight
from helpers import check_oracle
from onnxprune import criteria, rewrite
from onnxprune.allocation.select import SelectConfig, select
from onnxprune.errors import OnnxPruneError
from onnxprune.pipeline import prepare, prune
from onnxprune.runtime.sessions import random_feeds, session
from onnxprune.verification import approximate
from test_topologies import assert_blocked, assert_prunable

C = 8


def _pw(b, x, c_in, c_out, name):
    return b.conv(x, c_in, c_out, name, k=1)


def _layernorm_last(opset=17):
    """c0 (1x1) -> NHWC -> LayerNormalization(-1) -> NCHW -> c1 (1x1): ConvNeXt's LayerNorm2d."""
    b = B(1)
    h = _pw(b, "x", 3, C, "c0")
    h = b.op("Transpose", [h], "to_last", perm=[0, 2, 3, 1])
    h = b.op("LayerNormalization", [h, b.f32("ln_s", b.rng.uniform(0.5, 1.5, C)), b.f32("ln_b", b.rng.normal(0, .3, C))],
             "ln", axis=-1, epsilon=1e-6)
    h = b.op("Transpose", [h], "to_first", perm=[0, 3, 1, 2])
    return b.model(X, [_pw(b, h, C, 4, "c1")], opset=opset)


def _layernorm_first():
    """c0 -> LayerNorm2d over axis 1 as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add -> c1."""
    b = B(2)
    h = _pw(b, "x", 3, C, "c0")
    mu = b.op("ReduceMean", [h], "mu", axes=[1], keepdims=1)
    d = b.op("Sub", [h, mu], "d")
    var = b.op("ReduceMean", [b.op("Pow", [d, b.f32("two", 2.0)], "sq")], "var", axes=[1], keepdims=1)
    std = b.op("Sqrt", [b.op("Add", [var, b.f32("eps", 1e-6)], "ve")], "std")
    h = b.op("Div", [d, std], "n")
    h = b.op("Mul", [h, b.f32("g", b.rng.uniform(0.5, 1.5, (C, 1, 1)))], "scaled")
    h = b.op("Add", [h, b.f32("beta", b.rng.normal(0, .3, (C, 1, 1)))], "shifted")
    return b.model(X, [_pw(b, h, C, 4, "c1")])


def _cbam():
    """c0 -> x * sigmoid(conv7x7(concat(mean_c(x), max_c(x)))) -> c1: CBAM's spatial attention."""
    b = B(3)
    h = b.relu(b.conv("x", 3, C, "c0"), "r0")
    avg = b.op("ReduceMean", [h], "avg", axes=[1], keepdims=1)
    mx = b.op("ReduceMax", [h], "mx", axes=[1], keepdims=1)
    s = b.op("Sigmoid", [b.conv(b.op("Concat", [avg, mx], "cat", axis=1), 2, 1, "spatial", k=7)], "gate")
    h = b.op("Mul", [h, s], "att")
    return b.model(X, [b.conv(h, C, 4, "c1")])


def _grn():
    """c0 -> NHWC -> GRN: x + gamma * (x * Gx / mean_c(Gx)) + beta, Gx the L2 norm over space -> NCHW -> c1."""
    b = B(4)
    h = b.op("Transpose", [_pw(b, "x", 3, C, "c0")], "to_last", perm=[0, 2, 3, 1])
    gx = b.op("ReduceL2", [h], "gx", axes=[1, 2], keepdims=1)
    nx = b.op("Div", [gx, b.op("Add", [b.op("ReduceMean", [gx], "gm", axes=[-1], keepdims=1), b.f32("eps", 1e-6)],
                                   "ge")], "nx")
    t = b.op("Mul", [b.f32("gamma", b.rng.normal(0, 1, (1, 1, 1, C))), b.op("Mul", [h, nx], "xn")], "gt")
    h = b.op("Add", [h, b.op("Add", [t, b.f32("beta", b.rng.normal(0, .3, (1, 1, 1, C)))], "gb")], "grn")
    h = b.op("Transpose", [h], "to_first", perm=[0, 3, 1, 2])
    return b.model(X, [_pw(b, h, C, 4, "c1")])


def _groups(model, approx):
    return {g.name: g for g in prepare(model, approximate=approx).analysis.groups}


def _prune_rewrite(model, ratio=0.5):
    """Analyse with approximations on, remove `ratio` of c0's channels by l1; (prep, removed, pruned)."""
    prep = prepare(model, approximate=True)
    an = prep.analysis
    plan, _ = select(an, criteria.score("l1", criteria.ScoreContext(an, seed=0)), SelectConfig(ratio=ratio))
    removed = plan.removed_units(an)
    assert len(removed) > 0
    return prep, removed, rewrite.apply(an, removed)


def _conv1x1(x, w, bias):
    return np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + bias[None, :, None, None]


def _norm_over_kept(model, pruned, keep, affine):
    """What the pruned model should compute: c0's kept filters, the norm over those channels only
    (its per-channel parameters sliced), c1 reading the kept channels."""
    feeds = random_feeds(model, {"x": X["x"]}, seed=3)
    x = feeds["x"].astype(np.float64)
    h = _conv1x1(x, init(model, "c0_w")[keep], init(model, "c0_b")[keep])
    mu, var = h.mean(1, keepdims=True), h.var(1, keepdims=True)
    scale, shift = affine
    h = (h - mu) / np.sqrt(var + 1e-6) * scale[keep][None, :, None, None] + shift[keep][None, :, None, None]
    want = _conv1x1(h, init(model, "c1_w")[:, keep], init(model, "c1_b"))
    got = session(pruned).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ---- LayerNorm over channels -------------------------------------------------------------------

@pytest.mark.parametrize("build", [_layernorm_last, _layernorm_first])
def test_layernorm_over_channels_is_blocked_naming_the_option(build):
    g = _groups(build(), approx=False)["c0"]
    assert_blocked(g, "approximate, pass --approximate to prune it")
    assert any("normalises over the channel axis" in r or "reduces over the channel axis" in r for r in g.reasons)


def test_layernorm_channels_last_prunes_over_the_kept_channels():
    model = _layernorm_last()
    g = _groups(model, approx=True)["c0"]
    assert_prunable(g, C)
    assert any("LayerNormalization 'ln' normalises over the channel axis" in r for r in g.approximate)
    prep, removed, pruned = _prune_rewrite(model)
    keep = np.setdiff1d(np.arange(C), removed)   # c0's units are its channels, in order
    assert weight(pruned, "ln").shape == (len(keep),) and weight(pruned, "ln", 2).shape == (len(keep),)
    _norm_over_kept(model, pruned, keep, (init(model, "ln_s"), init(model, "ln_b")))


def test_layernorm_channels_first_prunes_over_the_kept_channels():
    model = _layernorm_first()
    assert_prunable(_groups(model, approx=True)["c0"], C)
    prep, removed, pruned = _prune_rewrite(model)
    keep = np.setdiff1d(np.arange(C), removed)
    assert weight(pruned, "scaled").shape == (len(keep), 1, 1)
    _norm_over_kept(model, pruned, keep, (init(model, "g").ravel(), init(model, "beta").ravel()))


def test_layernorm_with_used_statistics_or_runtime_scale_stays_blocked():
    b = B(1)
    h = b.op("Transpose", [_pw(b, "x", 3, C, "c0")], "t", perm=[0, 2, 3, 1])
    outs = b.op("LayerNormalization", [h, "scale", b.f32("ln_b", np.zeros(C))], "ln", n_out=3, axis=-1)
    model = b.model({**X, "scale": [C]}, [_pw(b, b.op("Transpose", [outs[0]], "t2", perm=[0, 3, 1, 2]), C, 4, "c1"),
                                          outs[1]])
    assert_blocked(_groups(model, approx=True)["c0"], "has a parameter that cannot be sliced by channel")
    b = B(1)
    h = b.op("Transpose", [_pw(b, "x", 3, C, "c0")], "t", perm=[0, 2, 3, 1])
    outs = b.op("LayerNormalization", [h, b.f32("s", np.ones(C)), b.f32("ln_b", np.zeros(C))], "ln", n_out=2, axis=-1)
    y = b.op("Add", [b.op("Transpose", [outs[0]], "t2", perm=[0, 3, 1, 2]), b.op("Transpose", [outs[1]], "t3",
                                                                               perm=[0, 3, 1, 2])], "y")
    assert_blocked(_groups(b.model(X, [_pw(b, y, C, 4, "c1")]), approx=True)["c0"],
                   "returns its mean or inverse deviation")


def test_layernorm_over_other_axes_stays_exact():
    """LayerNormalization over the spatial axes only (channels first, axis 2) is a pass-through."""
    b = B(1)
    h = b.op("LayerNormalization", [_pw(b, "x", 3, C, "c0"), b.f32("s", np.ones((16, 16)))], "ln", axis=2)
    model = b.model(X, [_pw(b, h, C, 4, "c1")], opset=17)
    g = _groups(model, approx=False)["c0"]
    assert_prunable(g, C)
    assert not g.approximate
    check_oracle(model, "l1", 0.5)


# ---- CBAM and GRN --------------------------------------------------------------------------------

def test_cbam_spatial_map_is_approximate():
    model = _cbam()
    assert_blocked(_groups(model, approx=False)["c0"], "reduces over the channel axis", "pass --approximate")
    g = _groups(model, approx=True)["c0"]
    assert_prunable(g, C)
    assert {r.split("'")[1] for r in g.approximate} == {"avg", "mx"}
    prep, removed, pruned = _prune_rewrite(model)
    result = approximate.check(prep.analysis, removed, pruned, prep.input_shapes, min_cosine=1.0)
    assert [r["name"] for r in result["groups"]] == ["c0"]
    assert result["outputs"]["c1"]["cosine"] < 1.0 - 1e-9   # the mean over fewer channels is not the masked one
    assert not result["faithful"] and "not faithful" in approximate.note(result)


def test_grn_slices_gamma_and_beta():
    model = _grn()
    assert_blocked(_groups(model, approx=False)["c0"], "ReduceMean 'gm' reduces over the channel axis")
    assert_prunable(_groups(model, approx=True)["c0"], C)
    prep, removed, pruned = _prune_rewrite(model)
    keep = np.setdiff1d(np.arange(C), removed)
    assert weight(pruned, "gt", 0).shape == (1, 1, 1, len(keep)) and weight(pruned, "gb", 1).shape == (1, 1, 1, len(keep))
    # what GRN over the kept channels computes
    feeds = random_feeds(model, {"x": X["x"]}, seed=1)
    h = _conv1x1(feeds["x"].astype(np.float64), init(model, "c0_w")[keep], init(model, "c0_b")[keep]).transpose(0, 2, 3, 1)
    gx = np.sqrt((h ** 2).sum(axis=(1, 2), keepdims=True))
    nx = gx / (gx.mean(-1, keepdims=True) + 1e-6)
    h = h + init(model, "gamma")[..., keep] * (h * nx) + init(model, "beta")[..., keep]
    want = _conv1x1(h.transpose(0, 3, 1, 2), init(model, "c1_w")[:, keep], init(model, "c1_b"))
    np.testing.assert_allclose(session(pruned).run(None, feeds)[0], want, rtol=1e-4, atol=1e-4)


# ---- the pipeline: report, fidelity check, --min-fidelity ---------------------------------------

def test_prune_reports_the_approximate_groups_and_their_fidelity():
    model = _layernorm_last()
    with pytest.raises(OnnxPruneError, match="nothing to prune.*pass --approximate to prune it"):
        prune(model, criterion="l1", ratio=0.5, recover=False)   # its only group passes the LayerNorm
    result = prune(model, criterion="l1", ratio=0.5, recover=False, approximate=True)
    rep = result.report
    assert rep["options"]["approximate"] is True
    approx = rep["approximate"]
    assert [g["name"] for g in approx["groups"]] == ["c0"] and approx["groups"][0]["removed"] == C // 2
    cos = approx["outputs"]["c1"]["cosine"]
    assert 0.0 < cos < 1.0 - 1e-9
    assert approx["faithful"] == (cos >= approximate.APPROX_COSINE)
    assert next(g for g in rep["groups"] if g["name"] == "c0")["approximate"]


def test_min_fidelity_refuses_an_unfaithful_approximation():
    with pytest.raises(OnnxPruneError, match="the approximation is not faithful"):
        prune(_layernorm_last(), criterion="l1", ratio=0.5, recover=False, approximate=True, min_fidelity=0.999999)


def test_cli_approximate_flag(tmp_path):
    from click.testing import CliRunner

    from onnxprune.cli.main import main

    path = tmp_path / "ln.onnx"
    onnx.save(_layernorm_last(), path)
    res = CliRunner().invoke(main, ["prune", str(path), "--criterion", "l1", "--approximate", "--no-recover",
                                    "-o", str(tmp_path / "out.onnx"), "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "approximate: 1 group(s) pruned through ops" in res.output     # the console wraps at 80 columns
    rep = json.loads((tmp_path / "r.json").read_text())
    assert [g["name"] for g in rep["approximate"]["groups"]] == ["c0"]
    unfaithful = not rep["approximate"]["faithful"]
    assert ("approximation is not faithful" in " ".join(rep["notes"])) == unfaithful
    assert ("verification: structurally valid, but the approximation is NOT faithful" in res.output) == unfaithful


# ---- selective kernel / split attention: exact through radix groups ---------------------------

def _selective_kernel(softmax_axis=1, sum_axis=1):
    """Two paths, stacked on a new axis 1, weighted by a softmax over paths of an attention made of
    (paths, C) channels, then summed over the paths (timm's SelectiveKernel)."""
    b = B(5)
    x = b.relu(b.conv("x", 3, C, "stem"), "r")
    paths = [b.relu(b.conv(x, C, C, f"p{i}", dilation=i + 1), f"pr{i}") for i in range(2)]
    stack = b.op("Concat", [b.op("Unsqueeze", [p, b.i64(f"ax{i}", [1])], f"u{i}") for i, p in enumerate(paths)],
                 "stack", axis=1)
    s = b.op("ReduceSum", [stack, b.i64("one", [1])], "s", keepdims=0)
    a = b.relu(b.conv(b.op("GlobalAveragePool", [s], "gap"), C, 4, "fc_reduce", k=1), "ar")
    a = b.op("Reshape", [b.conv(a, 4, 2 * C, "fc_select", k=1), b.i64("shp", [1, 2, C, 1, 1])], "ar5")
    a = b.op("Softmax", [a], "sm", axis=softmax_axis)
    y = b.op("ReduceSum", [b.op("Mul", [stack, a], "w"), b.i64("sum_ax", [sum_axis])], "y", keepdims=0)
    if sum_axis != 1:
        y = b.op("ReduceMean", [y, b.i64("m_ax", [1])], "ym", keepdims=0)
    return b.model(X, [b.conv(y, C, 4, "head")])


def test_selective_kernel_prunes_exactly():
    model = _selective_kernel()
    g = _groups(model, approx=False)
    for name in ("p0", "stem", "fc_reduce"):
        assert_prunable(g[name])
    assert not any(grp.approximate for grp in g.values())
    pruned, an, removed = check_oracle(model, "l1", 0.5)
    assert weight(pruned, "fc_select").shape[0] == 2 * weight(pruned, "p0").shape[0]


def test_softmax_or_sum_over_the_split_channels_blocks():
    g = _groups(_selective_kernel(softmax_axis=2), approx=True)
    assert_blocked(g["fc_select"], "Softmax 'sm' normalises over the channel axis")
    assert not g["p0"].prunable
    assert_blocked(_groups(_selective_kernel(sum_axis=2), approx=True)["p0"], "reduces over split channels")


# ---- ECA: Conv1d along the channel axis; Expand to the shape of a tensor with the same channels ---

def _eca():
    """c0 -> h * expand_as(sigmoid(conv1d(view(gap(h), N, 1, C))), h) -> c1 (timm's EcaModule)."""
    b = B(6)
    h = b.relu(b.conv("x", 3, C, "c0"), "r0")
    batch = b.op("Unsqueeze", [b.op("Gather", [b.op("Shape", [h], "shp"), b.i64("zero", 0)], "n", axis=0),
                               b.i64("ax0", [0])], "n1")
    v = b.op("Reshape", [b.op("GlobalAveragePool", [h], "gap"), b.op("Concat", [batch, b.i64("one_m1", [1, -1])],
                                                                     "s3", axis=0)], "v")
    a = b.op("Conv", [v, b.f32("eca_w", b.rng.normal(0, 1, (1, 1, 3)))], "eca", kernel_shape=[3], pads=[1, 1])
    a = b.op("Reshape", [b.op("Sigmoid", [a], "sig"), b.op("Concat", [batch, b.i64("m1_1_1", [-1, 1, 1])], "s4",
                                                            axis=0)], "a4")
    a = b.op("Expand", [a, b.op("Shape", [h], "shp2")], "ex")
    return b.model(X, [b.conv(b.op("Mul", [h, a], "att"), C, 4, "c1")], out_shapes=[[1, 4, 16, 16]])


def test_eca_is_approximate_and_computes_over_the_kept_channels():
    model = _eca()
    assert_blocked(_groups(model, approx=False)["c0"], "Conv 'eca' slides a kernel along the channel axis",
                   "pass --approximate")
    assert_prunable(_groups(model, approx=True)["c0"], C)
    prep, removed, pruned = _prune_rewrite(model)
    keep = np.setdiff1d(np.arange(C), removed)
    assert weight(pruned, "eca").shape == (1, 1, 3)
    feeds = random_feeds(model, {"x": X["x"]}, seed=2)
    h = np.maximum(session(_first_conv_model(model)).run(None, feeds)[0], 0)[:, keep]
    m = np.pad(h.mean(axis=(2, 3)), ((0, 0), (1, 1)))
    w = init(model, "eca_w").ravel()
    gate = 1 / (1 + np.exp(-(w[0] * m[:, :-2] + w[1] * m[:, 1:-1] + w[2] * m[:, 2:])))
    mid = h * gate[:, :, None, None]
    want = session(_second_conv_model(model, keep)).run(None, {"h": mid.astype(np.float32)})[0]
    np.testing.assert_allclose(session(pruned).run(None, feeds)[0], want, rtol=1e-4, atol=1e-4)
    result = prune(model, criterion="l1", ratio=0.5, approximate=True)   # with the data-free repair
    assert result.verification.valid


def _first_conv_model(model):
    from helpers import make_model, tensor
    from onnx import helper
    n = next(n for n in model.graph.node if n.name == "c0")
    inits = {k: init(model, k) for k in n.input[1:]}
    return make_model([helper.make_node("Conv", list(n.input), ["y"], **{a.name: helper.get_attribute_value(a)
                                                                       for a in n.attribute})],
                      [tensor("x", X["x"])], [tensor("y", None)], inits)


def _second_conv_model(model, keep):
    from helpers import make_model, tensor
    from onnx import helper
    n = next(n for n in model.graph.node if n.name == "c1")
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    inits = {"w": init(model, n.input[1])[:, keep], "b": init(model, n.input[2])}
    return make_model([helper.make_node("Conv", ["h", "w", "b"], ["y"], **attrs)],
                      [tensor("h", [1, len(keep), 16, 16])], [tensor("y", None)], inits)


def test_expand_to_a_constant_shape_prunes_exactly():
    b = B(7)
    h = b.relu(b.conv("x", 3, C, "c0"), "r0")
    a = b.op("Expand", [b.op("Sigmoid", [b.op("GlobalAveragePool", [h], "gap")], "sig"),
                        b.i64("full", [1, C, 16, 16])], "ex")
    model = b.model(X, [b.conv(b.op("Mul", [h, a], "att"), C, 4, "c1")])
    assert_prunable(_groups(model, approx=False)["c0"], C)
    pruned, _, removed = check_oracle(model, "l1", 0.5)
    assert list(weight(pruned, "ex")) == [1, C - len(removed), 16, 16]


def test_expand_to_a_shape_that_does_not_follow_blocks():
    b = B(7)
    h = b.relu(b.conv("x", 3, C, "c0"), "r0")
    a = b.op("Expand", [b.op("GlobalAveragePool", [h], "gap"), b.op("Shape", ["y"], "ys")], "ex")
    model = b.model({**X, "y": [1, C, 16, 16]}, [b.conv(b.op("Mul", [h, a], "att"), C, 4, "c1")])
    assert_blocked(_groups(model, approx=True)["c0"], "expands the channel axis to a size that does not follow")


def test_an_approximation_that_cannot_be_measured_is_not_called_faithful():
    model = _layernorm_last()
    prep, removed, pruned = _prune_rewrite(model)
    broken = type(pruned)()
    broken.CopyFrom(pruned)
    del broken.graph.node[-1]   # the last Conv gone: onnxruntime refuses the model
    result = approximate.check(prep.analysis, removed, broken, prep.input_shapes)
    assert not result["faithful"] and not result["outputs"] and result["error"]
    assert "could not be measured" in approximate.note(result)


def test_cli_analyse_shows_the_groups_as_approximate_pruning_sees_them(tmp_path):
    from click.testing import CliRunner

    from onnxprune.cli.main import main

    path = tmp_path / "ln.onnx"
    onnx.save(_layernorm_last(), path)
    for flags, prunable in (([], False), (["--approximate"], True)):
        res = CliRunner().invoke(main, ["analyse", str(path), "--json", *flags])
        assert res.exit_code == 0, res.output
        c0 = next(g for g in json.loads(res.output)["groups"] if g["name"] == "c0")
        assert c0["prunable"] is prunable
        assert bool(c0.get("approximate")) is prunable


@pytest.mark.parametrize("build", [_eca, _grn])
def test_approximate_groups_go_through_the_data_path(build):
    """--calib: activation criteria, ThiNet, sensitivity allocation and the recovery steps (moment
    matching, least squares) meet ECA's Conv1d and GRN's statistics without mistaking them for filters."""
    result = prune(build(), ratio=0.5, approximate=True, calib="random", calib_samples=32)
    assert result.verification.valid
    assert result.report["approximate"]["groups"][0]["name"] == "c0"


# ---- timm's own layers, exported (tests/models_wild, benchmarks/export_wild_fixtures.py) --------

WILD_DIR = os.path.join(os.path.dirname(__file__), "models_wild")


def _wild(name):
    return onnx.load(os.path.join(WILD_DIR, f"{name}.onnx"))


@pytest.mark.parametrize("name", ["selective_kernel", "split_attention", "eca_cbam", "convnext_v2"])
def test_timm_layers_prune_exactly_without_the_option(name):
    check_oracle(_wild(name), "l1", 0.5)


def test_timm_selective_kernel_prunes_every_inner_group():
    groups = prepare(_wild("selective_kernel")).analysis.groups
    assert sum(g.prunable for g in groups) == len(groups) - 1     # all but the classifier's
    assert not any(g.approximate for g in groups)


@pytest.mark.parametrize("name,approx_groups", [("eca_cbam", 1), ("convnext_v2", 2)])
def test_timm_layers_prune_approximately_with_the_option(name, approx_groups):
    model = _wild(name)
    exact = prepare(model).analysis
    approx = prepare(model, approximate=True).analysis
    assert sum(g.prunable for g in approx.groups) > sum(g.prunable for g in exact.groups)
    result = prune(model, criterion="l1", ratio=0.5, approximate=True, recover=False)
    assert result.verification.valid
    rep = result.report
    assert len(rep["approximate"]["groups"]) == approx_groups
    assert 0.0 < rep["approximate"]["outputs"]["output"]["cosine"] <= 1.0


def test_html_report_lists_the_approximate_groups():
    from onnxprune.report import html as html_report

    result = prune(_layernorm_last(), criterion="l1", ratio=0.5, recover=False, approximate=True)
    page = html_report.render_html(result.report)
    assert "Approximate groups (--approximate)" in page and "LayerNormalization &#x27;ln&#x27;" in page


def _rsoftmax():
    """ResNeSt's rSoftMax on a (radix 2, C) attention: Reshape to (1, radix, C), Transpose that puts
    the cardinality axis between radix and channels, Softmax over the radix, back to 2C channels,
    weighting a 2C-channel conv output."""
    b = B(8)
    h = b.relu(b.conv("x", 3, 2 * C, "c0"), "r0")
    a = b.conv(b.op("GlobalAveragePool", [h], "gap"), 2 * C, 2 * C, "fc", k=1)
    a = b.op("Reshape", [a, b.i64("s4", [1, 1, 2, C])], "card")
    a = b.op("Softmax", [b.op("Transpose", [a], "tr", perm=[0, 2, 1, 3])], "sm", axis=1)
    a = b.op("Reshape", [a, b.i64("back", [1, 2 * C, 1, 1])], "att")
    return b.model(X, [b.conv(b.op("Mul", [h, a], "w"), 2 * C, 4, "head")])


def _softmax_after_swap():
    """(2, C) split, swapped to (C, 2) as a channel shuffle does, then a Softmax over the axis of C:
    it mixes what were C different channels."""
    b = B(9)
    h = b.relu(b.conv("x", 3, 2 * C, "c0"), "r0")
    a = b.conv(b.op("GlobalAveragePool", [h], "gap"), 2 * C, 2 * C, "fc", k=1)
    a = b.op("Transpose", [b.op("Reshape", [a, b.i64("s3", [1, 2, C])], "split")], "swap", perm=[0, 2, 1])
    a = b.op("Transpose", [b.op("Softmax", [a], "sm", axis=1)], "unswap", perm=[0, 2, 1])
    a = b.op("Reshape", [a, b.i64("back", [1, 2 * C, 1, 1])], "att")
    return b.model(X, [b.conv(b.op("Mul", [h, a], "w"), 2 * C, 4, "head")])


def test_rsoftmax_prunes_radix_groups_exactly():
    model = _rsoftmax()
    assert_prunable(_groups(model, approx=False)["c0"])   # fc joins c0 through the Mul
    pruned, an, removed = check_oracle(model, "l1", 0.5)
    fc = weight(pruned, "fc").shape[0]
    assert fc % 2 == 0 and fc < 2 * C and list(weight(pruned, "card"))[-1] == fc // 2


def test_softmax_over_split_channels_ties_what_it_mixes():
    """After the swap the softmax's axis runs across C different channels: the rule ties them, so
    the group is one unit and nothing inexact can be removed."""
    model = _softmax_after_swap()
    an = prepare(model).analysis
    t = an.tensors["swap"]
    assert len(np.unique(an.unit_of[t.base:t.base + t.size])) == 1
    check_oracle(model, "l1", 0.5, min_removed=0)
