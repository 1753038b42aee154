"""Data-free repair (onnxprune/recovery/datafree.py) and the fidelity check: closed forms against sampling,
lossless compensation of a constant channel, the collapse warning, --min-fidelity."""

import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fixtures import B
from helpers import run
from onnxprune.recovery import datafree
from onnxprune import pipeline, rewrite
from onnxprune.cli import main
from onnxprune.analysis.graph import GraphIndex

HERE = os.path.dirname(__file__)
FMNIST = os.path.join(HERE, "..", "models", "fmnist_resnet.onnx")


def sampled(f, mean, std, n=400_000, seed=0):
    y = np.random.default_rng(seed).normal(mean, std, size=(n,))
    fy = f(y)
    return fy.mean(), (fy * fy).mean()


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.7, 0.3), (-1.2, 2.0), (3.0, 0.5)])
@pytest.mark.parametrize("lo,hi", [(0.0, np.inf), (0.0, 6.0), (-1.0, 2.0)])
def test_closed_form_clip_moments_match_samples(mean, std, lo, hi):
    e1, e2 = datafree.clip_moments(np.array([mean]), np.array([std]), lo, hi)
    s1, s2 = sampled(lambda y: np.clip(y, lo, hi), mean, std)
    tol = 4 * std * std / np.sqrt(400_000) * 10
    assert abs(e1[0] - s1) < max(tol, 5e-3 * max(1.0, abs(s1)))
    assert abs(e2[0] - s2) < max(tol, 5e-3 * max(1.0, abs(s2)))


def test_zero_std_gives_the_activation_of_the_mean():
    e1, e2 = datafree.clip_moments(np.array([0.4, -0.4]), np.array([0.0, 0.0]), 0.0, np.inf)
    assert np.allclose(e1, [0.4, 0.0]) and np.allclose(e2, [0.16, 0.0])


def test_closed_form_leaky_moments_match_samples():
    for mean, std in [(0.3, 1.0), (-1.5, 0.5), (2.0, 2.5)]:
        e1, e2 = datafree.leaky_moments(np.array([mean]), np.array([std]), 0.1)
        s1, s2 = sampled(lambda y: np.where(y > 0, y, 0.1 * y), mean, std)
        assert abs(e1[0] - s1) < 1e-2 * max(1.0, abs(s1)) and abs(e2[0] - s2) < 1e-2 * max(1.0, abs(s2))


@pytest.mark.parametrize("op", ["Sigmoid", "HardSwish", "HardSigmoid", "Tanh", "Elu", "Softplus"])
def test_quadrature_moments_match_samples(op):
    node = onnx.helper.make_node(op, ["x"], ["y"])
    f, bounds = datafree.activation_fn(node, None)
    assert bounds is None
    mean, std = np.array([0.3, -1.5, 2.0]), np.array([1.0, 0.5, 2.5])
    e1, e2 = datafree.quad_moments(f, mean, std)
    for i in range(3):
        s1, s2 = sampled(f, mean[i], std[i], seed=i)
        assert abs(e1[i] - s1) < 1e-2 * max(1.0, abs(s1)) and abs(e2[i] - s2) < 1e-2 * max(1.0, abs(s2))


def test_covariance_of_relu_of_correlated_gaussians_matches_samples():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 3))
    cov = a @ a.T + 0.1 * np.eye(3)
    mean = np.array([0.5, -0.2, 1.0])
    relu = lambda y: np.maximum(y, 0.0)   # noqa: E731
    e1, e2 = datafree.clip_moments(mean, np.sqrt(np.diag(cov)), 0.0, np.inf)
    got = datafree.act_cov(relu, mean, cov, e1, diag2=e2)
    y = relu(rng.multivariate_normal(mean, cov, size=400_000))
    assert np.allclose(got, np.cov(y.T), atol=2e-2)


