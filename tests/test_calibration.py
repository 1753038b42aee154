"""Calibration loading, streamed statistics, activation criteria (T15) and recovery (T13, T14)."""

import numpy as np
import onnx
import pytest
from onnx import helper
from PIL import Image

from helpers import make_model, run, tensor
from onnxprune.calibration import activations
from onnxprune import criteria, rewrite
from onnxprune.recovery import recover
from onnxprune.calibration.calib import CalibConfig, CalibData, input_specs
from onnxprune.criteria.activations import entropy_of
from onnxprune.errors import OnnxPruneError
from onnxprune.pipeline import prepare
from onnxprune.allocation.select import SelectConfig, select


def conv_bn_relu_conv(gamma=None, beta=None, k2=1, c=8, seed=0):
    """x[1,3,8,8] -> Conv(3->c) -> BN -> Relu -> Conv(c->4, k2 x k2) -> y."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": rng.standard_normal((c, 3, 3, 3)).astype(np.float32) * 0.3,
        "s": (rng.uniform(0.5, 1.5, c) if gamma is None else gamma).astype(np.float32),
        "b": (rng.normal(0, 0.2, c) if beta is None else beta).astype(np.float32),
        "m": rng.normal(0, 0.3, c).astype(np.float32), "v": rng.uniform(0.5, 2, c).astype(np.float32),
        "w2": rng.standard_normal((4, c, k2, k2)).astype(np.float32) * 0.3, "b2": np.zeros(4, np.float32),
    }
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2")]
    return make_model(nodes, [tensor("x", ["N", 3, 8, 8])], [tensor("y", ["N", 4, 8 - k2 + 1, 8 - k2 + 1])], inits)


def npz_data(tmp_path, n=32, shape=(3, 8, 8), seed=0, name="x", **kw):
    path = tmp_path / "cal.npz"
    np.savez(path, **{name: np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)})
    return str(path)


def calib_for(model, path, **kw):
    prep = prepare(model)
    return prep, CalibData(CalibConfig(path, **kw), input_specs(prep.original, prep.input_shapes))


def test_streaming_statistics_do_not_depend_on_batch_size(tmp_path):
    model = conv_bn_relu_conv()
    path = npz_data(tmp_path, n=64)
    results = []
    for bs in (1, 64):
        prep, data = calib_for(model, path, batch_size=bs, holdout=0.0)
        results.append(activations.collect(prep.analysis.model, {"r": 1}, data, "all", rank_samples=16)["r"])
    a, b = results
    for field in ("sum", "sumsq", "abssum", "zeros", "rank_sum"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-9, atol=1e-9)
    assert a.count == b.count == 64 * 64
    np.testing.assert_allclose(a.pooled_values(), b.pooled_values(), rtol=1e-6)


def test_t15_criteria_sanity(tmp_path):
    # channel 0: gamma=0, beta=-1 -> relu output is all zero (dead); channel 1: gamma=0, beta=0.7 -> constant
    gamma = np.array([0, 0, 1, 1, 1, 1, 1, 1], np.float32)
    beta = np.array([-1, 0.7, 0, 0, 0, 0, 0, 0], np.float32)
    model = conv_bn_relu_conv(gamma=gamma, beta=beta)
    prep, data = calib_for(model, npz_data(tmp_path, n=40), holdout=0.0)
    an = prep.analysis
    st = activations.collect(an.model, an.read_tensors(), data, "all", rank_samples=40)["r"]
    assert st.zeros[0] / st.count == 1.0                  # APoZ of a dead channel is 1
    hr = st.rank_sum / st.rank_samples
    assert hr[0] == 0.0 and hr[1] == 1.0                  # zero map rank 0, constant map rank 1
    assert np.all(hr <= 8)                                # <= min(H, W)
    ent = entropy_of(st.pooled_values())
    assert ent[0] == 0.0 and ent[1] == 0.0 and ent[2] > 0
    ctx = criteria.ScoreContext(an, stats={"r": st})
    gid = next(g.id for g in an.groups if g.prunable)
    for name in ("apoz", "mean_act", "entropy", "hrank"):
        s = criteria.score(name, ctx)[gid]
        assert s[0] == s.min(), name                       # the dead channel is the least important
    assert np.array_equal(criteria.score("random", criteria.ScoreContext(an, seed=3))[gid],
                          criteria.score("random", criteria.ScoreContext(an, seed=3))[gid])


def test_activation_criterion_without_calibration_is_a_clear_error():
    an = prepare(conv_bn_relu_conv()).analysis
    with pytest.raises(OnnxPruneError, match="--calib"):
        criteria.score("apoz", criteria.ScoreContext(an))


@pytest.mark.parametrize("k2", [1, 3])
def test_t13_mean_compensation_makes_constant_channel_removal_lossless(tmp_path, k2):
    gamma = np.array([0, 1, 1, 1, 1, 1, 1, 1], np.float32)
    beta = np.array([0.6, 0, 0, 0, 0, 0, 0, 0], np.float32)    # channel 0 is the constant relu(0.6)
    model = conv_bn_relu_conv(gamma=gamma, beta=beta, k2=k2)
    prep, data = calib_for(model, npz_data(tmp_path, n=16), holdout=0.0)
    an = prep.analysis
    st = activations.collect(an.model, an.read_tensors(), data, "all")
    gid = next(g.id for g in an.groups if g.prunable)
    removed = an.group_units[gid][[0]]
    plain = rewrite.apply(an, removed)
    compensated = rewrite.apply(an, removed, means={t: s.mean for t, s in st.items()})
    feeds = next(data.batches("all"))
    ref, out, out_plain = run(an.model, feeds)["y"], run(compensated, feeds)["y"], run(plain, feeds)["y"]
    assert np.max(np.abs(out_plain - ref)) > 1e-2           # removal without compensation changes the output
    # exact with a 1x1 consumer; with 3x3 and no padding too (valid conv)
    assert np.max(np.abs(out - ref)) < 1e-5


def test_t14_bn_reestimation_matches_empirical_statistics(tmp_path):
    model = conv_bn_relu_conv()
    prep, data = calib_for(model, npz_data(tmp_path, n=48), holdout=0.25)
    an = prep.analysis
    result = recover.reestimate_bn(an.model, data)
    st = activations.collect(result, {"c1": 1}, data, "score")["c1"]
    bn = next(n for n in result.graph.node if n.op_type == "BatchNormalization")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in result.graph.initializer}
    np.testing.assert_allclose(inits[bn.input[3]], st.mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(inits[bn.input[4]], st.var, rtol=1e-4, atol=1e-6)


def test_bn_reestimation_matches_every_bn_of_a_deep_chain(tmp_path):
    # four Conv-BN-Relu blocks: each BN's inputs change when the BNs before it are re-estimated,
    # so setting every BN from one pass of the old model (or two) leaves the later ones wrong;
    # one walk in node order sets each from the inputs of the final model
    from fixtures import B, X

    b = B(3)
    h = "x"
    for k, c_in in enumerate((3, 8, 8, 8)):
        h = b.relu(b.bn(b.conv(h, c_in, 8, f"c{k}"), 8, f"bn{k}"), f"r{k}")
    model = b.model(X, [b.conv(h, 8, 4, "out")])
    prep, data = calib_for(model, npz_data(tmp_path, n=48, shape=tuple(X["x"][1:])), holdout=0.25)
    result = recover.reestimate_bn(prep.analysis.model, data)
    bns = [n for n in result.graph.node if n.op_type == "BatchNormalization"]
    st = activations.collect(result, {n.input[0]: 1 for n in bns}, data, "score")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in result.graph.initializer}
    for bn in bns:
        np.testing.assert_allclose(inits[bn.input[3]], st[bn.input[0]].mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(inits[bn.input[4]], st[bn.input[0]].var, rtol=1e-4, atol=1e-5)


def test_bn_reestimation_keeps_statistics_that_overflow_the_dtype(tmp_path):
    # a blown-up channel (PaddleOCR's detector after pruning): float32 cannot hold its variance
    model = conv_bn_relu_conv()
    w1 = next(i for i in model.graph.initializer if i.name == "w1")
    w = onnx.numpy_helper.to_array(w1).copy()
    w[0] *= 1e21
    w1.CopyFrom(onnx.numpy_helper.from_array(w, "w1"))
    prep, data = calib_for(model, npz_data(tmp_path, n=48), holdout=0.25)
    with np.errstate(over="raise"):   # no overflow in a cast to float32
        result = recover.reestimate_bn(prep.analysis.model, data)
    st = activations.collect(result, {"c1": 1}, data, "score")["c1"]
    assert st.var[0] > 1e39    # beyond float32
    bn = next(n for n in result.graph.node if n.op_type == "BatchNormalization")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in result.graph.initializer}
    before = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert np.isfinite(inits[bn.input[4]]).all()
    assert inits[bn.input[4]][0] == before["v"][0] and inits[bn.input[3]][0] == before["m"][0]
    np.testing.assert_allclose(inits[bn.input[4]][1:], st.var[1:], rtol=1e-4, atol=1e-6)


def test_bn_reestimation_and_moment_matching_leave_no_stale_weights(tmp_path):
    # each replaces initializers; the replaced ones must not stay in the file (PaddleOCR det after
    # moment matching had 1.12x the original's parameters)
    from onnxprune.analysis.metrics import count_params

    prep, data = calib_for(conv_bn_relu_conv(), npz_data(tmp_path, n=48), holdout=0.25)
    an = prep.analysis
    gid = next(g.id for g in an.groups if g.prunable)
    removed = an.group_units[gid][:3]
    pruned = rewrite.apply(an, removed)
    matched, _ = recover.match_moments(an.model, pruned, an.kept_channels(removed), data)
    for before, after in ((an.model, recover.reestimate_bn(an.model, data)), (pruned, matched)):
        read = {i for n in after.graph.node for i in n.input}
        assert all(i.name in read for i in after.graph.initializer)
        assert count_params(after) == count_params(before)


def test_recovery_steps_never_make_holdout_worse(tmp_path):
    import onnxprune

    result = onnxprune.prune(conv_bn_relu_conv(c=16), criterion="l1", ratio=0.5, calib=npz_data(tmp_path, n=64))
    steps = result.report["recovery"]
    assert steps and all((s["loss_after"] < s["loss_before"]) == s["kept"] for s in steps)


# --- loader --------------------------------------------------------------------------------------

def write_images(folder, n, size=(40, 30), mode="RGB", classes=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / classes[i % len(classes)] if classes else folder
        sub.mkdir(exist_ok=True)
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        Image.fromarray(rng.integers(0, 255, shape).astype(np.uint8), mode).save(sub / f"{i}.png")


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_image_folder_any_size_and_mode_nchw(tmp_path, mode):
    write_images(tmp_path / "imgs", 5, size=(40, 30), mode=mode)
    model = conv_bn_relu_conv()
    _, data = calib_for(model, str(tmp_path / "imgs"), batch_size=2, holdout=0.2)
    batches = list(data.batches("all"))
    assert [b["x"].shape for b in batches] == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]
    assert data.size("holdout") == 1


def test_image_folder_nhwc_grayscale_model_and_labels(tmp_path):
    write_images(tmp_path / "imgs", 6, mode="RGB", classes=["cat", "dog"])
    w = np.ones((2, 1, 3, 3), np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["y"])]
    model = make_model(nodes, [tensor("x", ["N", 10, 10, 1])], [tensor("y", ["N", 2, 8, 8])], {"w": w})
    prep = prepare(model)
    spec = input_specs(prep.original, prep.input_shapes)[0]
    assert spec.layout == "NHWC" and spec.channels == 1
    data = CalibData(CalibConfig(str(tmp_path / "imgs"), holdout=0.0), [spec])
    assert next(data.batches())["x"].shape == (6, 10, 10, 1)
    assert sorted(set(data.labels.tolist())) == [0, 1]


def test_npz_with_several_inputs(tmp_path):
    w = np.ones((2, 3, 1, 1), np.float32)
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Conv", ["s", "w"], ["y"])]
    model = make_model(nodes, [tensor("a", ["N", 3, 4, 4]), tensor("b", ["N", 3, 4, 4])],
                       [tensor("y", ["N", 2, 4, 4])], {"w": w})
    path = tmp_path / "two.npz"
    np.savez(path, a=np.zeros((4, 3, 4, 4), np.float32), b=np.ones((4, 3, 4, 4), np.float32),
             labels=np.arange(4))
    _, data = calib_for(model, str(path), holdout=0.0)
    feeds = next(data.batches())
    assert feeds["a"].shape == feeds["b"].shape == (4, 3, 4, 4) and data.labels.tolist() == [0, 1, 2, 3]


def test_corrupt_image_names_the_file(tmp_path):
    write_images(tmp_path / "imgs", 2)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG not really")
    _, data = calib_for(conv_bn_relu_conv(), str(tmp_path / "imgs"), holdout=0.0)
    with pytest.raises(OnnxPruneError, match="broken.png"):
        list(data.batches())


@pytest.mark.parametrize("case", ["empty_folder", "wrong_shape", "wrong_dtype", "missing_input", "missing_path"])
def test_bad_calibration_data(tmp_path, case):
    model = conv_bn_relu_conv()
    if case == "empty_folder":
        (tmp_path / "empty").mkdir()
        path, match = str(tmp_path / "empty"), "no images"
    elif case == "wrong_shape":
        path, match = npz_data(tmp_path, shape=(3, 9, 9)), "shape"
    elif case == "wrong_dtype":
        path = tmp_path / "ints.npz"
        np.savez(path, x=np.zeros((2, 3, 8, 8), np.int64))
        path, match = str(path), "int64"
    elif case == "missing_input":
        path = tmp_path / "other.npz"
        np.savez(path, a=np.zeros((2, 3, 8, 8), np.float32), b=np.zeros((2, 3, 8, 8), np.float32))
        path, match = str(path), "no array for model input"
    else:
        path, match = str(tmp_path / "nope"), "not found"
    with pytest.raises(OnnxPruneError, match=match):
        calib_for(model, path)


# --- least squares (T12) -----------------------------------------------------------------------

def test_t12_least_squares_never_worse_and_large_ridge_returns_anchor():
    from onnxprune.recovery.reconstruct import solve_ridge

    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 12))
    w_true = rng.standard_normal((5, 12))
    y = x @ w_true.T + 0.3 + 0.1 * rng.standard_normal((400, 5))
    w0 = w_true + 0.5 * rng.standard_normal(w_true.shape)
    design = np.hstack([x, np.ones((400, 1))])
    G, H = design.T @ design, design.T @ y
    err0 = ((y - x @ w0.T) ** 2).sum()
    for eta in (0.0, 1e-4, 1e-2, 1.0, 100.0):
        sol = solve_ridge(G, H, w0, eta)
        err = ((y - design @ sol) ** 2).sum()
        assert err <= err0 + 1e-9
    far = solve_ridge(G, H, w0, 1e9)
    assert np.abs(far[:-1].T - w0).max() < 1e-4


@pytest.mark.parametrize("kw", [dict(pads=[1, 1, 1, 1]), dict(strides=[2, 2], pads=[0, 1, 1, 0]),
                                dict(dilations=[2, 2], pads=[2, 2, 2, 2]), dict(auto_pad="SAME_UPPER", strides=[2, 2])])
def test_im2col_rows_reproduce_the_conv(kw):
    from onnxprune.recovery.reconstruct import im2col_rows

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], **kw)
    model = make_model([node], [tensor("x", [2, 3, 9, 9])], [onnx.ValueInfoProto(name="y")], {"w": w})
    y = run(model, {"x": x})["y"]
    n, oy, ox = np.meshgrid(np.arange(2), np.arange(y.shape[2]), np.arange(y.shape[3]), indexing="ij")
    pos = (n.ravel(), oy.ravel(), ox.ravel())
    rows = im2col_rows(x, node, w.shape, pos)
    np.testing.assert_allclose(rows @ w.reshape(4, -1).T, y[pos[0], :, pos[1], pos[2]], atol=1e-4)


def test_least_squares_recovery_lowers_reconstruction_error(tmp_path):
    import onnxprune

    model = conv_bn_relu_conv(c=16, k2=3)
    kw = dict(criterion="l1", ratio=0.5, calib=npz_data(tmp_path, n=96), allocate="uniform")
    result = onnxprune.prune(model, recover=True, **kw)
    steps = {s["step"]: s for s in result.report["recovery"] if "loss_before" in s}
    ls = steps["least_squares"]
    assert ls["kept"] and ls["loss_after"] < 0.9 * ls["loss_before"]
    # on fresh inputs (not the calibration samples) the recovered model is closer to the original
    plain = onnxprune.prune(model, recover=False, **kw)
    assert plain.plan.removed_units(plain.analysis).tolist() == result.plan.removed_units(result.analysis).tolist()
    x = np.random.default_rng(5).standard_normal((64, 3, 8, 8)).astype(np.float32)
    ref = run(model, {"x": x})["y"]
    err = lambda m: float(((run(m, {"x": x})["y"] - ref) ** 2).sum() / (ref ** 2).sum())  # noqa: E731
    assert err(result.model) < 0.7 * err(plain.model)


def test_thinet_removes_a_channel_its_consumer_ignores(tmp_path):
    model = conv_bn_relu_conv(c=8, k2=3)
    w2 = next(i for i in model.graph.initializer if i.name == "w2")
    arr = onnx.numpy_helper.to_array(w2).copy()
    arr[:, 5] = 0.0                                   # the consumer never reads channel 5
    w2.CopyFrom(onnx.numpy_helper.from_array(arr, "w2"))
    w1 = next(i for i in model.graph.initializer if i.name == "w1")
    big = onnx.numpy_helper.to_array(w1).copy()
    big[5] *= 10.0                                    # ...although its filter is the largest
    w1.CopyFrom(onnx.numpy_helper.from_array(big, "w1"))
    prep, data = calib_for(model, npz_data(tmp_path, n=16), holdout=0.0)
    an = prep.analysis
    gid = next(g.id for g in an.groups if g.prunable)
    ctx = criteria.ScoreContext(an, data=data)
    assert np.argmin(criteria.score("thinet", ctx)[gid]) == 5
    assert np.argmax(criteria.score("l1", ctx)[gid]) == 5


def test_fixed_batch_model_gets_batches_of_its_size(tmp_path):
    """A model exported with a fixed batch runs only that many samples per call (issue #6 corpus)."""
    w = np.ones((2, 3, 1, 1), np.float32)
    for batch, n, expect in ((1, 5, 5), (4, 10, 8)):
        model = make_model([helper.make_node("Conv", ["x", "w"], ["y"])], [tensor("x", [batch, 3, 4, 4])],
                           [tensor("y", [batch, 2, 4, 4])], {"w": w})
        path = tmp_path / f"b{batch}.npy"
        np.save(path, np.zeros((n, 3, 4, 4), np.float32))
        _, data = calib_for(model, str(path), holdout=0.25)
        assert data.size("all") == expect and data.size("holdout") % batch == 0
        assert {len(f["x"]) for f in data.batches()} == {batch}
    np.save(tmp_path / "two.npy", np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(OnnxPruneError, match="too few samples"):
        calib_for(model, str(tmp_path / "two.npy"))


def test_entropy_survives_large_offsets_and_non_finite_values():
    """PaddleOCR's detector has channels whose pooled means sit near 3e4 with a float32-sized spread:
    numpy refused to bin them in float32 ("Too many bins for data range"), failing the default preset."""
    from onnxprune.criteria.activations import entropy_of

    offset = np.float32(3.0e4) + np.arange(64, dtype=np.float32) * np.float32(0.002)
    noise = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    constant = np.full(64, 7.0, np.float32)
    broken = np.full(64, np.inf, np.float32)
    ent = entropy_of(np.stack([offset, noise, constant, broken], axis=1))
    assert np.all(np.isfinite(ent))
    assert ent[0] > 0 and ent[1] > 0 and ent[2] == 0 and ent[3] == 0


def test_channel_stats_square_huge_activations_without_overflow():
    from onnxprune.calibration.activations import ChannelStats

    st = ChannelStats(axis=1)
    x = np.full((2, 3, 4, 4), 1e20, np.float32)
    st.update(x)
    assert np.all(np.isfinite(st.sumsq)) and np.allclose(st.sumsq, 32 * 1e40, rtol=1e-6)


def test_an_image_folder_of_class_subfolders_is_held_out_across_classes(tmp_path):
    """The held-out split is the last part of the samples: in sorted order it would be the
    last class only; the files are taken in a seeded random order."""
    for c in ("a_cat", "b_dog"):
        write_images(tmp_path / "imgs" / c, 8)
    _, data = calib_for(conv_bn_relu_conv(), str(tmp_path / "imgs"), holdout=0.25)
    assert data.size("holdout") == 4 and sorted(data.labels.tolist()) == [0] * 8 + [1] * 8
    assert set(data.split_labels("holdout").tolist()) == {0, 1}
    _, again = calib_for(conv_bn_relu_conv(), str(tmp_path / "imgs"), holdout=0.25)
    assert again.files == data.files          # the same order every run


def test_a_file_sorted_by_class_gets_a_note(tmp_path):
    """An .npz is split in its order: sorted by label, the held-out quarter holds the last classes."""
    x = np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32)
    labels = np.repeat(np.arange(4), 10)
    np.savez(tmp_path / "sorted.npz", x=x, labels=labels)
    np.savez(tmp_path / "mixed.npz", x=x, labels=np.random.default_rng(1).permutation(labels))
    _, data = calib_for(conv_bn_relu_conv(), str(tmp_path / "sorted.npz"))
    assert any("holds 1 of the 4 classes" in n for n in data.notes)
    _, data = calib_for(conv_bn_relu_conv(), str(tmp_path / "mixed.npz"))
    assert not any("classes" in n for n in data.notes)


def test_recovery_targets_from_the_calibration_pass_or_their_own_give_the_same_model(monkeypatch):
    # the least-squares teacher and the moment teacher come out of the calibration pass where they
    # fit its memory budget, else from passes of their own: the same numbers either way
    import os

    import onnxprune
    from onnxprune.calibration import stage

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model, calib = os.path.join(root, "models", "fmnist_resnet.onnx"), os.path.join(root, "calib_data", "fmnist_calib.npz")
    recorded = onnxprune.prune(model, ratio=0.5, calib=calib, calib_samples=64)
    monkeypatch.setattr(stage, "RECORD_BATCH_BYTES", 0)
    separate = onnxprune.prune(model, ratio=0.5, calib=calib, calib_samples=64)
    assert separate.model.SerializeToString() == recorded.model.SerializeToString()
    before, after = recorded.report["forward_passes"], separate.report["forward_passes"]
    assert after["calibration"] == before["calibration"]
    # the teacher's own pass over the 48 scoring samples is counted where it runs (the order
    # check's first repair), moment matching's on top of its pruned-model pass
    assert after["order_check"] == before["order_check"] + 48
    assert after["recovery"] == before["recovery"] + 48
