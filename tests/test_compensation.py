"""Exactness of the compensation rewrites (ops.Conv/_compensation, ops.Gemm mean and merge compensation).

The oracle (helpers.check_oracle) runs with recovery off, so it never sees these rewrites. Here each
is checked where it must be lossless: removed channels that are exactly constant (mean compensation:
their mean moves into the consumer's bias) or exact affine copies of a kept channel (merge
compensation: folded into the kept one). The compensated pruned model must then equal the
*original*, not the masked one, while the same removal without compensation must not.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from fixtures import B
from helpers import run
from onnxprune import rewrite
from onnxprune.pipeline import prepare

FEEDS = {"x": np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)}


def constant_channels(b, const: dict[int, float], c=8, name="c0"):
    """Conv 3 -> c (k3, pad 1) whose channels in `const` have zero weights and bias const[c] > 0, then Relu:
    those channels are exactly const[c] everywhere (zero padding does not reach them)."""
    h = b.conv("x", 3, c, name)
    w, bias = b.inits[f"{name}_w"], b.inits[f"{name}_b"]
    for ch, v in const.items():
        w[ch] = 0.0
        bias[ch] = v
    return b.relu(h, "r0")


def removed_units(an, group_name, channels):
    """Units of group `group_name` for the given channels of its source (canonical order = channel order)."""
    g = next(g for g in an.groups if g.name == group_name)
    return an.group_units[g.id][list(channels)]


def channel_means(model, tensor):
    """Per-channel mean of `tensor` over batch and space, from a run of `model` exposing it."""
    m = type(model)()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(tensor, 1, None))
    value = run(m, FEEDS)[tensor]
    axes = tuple(i for i in range(value.ndim) if i != 1)
    return value.mean(axis=axes).astype(np.float64)


def assert_lossless(an, removed, means=None, merges=None):
    ref = run(an.model, FEEDS)["y"]
    plain = run(rewrite.apply(an, removed), FEEDS)["y"]
    fixed = run(rewrite.apply(an, removed, means=means, merges=merges), FEEDS)["y"]
    scale = float(np.max(np.abs(ref)))
    assert np.max(np.abs(plain - ref)) > 1e-2 * scale      # removal alone changes the output
    assert np.max(np.abs(fixed - ref)) <= 1e-5 * scale + 1e-6, np.max(np.abs(fixed - ref))


@pytest.mark.parametrize("k", [1, 3])
def test_mean_compensation_grouped_conv(k):
    """Group-2 consumer (4 inputs per group): removing within-group index 0 removes channels 0 and 4,
    constants 0.9 and 0.4; each output of group g must receive its own group's constant."""
    b = B(30)
    h = constant_channels(b, {0: 0.9, 4: 0.4})
    w = b.rng.standard_normal((8, 4, k, k)).astype(np.float32)
    b.nodes.append(helper.make_node(
        "Conv", [h, b.f32("g_w", w), b.f32("g_b", b.rng.normal(0, 0.1, 8))], ["y"], name="g", group=2,
        kernel_shape=[k, k]))   # no padding: a constant input is constant in every window
    model = b.model({"x": [2, 3, 12, 12]}, ["y"])
    an = prepare(model).analysis
    removed = removed_units(an, "c0", [0])
    kept = an.kept_channels(removed)["r0"]
    assert sorted(set(range(8)) - set(kept.tolist())) == [0, 4]
    assert_lossless(an, removed, means={"r0": channel_means(an.model, "r0")})


def test_mean_compensation_depthwise_consumer_is_not_applied():
    """A depthwise consumer's input goes with its outputs: nothing to compensate, the rewrite must not try."""
    b = B(31)
    h = constant_channels(b, {0: 0.9})
    h = b.conv(h, 8, 8, "dw", k=3, group=8)
    b.op("Identity", [b.conv(h, 8, 4, "c2", k=1)], "y")
    model = b.model({"x": [2, 3, 12, 12]}, ["y"])
    an = prepare(model).analysis
    removed = removed_units(an, "c0", [0])
    means = {"r0": channel_means(an.model, "r0")}
    a = run(rewrite.apply(an, removed), FEEDS)["y"]
    c = run(rewrite.apply(an, removed, means=means), FEEDS)["y"]
    np.testing.assert_array_equal(a, c)


def gemm_head(b, x, k, n, trans_b, alpha, beta):
    bm = b.rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32) / np.sqrt(k)
    return b.op("Gemm", [x, b.f32("fc_B", bm), b.f32("fc_C", b.rng.normal(0, 0.1, n))], "y", transB=trans_b,
                alpha=alpha, beta=beta)


@pytest.mark.parametrize("trans_b,alpha,beta", [(0, 1.0, 1.0), (1, 0.5, 2.0)])
def test_mean_compensation_gemm(trans_b, alpha, beta):
    b = B(32)
    h = constant_channels(b, {1: 0.7, 6: 1.3})
    f = b.op("Flatten", [b.op("GlobalAveragePool", [h], "gap")], "flat")
    gemm_head(b, f, 8, 5, trans_b, alpha, beta)
    model = b.model({"x": [2, 3, 12, 12]}, ["y"])
    an = prepare(model).analysis
    removed = removed_units(an, "c0", [1, 6])
    assert_lossless(an, removed, means={"flat": channel_means(an.model, "flat")})


@pytest.mark.parametrize("trans_b,alpha,beta", [(0, 1.0, 1.0), (1, 0.5, 2.0)])
def test_merge_compensation_gemm(trans_b, alpha, beta):
    """Feature 5 = 2.5 * feature 2 + 0.3 exactly (filter 5 = 2.5 x filter 2, no activation before the GAP):
    merging it into feature 2 is lossless."""
    b = B(33)
    h = b.conv("x", 3, 8, "c0")
    w, bias = b.inits["c0_w"], b.inits["c0_b"]
    w[5] = 2.5 * w[2]
    bias[5] = 2.5 * bias[2] + 0.3
    f = b.op("Flatten", [b.op("GlobalAveragePool", [h], "gap")], "flat")
    gemm_head(b, f, 8, 5, trans_b, alpha, beta)
    model = b.model({"x": [2, 3, 12, 12]}, ["y"])
    an = prepare(model).analysis
    removed = removed_units(an, "c0", [5])
    assert_lossless(an, removed, merges={"flat": [(5, 2, 2.5, 0.3)]})


def test_merge_and_mean_compensation_together_gemm():
    """One removed feature merged (a copy), another mean-compensated (a constant): both at once, lossless."""
    b = B(34)
    h = constant_channels(b, {0: 0.8})
    w, bias = b.inits["c0_w"], b.inits["c0_b"]
    w[5] = 1.5 * w[2]
    bias[5] = 1.5 * bias[2]          # relu(1.5 z) = 1.5 relu(z): an exact copy after the Relu too
    f = b.op("Flatten", [b.op("GlobalAveragePool", [h], "gap")], "flat")
    gemm_head(b, f, 8, 5, 1, 1.0, 1.0)
    model = b.model({"x": [2, 3, 12, 12]}, ["y"])
    an = prepare(model).analysis
    removed = removed_units(an, "c0", [0, 5])
    assert_lossless(an, removed, means={"flat": channel_means(an.model, "flat")}, merges={"flat": [(5, 2, 1.5, 0.0)]})