def constant_channel_model():
    """x -> Conv 3->4 (1x1) -> BN (channel 1: gamma 0, beta 0.8) -> Relu -> Conv 4->2 (1x1) -> y."""
    b = B(seed=3)
    h = b.conv("x", 3, 4, "c1", k=1)
    h = b.bn(h, 4, "bn1")
    b.inits["bn1_s"][1] = 0.0
    b.inits["bn1_b"][1] = 0.8
    h = b.relu(h, "r1")
    y = b.conv(h, 4, 2, "c2", k=1)
    return b.model({"x": [2, 3, 8, 8]}, [y])


def test_expected_compensation_of_a_constant_channel_is_lossless_without_data():
    model = constant_channel_model()
    prep = pipeline.prepare(model)
    an = prep.analysis
    gid = next(g.id for g in an.groups if g.prunable and "r1" in g.tensors)
    pos = an.positions(gid, "r1")
    removed = an.group_units[gid][[int(np.flatnonzero(pos == an.positions(gid, "r1")[1])[0])]]
    mom, _ = datafree.moments(an.model)
    assert np.isclose(mom["r1"].mean[1], 0.8) and np.isclose(mom["r1"].var[1], 0.0)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    ref = run(model, feeds)
    plain = run(rewrite.apply(an, removed), feeds)
    repaired = run(rewrite.apply(an, removed, means=datafree.expected_means(an, mom)), feeds)
    name = model.graph.output[0].name
    assert np.abs(plain[name] - ref[name]).max() > 1e-2          # the channel mattered
    assert np.abs(repaired[name] - ref[name]).max() < 1e-5       # and compensation restores it exactly


def test_neuron_merging_folds_a_scaled_copy_exactly():
    """Channel 2 of BN is channel 0 scaled by 2 (weights, BN scale and shift): merged into 0, lossless."""
    b = B(seed=4)
    h = b.conv("x", 3, 4, "c1", k=1, bias=False)
    b.inits["c1_w"][2] = b.inits["c1_w"][0]
    h = b.bn(h, 4, "bn1")
    for k in ("m", "v"):
        b.inits[f"bn1_{k}"][2] = b.inits[f"bn1_{k}"][0]
    b.inits["bn1_s"][2] = 2 * b.inits["bn1_s"][0]
    b.inits["bn1_b"][2] = 2 * b.inits["bn1_b"][0]
    h = b.relu(h, "r1")
    y = b.conv(h, 4, 2, "c2", k=1)
    model = b.model({"x": [2, 3, 8, 8]}, [y])
    an = pipeline.prepare(model).analysis
    gid = next(g.id for g in an.groups if g.prunable and "r1" in g.tensors)
    removed = an.group_units[gid][[2]]
    mom, _ = datafree.moments(an.model)
    merges = datafree.neuron_merges(mom, {"r1": np.array([0, 1, 3])})
    assert [(j, i) for j, i, _, _ in merges["r1"]] == [(2, 0)]
    assert np.isclose(merges["r1"][0][2], 2.0, rtol=1e-6)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    ref, out = run(model, feeds), run(rewrite.apply(an, removed, merges=merges), feeds)
    name = model.graph.output[0].name
    assert np.abs(out[name] - ref[name]).max() < 1e-5


def test_fidelity_flags_one_class_and_low_cosine_not_a_copy():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((64, 10))
    same = datafree.fidelity([ref], [ref + 1e-3 * rng.standard_normal(ref.shape)], ["y"])
    assert same["collapsed"] == [] and same["outputs"]["y"]["top1_agreement"] == 1.0
    one_class = np.tile(ref[:1], (64, 1))
    assert datafree.fidelity([ref], [one_class], ["y"])["collapsed"] == ["y"]
    unrelated = rng.standard_normal((64, 10))
    assert datafree.fidelity([ref], [unrelated], ["y"])["collapsed"] == ["y"]


def test_warning_on_a_collapsed_model_not_on_a_faithful_one():
    collapsed = pipeline.prune(FMNIST, criterion="blend", ratio=0.5, recover=False).report
    assert collapsed["fidelity"]["collapsed"] == ["logits"]
    assert any("not faithful" in n and "--calib" in n for n in collapsed["notes"])
    faithful = pipeline.prune(FMNIST, criterion="blend", ratio=0.1).report
    assert faithful["fidelity"]["collapsed"] == []
    assert not any("not faithful" in n for n in faithful["notes"])
    assert faithful["verification"]["valid"] and collapsed["verification"]["valid"]


def test_datafree_repair_runs_without_data_and_reports_its_steps():
    rep = pipeline.prune(FMNIST, criterion="blend", target_macs=0.5).report
    steps = {s["step"]: s for s in rep["recovery"] if "loss_after" in s}
    assert {"expected_compensation", "neuron_merging", "linear_reconstruction",
            "least_squares_synthetic"} <= set(steps)
    assert all(s["inputs"] == "synthetic" for s in steps.values())
    assert steps["linear_reconstruction"]["kept"]
    # every kept step lowered the error it was judged on
    assert all(s["loss_after"] < s["loss_before"] for s in steps.values() if s["kept"])


def test_no_recover_leaves_the_model_unrepaired():
    rep = pipeline.prune(FMNIST, criterion="l1", ratio=0.3, recover=False).report
    assert rep["recovery"] == []


def test_min_fidelity_exits_1_and_writes_nothing(tmp_path):
    out = tmp_path / "p.onnx"
    result = CliRunner().invoke(main, [FMNIST, "--ratio", "0.5", "--no-recover", "--min-fidelity", "0.5",
                                       "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert not out.exists() and os.listdir(tmp_path) == []
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "not faithful enough" in lines[0] and "nothing written" in lines[0]


def test_min_fidelity_passes_a_faithful_model(tmp_path):
    out = tmp_path / "p.onnx"
    result = CliRunner().invoke(main, [FMNIST, "--ratio", "0.1", "--min-fidelity", "0.5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists()


@pytest.mark.parametrize("value", ["1.5", "-0.1", "abc", "nan"])
def test_bad_min_fidelity_is_a_one_line_usage_error(tmp_path, value):
    out = tmp_path / "p.onnx"
    result = CliRunner().invoke(main, [FMNIST, "--min-fidelity", value, "-o", str(out)])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "--min-fidelity" in result.output
    assert not out.exists()


def test_check_inputs_are_smooth_standardised_images_and_seeded():
    model = onnx.load(FMNIST)
    shapes = {"input": [1, 1, 28, 28]}
    a = datafree.check_feeds(model, shapes, 6, seed=3)
    b = datafree.check_feeds(model, shapes, 6, seed=3)
    x = np.concatenate([f["input"] for f in a])
    assert x.shape == (6, 1, 28, 28) and np.array_equal(x, np.concatenate([f["input"] for f in b]))
    assert np.allclose(x.mean(axis=(1, 2, 3)), 0, atol=1e-5) and np.allclose(x.std(axis=(1, 2, 3)), 1, atol=1e-4)
    # neighbouring pixels are strongly correlated (unlike N(0, 1) noise)
    assert np.corrcoef(x[..., :-1].ravel(), x[..., 1:].ravel())[0, 1] > 0.5


def test_moments_follow_bn_parameters():
    an = pipeline.prepare(FMNIST).analysis
    mom, rho = datafree.moments(an.model)
    index = GraphIndex(an.model)
    bn = next(n for n in an.model.graph.node if n.op_type == "BatchNormalization")
    beta, gamma = index.const(bn.input[2]), index.const(bn.input[1])
    assert np.allclose(mom[bn.output[0]].mean, beta) and np.allclose(mom[bn.output[0]].var, gamma ** 2, rtol=1e-5)
    assert set(an.read_tensors()) <= set(mom)      # every read tensor of this ResNet has moments
    assert all(r in datafree.RHO_GRID for r in rho.values())
