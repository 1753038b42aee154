"""Claims of criteria.md §11 about the masking machinery and the seed methods (T1, T4, T5, T16, T17, ...)."""

import itertools

import numpy as np
import onnx
import pytest
from onnx import helper

from helpers import make_model, run, tensor
from onnxprune import criteria, rewrite
from onnxprune.calibration.calib import CalibConfig, CalibData, input_specs
from onnxprune.criteria.ensembles import fit_additive
from onnxprune.runtime.masking import MaskRunner
from onnxprune.pipeline import prepare

RESNET = "tests/models/resnet_style.onnx"


def data_for(prep, tmp_path, n=64, seed=0):
    specs = input_specs(prep.original, prep.input_shapes)
    path = tmp_path / "d.npz"
    np.savez(path, **{s.name: np.random.default_rng(seed).standard_normal((n, *s.sample_shape)).astype(np.float32)
                      for s in specs})
    return CalibData(CalibConfig(str(path), holdout=0.25), specs)


def test_t1_masking_equals_physical_removal(tmp_path):
    prep = prepare(onnx.load(RESNET))
    an = prep.analysis
    gids = [g.id for g in an.groups if g.prunable]
    rng = np.random.default_rng(0)
    masks = {gid: (rng.random(an.groups[gid].size) > 0.5).astype(np.float64) for gid in gids}
    for gid in gids:
        masks[gid][an.unit_blocked[an.group_units[gid]]] = 1.0
        masks[gid][0] = 1.0
    removed = np.concatenate([an.group_units[gid][masks[gid] == 0] for gid in gids])
    pruned = rewrite.apply(an, removed)
    feeds = next(data_for(prep, tmp_path).batches("all", 8))
    masked = MaskRunner(an, gids).run(feeds, [masks])[0][0]
    np.testing.assert_allclose(masked, run(pruned, feeds)["output"], atol=1e-5)


def test_t16_per_sample_masks_equal_separate_runs(tmp_path):
    prep = prepare(onnx.load(RESNET))
    an = prep.analysis
    gid = next(g.id for g in an.groups if g.prunable)
    runner = MaskRunner(an, [gid])
    rng = np.random.default_rng(1)
    masks = [{gid: (rng.random(an.groups[gid].size) > 0.3).astype(np.float64)} for _ in range(5)]
    feeds = next(data_for(prep, tmp_path).batches("all", 4))
    together = runner.run(feeds, masks)
    for mask, outs in zip(masks, together):
        alone = runner.run(feeds, [mask])[0]
        np.testing.assert_allclose(outs[0], alone[0], atol=1e-6)


def banzhaf(v, n, q=0.5):
    """Exact q-Banzhaf values of game v over n players."""
    values = np.zeros(n)
    for i in range(n):
        for bits in itertools.product([0, 1], repeat=n - 1):
            s = list(bits[:i]) + [0] + list(bits[i:])
            p = np.prod([q if b else 1 - q for j, b in enumerate(s) if j != i])
            with_i = s.copy()
            with_i[i] = 1
            values[i] += p * (v(np.array(with_i)) - v(np.array(s)))
    return values


def test_t4_ensemble_coefficients_are_banzhaf_values():
    rng = np.random.default_rng(0)
    n = 8
    a, pair = rng.standard_normal(n), rng.standard_normal((n, n))

    def v(z):  # a nonlinear game
        return float(a @ z + z @ np.triu(pair, 1) @ z + 0.5 * np.sin(z.sum()))

    z = np.array(list(itertools.product([0, 1], repeat=n)), dtype=float)
    loss = -np.array([v(row) for row in z])
    coef, _ = fit_additive(z, loss, ridge=0.0)
    np.testing.assert_allclose(coef[1:], -banzhaf(v, n), atol=1e-10)
    # Monte Carlo at q = 0.5 with 4000 masks
    zm = (rng.random((4000, n)) < 0.5).astype(float)
    coef_mc, _ = fit_additive(zm, -np.array([v(row) for row in zm]), ridge=0.0)
    assert np.corrcoef(coef_mc[1:], -banzhaf(v, n))[0, 1] > 0.99


def dead_large_model():
    """x -> Conv(3->6) -> Relu -> Conv(6->1) -> y; filter 0 is huge but its consumer weights are 0."""
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.3
    w1[0] *= 20.0
    w1[1] *= 0.3                                  # small but useful
    w2 = np.abs(rng.standard_normal((1, 6, 1, 1))).astype(np.float32) + 0.5   # contributions add up
    w2[:, 0] = 0.0
    w2[:, 1] *= 8.0
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["c2"], name="conv2"),
             helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"])]
    return make_model(nodes, [tensor("x", ["N", 3, 8, 8])], [tensor("y", ["N", 1])], {"w1": w1, "w2": w2})


def test_t5_ensemble_prunes_the_dead_large_filter_l1_the_small_useful_one(tmp_path):
    prep = prepare(dead_large_model())
    an = prep.analysis
    data = data_for(prep, tmp_path)
    gid = next(g.id for g in an.groups if g.prunable)
    ctx = criteria.ScoreContext(an, data=data, options={"ratio": 0.2, "ensemble_masks": 256})
    ens = criteria.score("ensemble", ctx)[gid]
    l1 = criteria.score("l1", ctx)[gid]
    assert np.argmin(ens) == 0 and np.argmax(l1) == 0
    assert np.argmin(l1) == 1 and ens[1] > np.median(ens)
    assert 0.0 <= ctx.extras["ensemble"]["utilization"][gid] <= 1.0
    # removing the filter each criterion ranks lowest: the ensemble's choice costs (almost) nothing
    runner = MaskRunner(an, [gid])
    from onnxprune.criteria.ensembles import first_batch
    feeds = first_batch(data, 64)
    ref = runner.run(feeds, [{}])[0]
    kl = runner.losses(feeds, [{gid: np.where(np.arange(6) == int(np.argmin(s)), 0.0, 1.0)} for s in (ens, l1)], ref)
    assert kl[0] < 1e-6 < kl[1]


def test_t17_ensemble_agrees_with_leave_one_out_on_a_near_additive_layer(tmp_path):
    from scipy.stats import spearmanr

    from onnxprune.criteria.ensembles import first_batch, group_game

    prep = prepare(onnx.load(RESNET))
    an = prep.analysis
    data = data_for(prep, tmp_path)
    gid = max((g for g in an.groups if g.prunable), key=lambda g: g.size).id
    runner = MaskRunner(an, [gid])
    feeds = first_batch(data, 32)
    ref = runner.run(feeds, [{}])[0]
    ctx = criteria.ScoreContext(an, data=data)
    game = group_game(ctx, gid, runner, feeds, ref, None, masks=400, keep_prob=0.9, rng=np.random.default_rng(0))
    size = an.groups[gid].size
    loo = runner.losses(feeds, [{gid: np.where(np.arange(size) == i, 0.0, 1.0)} for i in range(size)], ref)
    assert spearmanr(game["importance"], loo).correlation > 0.8


def test_t3_norm_criteria_rank_alike_and_cluster_together():
    from scipy.stats import spearmanr

    from onnxprune.criteria.blend import condense, percentile_ranks

    rng = np.random.default_rng(0)
    ranks = {n: {} for n in ("l1", "l2", "fpgm", "random")}
    for gid in range(6):
        filters = rng.standard_normal((64, 3 * 3 * 16)) * rng.lognormal(0, 0.5, (64, 1))
        l1 = np.abs(filters).sum(1)
        l2 = np.sqrt((filters ** 2).sum(1))
        fp = np.linalg.norm(filters[:, None] - filters[None], axis=2).sum(1)
        assert spearmanr(l1, l2).correlation > 0.95 and spearmanr(l2, fp).correlation > 0.95
        for name, s in (("l1", l1), ("l2", l2), ("fpgm", fp), ("random", rng.random(64))):
            ranks[name][gid] = percentile_ranks(s)
    summary = condense(ranks, ["l1", "l2", "fpgm", "random"])
    assert ["l1", "l2", "fpgm"] in summary["clusters"] and ["random"] in summary["clusters"]
    assert len(summary["representatives"]) == 2


def test_blend_on_a_real_model_reports_pool_clusters_and_weights(tmp_path):
    import onnxprune

    result = onnxprune.prune(RESNET, criterion="blend", ratio=0.5)
    blend = result.report["scoring"]["blend"]
    assert blend["pool"][:3] == ["l1", "l2", "fpgm"]
    assert abs(sum(blend["weights"].values()) - 1.0) < 1e-6
    assert set(blend["weights"]) == set(blend["representatives"])
    assert result.report["verification"]["valid"]


def planted_redundant_model():
    """convA(3->16) -> convB(16->16) -> convC(16->4) -> GAP: 12 of A's channels barely matter, all of B's do."""
    rng = np.random.default_rng(5)
    wa = rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.5
    wa[4:] *= 0.2                                        # weak filters: lowest l1 as well
    wb = rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.3
    wb[:, 4:] *= 0.01                                    # ...and their consumer ignores them
    wc = rng.standard_normal((4, 16, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="convA", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["ra", "wb"], ["b"], name="convB", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("Conv", ["rb", "wc"], ["c"], name="convC"),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"])]
    return make_model(nodes, [tensor("x", ["N", 3, 8, 8])], [tensor("y", ["N", 4])], {"wa": wa, "wb": wb, "wc": wc})


def test_t9_sensitivity_allocation_beats_uniform_on_a_planted_redundant_layer(tmp_path):
    import onnxprune

    model = planted_redundant_model()
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((96, 3, 8, 8)).astype(np.float32))
    results = {alloc: onnxprune.prune(model, criterion="l1", ratio=0.5, calib=str(path), recover=False,
                                      allocate=alloc).report for alloc in ("uniform", "sensitivity")}
    kept = {a: {g["name"]: g["kept"] for g in r["groups"]} for a, r in results.items()}
    assert kept["sensitivity"]["convA"] < kept["sensitivity"]["convB"]          # the redundant layer goes first
    assert results["sensitivity"]["allocation"]["macs_removed"] >= results["uniform"]["allocation"]["macs_removed"] - 0.02
    kl = {a: r["holdout"]["y"]["kl"] for a, r in results.items()}
    assert kl["sensitivity"] <= kl["uniform"]


def test_target_macs_reaches_the_budget():
    import onnxprune

    rep = onnxprune.prune(RESNET, criterion="l1", target_macs=0.6).report
    assert rep["allocation"]["macs_removed"] >= 0.6
    assert rep["macs_kept"] <= 0.4 + 1e-6


def duplicate_model():
    """convA(3->8) -> Relu -> convB(8->4): channels 4..7 are 2x-scaled copies of 0..3 (large norms);
    the 'unique' small channels are 8..11 (convA has 12 outputs)."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    unique = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.2
    wa = np.concatenate([base, 2.0 * base, unique])                  # duplicates are positively scaled
    wb = rng.standard_normal((4, 12, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="convA", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["ra", "wb"], ["y"], name="convB")]
    return make_model(nodes, [tensor("x", ["N", 3, 8, 8])], [tensor("y", ["N", 4, 8, 8])], {"wa": wa, "wb": wb})


def test_t6_functional_removes_planted_duplicates_losslessly_with_merge(tmp_path):
    from onnxprune.calibration import activations
    from onnxprune.criteria import variety

    prep = prepare(duplicate_model())
    an = prep.analysis
    data = data_for(prep, tmp_path, n=32)
    stats = activations.collect(an.model, an.read_tensors(), data, "score", want=frozenset({"signature"}))
    ctx = criteria.ScoreContext(an, stats=stats, data=data)
    gid = next(g.id for g in an.groups if g.prunable)
    l1 = criteria.score("l1", ctx)[gid]
    func = criteria.score("functional", ctx)[gid]
    four_lowest = lambda s: set(np.argsort(s)[:4].tolist())  # noqa: E731
    assert four_lowest(l1) == {8, 9, 10, 11}                 # l1 removes the unique small filters
    assert len(four_lowest(func) & set(range(8))) == 4       # functional removes one of each duplicate pair
    assert ctx.extras["functional"]["redundant_fraction"][gid] == pytest.approx(4 / 12, abs=1e-3)
    removed = an.group_units[gid][sorted(four_lowest(func))]
    kept = an.kept_channels(removed)
    merged = rewrite.apply(an, removed, merges=variety.merges(stats, {t: k for t, k in kept.items() if t in stats}))
    feeds = next(data.batches("all", 8))
    assert np.max(np.abs(run(merged, feeds)["y"] - run(an.model, feeds)["y"])) < 1e-5


def test_t7_variety_cluster_keeps_singletons_and_one_member_per_cluster():
    from onnxprune.criteria.variety import choose

    for seed in range(20):
        rng = np.random.default_rng(seed)
        sizes = rng.integers(1, 5, size=6)                   # planted clusters, some singletons
        labels = np.repeat(np.arange(len(sizes)), sizes)
        n = len(labels)
        sim = np.where(labels[:, None] == labels[None, :], 0.95, 0.05) + rng.uniform(0, 0.02, (n, n))
        sim = (sim + sim.T) / 2
        np.fill_diagonal(sim, 1.0)
        scores = rng.random(n)
        k = n - len(sizes)                                   # exactly one survivor per cluster
        removed = set(choose("cluster", sim, scores, k, np.zeros(n, dtype=bool)).tolist())
        assert len(removed) == k
        for c in range(len(sizes)):
            members = np.flatnonzero(labels == c)
            survivors = [m for m in members if m not in removed]
            assert survivors == [members[np.argmax(scores[members])]]


def test_variety_treats_constant_channels_as_one_cluster():
    from onnxprune.criteria.variety import choose, similarity

    # three dead channels (constant signatures, one of them nonzero: a saturated unit) and three
    # live, distinct ones: the dead ones are alike (one function: a constant, which mean
    # compensation folds into the bias), so the wrapper removes them before any live channel
    rng = np.random.default_rng(0)
    desc = np.concatenate([np.zeros((2, 32)), np.full((1, 32), 0.7), rng.standard_normal((3, 32))])
    sim = similarity(desc)
    assert np.all(sim[:3, :3] == 1.0) and np.all(sim[:3, 3:] == 0.0)
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3])     # even a criterion that ranks them high
    removed = set(choose("cluster", sim, scores, 2, np.zeros(6, dtype=bool)).tolist())
    assert removed <= {0, 1, 2} and len(removed) == 2


def test_t8_searched_blend_is_never_worse_than_the_best_single_criterion():
    from onnxprune.criteria.blend import evolve

    rng = np.random.default_rng(0)
    names = ["a", "b", "c", "d"]
    for seed in range(5):
        target = rng.dirichlet(np.ones(4))
        bumps = rng.normal(0, 0.3, 4)

        def fitness(w):                      # a rugged objective over the simplex
            v = np.array([w[n] for n in names])
            return float(-((v - target) ** 2).sum() + 0.05 * np.sin(10 * v) @ bumps)

        best, history = evolve(names, fitness, np.random.default_rng(seed), population=12, generations=8)
        vertices = max(fitness({n: float(n == m) for n in names}) for m in names)
        assert fitness(best) >= vertices - 1e-12
        assert abs(sum(best.values()) - 1.0) < 1e-9 and min(best.values()) >= 0
        assert history == sorted(history)    # elitism: the best never gets worse


def test_t10_non_additivity_measures_interactions():
    from onnxprune.criteria.ensembles import fit_additive, r_squared

    rng = np.random.default_rng(0)
    n = 10
    a = rng.standard_normal(n)
    pairs = [(rng.integers(n), rng.integers(n)) for _ in range(8)]
    us = []
    for scale in (0.0, 0.5, 2.0):
        def game(z):
            return a @ z + scale * sum(z[i] * z[j] for i, j in pairs)
        z = (rng.random((3000, n)) < 0.5).astype(float)
        y = np.array([game(row) for row in z])
        coef, _ = fit_additive(z[:2000], y[:2000], ridge=0.0)
        us.append(1.0 - r_squared(z[2000:], y[2000:], coef))
    assert us[0] < 0.02
    assert us[0] < us[1] < us[2]


def test_t11_banzhaf_interaction_is_four_walsh_coefficients():
    from onnxprune.criteria.interactions import banzhaf_interaction, walsh_coefficient

    rng = np.random.default_rng(1)
    n = 6
    w = rng.standard_normal((n, n, n))

    def v(z):
        return float(np.einsum("i,j,k,ijk->", z, z, z, w) + np.sin(z @ np.arange(n)))

    for i, j in [(0, 1), (2, 5), (3, 4)]:
        assert abs(banzhaf_interaction(v, n, i, j) - 4 * walsh_coefficient(v, n, (i, j))) < 1e-10


@pytest.mark.parametrize("allocate", ["utilization", "redundancy"])
def test_utilization_and_redundancy_allocators_meet_the_budget(tmp_path, allocate):
    import onnxprune

    prep = prepare(onnx.load(RESNET))
    data = data_for(prep, tmp_path, n=48)
    rep = onnxprune.prune(RESNET, criterion="l1", target_macs=0.5, calib=data.config.path, allocate=allocate,
                          recover=False).report
    assert rep["allocation"]["method"] == allocate
    assert rep["allocation"]["macs_removed"] >= 0.5
    assert rep["verification"]["valid"]


def test_t2_zeroing_a_filter_under_bn_is_not_removal(tmp_path):
    rng = np.random.default_rng(2)
    c = 6
    inits = {"w1": rng.standard_normal((c, 3, 3, 3)).astype(np.float32), "s": rng.uniform(0.5, 1.5, c).astype(np.float32),
             "b": rng.normal(0.5, 0.2, c).astype(np.float32), "m": rng.normal(0, 0.5, c).astype(np.float32),
             "v": rng.uniform(0.5, 2, c).astype(np.float32), "w2": rng.standard_normal((2, c, 1, 1)).astype(np.float32)}
    inits["b"][0], inits["m"][0] = 1.0, -0.5        # a zero input gives beta - gamma*mu/sigma > 0
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    model = make_model(nodes, [tensor("x", ["N", 3, 8, 8])], [tensor("y", ["N", 2, 8, 8])], inits)
    prep = prepare(model)
    an = prep.analysis
    gid = next(g.id for g in an.groups if g.prunable)
    feeds = next(data_for(prep, tmp_path, n=8).batches("all", 8))
    masked = MaskRunner(an, [gid]).run(feeds, [{gid: np.where(np.arange(c) == 0, 0.0, 1.0)}])[0][0]
    zeroed = onnx.ModelProto()
    zeroed.CopyFrom(model)
    w1 = next(i for i in zeroed.graph.initializer if i.name == "w1")
    arr = onnx.numpy_helper.to_array(w1).copy()
    arr[0] = 0.0
    w1.CopyFrom(onnx.numpy_helper.from_array(arr, "w1"))
    zeroed.graph.output.append(onnx.ValueInfoProto(name="r"))
    outs = run(zeroed, feeds)
    assert np.max(np.abs(outs["y"] - masked)) > 1e-3                    # not the same as removing channel 0
    expected = max(inits["b"][0] - inits["s"][0] * inits["m"][0] / np.sqrt(inits["v"][0] + 1e-5), 0.0)
    np.testing.assert_allclose(outs["r"][:, 0], expected, rtol=1e-5)     # the channel is act(beta - gamma mu / sigma)


def two_branch_model():
    """x -> convA(3->4) | convB(3->4) -> Relu -> Concat -> Conv(8->1): A's channels barely reach y."""
    rng = np.random.default_rng(5)
    wa = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    wb = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    wo = (np.abs(rng.standard_normal((1, 8, 1, 1))) + 0.5).astype(np.float32)
    wo[:, :4] *= 1e-3
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="convA", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "wb"], ["b"], name="convB", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"]), helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("Concat", ["ra", "rb"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "wo"], ["c"], name="convO"),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"])]
    return make_model(nodes, [tensor("x", ["N", 3, 8, 8])], [tensor("y", ["N", 1])], {"wa": wa, "wb": wb, "wo": wo})


def test_joint_ensemble_scores_share_loss_units_across_groups(tmp_path):
    prep = prepare(two_branch_model())
    an = prep.analysis
    data = data_for(prep, tmp_path)
    by_name = {g.name: g.id for g in an.groups if g.prunable}
    ctx = criteria.ScoreContext(an, data=data, options={"ensemble_mode": "joint", "ensemble_masks": 2048})
    joint = criteria.score("ensemble", ctx)
    a, b = joint[by_name["convA"]], joint[by_name["convB"]]
    assert a.shape == (4,) and b.shape == (4,)
    assert a.max() < b.min() and np.abs(a).mean() < 0.1 * b.mean()    # A's units matter ~1000x less
    assert ctx.extras["ensemble"]["mode"] == "joint" and ctx.extras["ensemble"]["shared_scale"]
    # the per-group mode plays one game per group: its scores order the units within a group (for B,
    # whose units matter, the joint game's order) but share no scale across groups
    gctx = criteria.ScoreContext(an, data=data, options={"ensemble_masks": 256})
    group = criteria.score("ensemble", gctx)
    assert set(group) == set(joint)
    b_id = by_name["convB"]
    assert np.array_equal(np.argsort(group[b_id]), np.argsort(joint[b_id]))
    assert gctx.extras["ensemble"]["mode"] == "group" and not gctx.extras["ensemble"].get("shared_scale")


def test_joint_ensemble_with_global_allocation_prunes_the_weak_branch(tmp_path):
    from onnxprune.pipeline import prune

    path = tmp_path / "two.onnx"
    onnx.save(two_branch_model(), path)
    result = prune(str(path), criterion="ensemble", ensemble_mode="joint", allocate="global", ratio=0.5,
                   calib="random", calib_samples=64, recover=False)
    kept = {row["name"]: row["kept"] for row in result.report["groups"]}
    assert kept["convA"] < kept["convB"]          # one threshold over shared loss units
    assert result.report["forward_passes"]["ensemble"] > 0


def test_report_counts_forward_passes_per_stage():
    from onnxprune.pipeline import prune

    result = prune(RESNET, calib="random", calib_samples=32, batch_size=8, target_macs=0.3)
    passes = result.report["forward_passes"]
    assert {"calibration", "sensitivity", "recovery"} <= set(passes)
    assert passes["calibration"] == 32                       # statistics on 24 + reference on 8
    assert passes["total"] == pytest.approx(sum(v for k, v in passes.items() if k != "total"), abs=0.5)
    assert 0 < passes["sensitivity"] < len(result.report["allocation"]["curves"]) * 9 * 8


def dead_large_half_model():
    """convA(3->8) -> Relu -> convB(8->4): channels 0..3 have large weights but a bias of -1000, so
    they never fire (dead: removing them is exact); channels 4..7 are small and carry the signal."""
    rng = np.random.default_rng(3)
    wa = np.concatenate([3.0 * rng.standard_normal((4, 3, 3, 3)),
                         0.3 * rng.standard_normal((4, 3, 3, 3))]).astype(np.float32)
    ba = np.array([-1000.0] * 4 + [0.0] * 4, dtype=np.float32)
    wb = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="convA", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["ra", "wb"], ["y"], name="convB")]
    return make_model(nodes, [tensor("x", ["N", 3, 8, 8])], [tensor("y", ["N", 4, 8, 8])],
                      {"wa": wa, "ba": ba, "wb": wb})


@pytest.fixture
def two_criteria_calib(tmp_path, monkeypatch):
    """The blend's pool cut to l1 and mean_act (opposed on the planted models below), and the
    path of 64 random calibration inputs for them."""
    from onnxprune.criteria import blend

    monkeypatch.setattr(blend, "pool", lambda ctx: ["l1", "mean_act"])
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(np.float32))
    return path


def test_order_check_prunes_by_the_representative_that_loses_least(two_criteria_calib):
    import onnxprune

    # a pool of two opposed criteria: l1 keeps the dead large filters, mean_act removes them, and
    # their uniform blend ranks the two halves alike
    path = two_criteria_calib
    rep = onnxprune.prune(dead_large_half_model(), criterion="blend", ratio=0.5, calib=str(path),
                          allocate="uniform", variety="off").report
    check = rep["allocation"]["order_check"]
    assert set(check["losses"]) == {"blend", "l1", "mean_act"}
    assert check["chosen"] == min(check["losses"], key=check["losses"].get) == "mean_act"
    assert check["losses"]["mean_act"] < 1e-6 < check["losses"]["l1"]
    assert rep["holdout"]["y"]["rel_sq_error"] < 1e-6          # the dead filters went
    assert rep["forward_passes"]["order_check"] == check["passes"] > 0
    # the same with the sensitivity allocator (the default with --calib)
    sens = onnxprune.prune(dead_large_half_model(), criterion="blend", ratio=0.5, calib=str(path),
                           variety="off").report
    assert sens["allocation"]["order_check"]["chosen"] == "mean_act"
    assert sens["holdout"]["y"]["rel_sq_error"] < 1e-6 and sens["macs_kept"] <= 0.5 + 1e-6
    # without recovery the check compares the pruned models as they are
    bare = onnxprune.prune(dead_large_half_model(), criterion="blend", ratio=0.5, calib=str(path),
                           allocate="uniform", variety="off", recover=False).report
    check = bare["allocation"]["order_check"]
    assert check["recovery"] == "none" and check["chosen"] == "mean_act"
    assert check["passes"] < rep["allocation"]["order_check"]["passes"]
    off = onnxprune.prune(dead_large_half_model(), criterion="blend", ratio=0.5, calib=str(path),
                          allocate="uniform", variety="off", order_check=False).report
    assert "order_check" not in off["allocation"]
    fast = onnxprune.prune(dead_large_half_model(), criterion="blend", ratio=0.5, calib=str(path), preset="fast").report
    assert "order_check" not in fast["allocation"]


def test_order_check_drops_a_defaulted_variety_that_hurts(two_criteria_calib):
    import onnxprune

    # the dead filters' activations are constant: one cluster, of which the wrapper keeps one,
    # so a live filter goes too; without it mean_act removes exactly the dead ones
    path = two_criteria_calib
    asked = onnxprune.prune(dead_large_half_model(), criterion="blend", ratio=0.5, calib=str(path),
                            allocate="uniform", variety="cluster").report
    assert asked["allocation"]["variety"] == "cluster"                 # asked for: kept, not questioned
    assert asked["allocation"]["order_check"]["variety"] == "kept"
    assert not any("with variety" in k for k in asked["allocation"]["order_check"]["losses"])
    assert asked["holdout"]["y"]["rel_sq_error"] > 1e-2
    default = onnxprune.prune(dead_large_half_model(), criterion="blend", ratio=0.5, calib=str(path),
                              allocate="uniform").report
    check = default["allocation"]["order_check"]
    assert check["chosen"] == "mean_act" and check["losses"]["mean_act"] < 1e-6
    assert check["variety"] == "off" and default["allocation"]["variety"] == "off (order check)"
    assert check["losses"]["mean_act with variety"] > 1e-2
    assert default["holdout"]["y"]["rel_sq_error"] < 1e-6
    # each candidate: least squares over the first 32 of the 48 scoring images (the pruned model;
    # the original's targets came from the calibration pass), then the repaired model's held-out
    # run on the 16 held out
    assert check["passes"] == len(check["losses"]) * (32 + 16)
    assert asked["allocation"]["order_check"]["passes"] == 3 * (32 + 16)


def test_cli_says_when_the_order_check_turned_the_variety_off(tmp_path, two_criteria_calib):
    from click.testing import CliRunner

    from onnxprune.cli import main

    model = tmp_path / "m.onnx"
    onnx.save(dead_large_half_model(), str(model))
    result = CliRunner().invoke(main, [str(model), "--criterion", "blend", "--ratio", "0.5", "--allocate", "uniform",
                                       "--calib", str(two_criteria_calib), "-o", str(tmp_path / "p.onnx")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "mean_act with variety" in text and "pruned by mean_act, variety off" in text


def duplicated_half_model():
    """convA(3->8) -> Relu -> convB(8->4): channels 0..3 are one large filter four times over,
    channels 4..7 smaller distinct filters; convB reads every channel."""
    rng = np.random.default_rng(5)
    big = rng.standard_normal((1, 3, 3, 3))
    wa = np.concatenate([np.repeat(big, 4, axis=0), 0.5 * rng.standard_normal((4, 3, 3, 3))]).astype(np.float32)
    wb = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="convA", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["ra", "wb"], ["y"], name="convB")]
    return make_model(nodes, [tensor("x", ["N", 3, 8, 8])], [tensor("y", ["N", 4, 8, 8])], {"wa": wa, "wb": wb})


def test_order_check_keeps_a_defaulted_variety_that_helps(two_criteria_calib):
    import onnxprune

    # every criterion keeps the four copies (large) and removes the distinct filters; the cluster
    # wrapper removes copies instead, which recovery folds back into the one kept
    path = two_criteria_calib
    rep = onnxprune.prune(duplicated_half_model(), criterion="blend", ratio=0.5, calib=str(path),
                          allocate="uniform").report
    check = rep["allocation"]["order_check"]
    label = f"{check['chosen']} with variety"
    assert check["losses"][label] < 0.5 * check["losses"][check["chosen"]]
    assert check["variety"] == "kept" and rep["allocation"]["variety"] == "cluster"
    off = onnxprune.prune(duplicated_half_model(), criterion="blend", ratio=0.5, calib=str(path),
                          allocate="uniform", variety="off").report
    assert rep["holdout"]["y"]["rel_sq_error"] < 0.5 * off["holdout"]["y"]["rel_sq_error"]


def dead_large_then_live_model():
    """convA(3->8) -> Relu -> convB(8->8) -> Relu -> convC(8->4): convA as in dead_large_half_model
    (channels 0..3 large and dead), convB's channels all live."""
    rng = np.random.default_rng(3)
    wa = np.concatenate([3.0 * rng.standard_normal((4, 3, 3, 3)),
                         0.3 * rng.standard_normal((4, 3, 3, 3))]).astype(np.float32)
    ba = np.array([-1000.0] * 4 + [0.0] * 4, dtype=np.float32)
    wb = (0.3 * rng.standard_normal((8, 8, 3, 3))).astype(np.float32)
    wc = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="convA", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["ra", "wb"], ["b"], name="convB", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("Conv", ["rb", "wc"], ["y"], name="convC")]
    return make_model(nodes, [tensor("x", ["N", 3, 8, 8])], [tensor("y", ["N", 4, 8, 8])],
                      {"wa": wa, "ba": ba, "wb": wb, "wc": wc})


def test_order_check_gives_a_winner_its_own_counts(two_criteria_calib):
    import onnxprune

    # the blend's order mixes convA's dead and live halves, so its sensitivity curves call convA
    # sensitive and the counts take convB channels too; mean_act wins the check at those counts,
    # and its own curves see convA's dead half as free: only dead filters go, exactly
    path = two_criteria_calib
    rep = onnxprune.prune(dead_large_then_live_model(), criterion="blend", target_macs=0.3, calib=str(path),
                          variety="off").report
    check = rep["allocation"]["order_check"]
    assert check["chosen"] == "mean_act" and check["own_counts"] is True
    assert check["losses"]["mean_act at its own counts"] < 1e-6 < check["losses"]["mean_act"]
    kept = {g["id"]: g["kept"] for g in rep["groups"]}
    alone = onnxprune.prune(dead_large_then_live_model(), criterion="mean_act", target_macs=0.3, calib=str(path),
                            variety="off").report
    assert kept == {g["id"]: g["kept"] for g in alone["groups"]} and kept[1] == 8
    assert rep["holdout"]["y"]["rel_sq_error"] < 1e-6
    # the curves the counts came from: the winner's, on the whole grid (a toy fits half the budget)
    assert rep["allocation"]["curves"] == alone["allocation"]["curves"]
    # four repairs (three orders and the own counts) and the winner's probe, counted by the check;
    # the sensitivity entry stays the first probe's
    repairs = 4 * (32 + 16)
    first = alone["forward_passes"]["sensitivity"]
    assert check["passes"] == pytest.approx(repairs + first, abs=0.2)
    assert rep["forward_passes"]["sensitivity"] == pytest.approx(first, abs=0.1)
    # where the own counts do not lower the loss, the blend's counts stay
    half = onnxprune.prune(dead_large_then_live_model(), criterion="blend", target_macs=0.5, calib=str(path),
                           variety="off").report
    assert half["allocation"]["order_check"]["own_counts"] is False
    assert half["allocation"]["order_check"]["losses"]["mean_act at its own counts"] >= \
        half["allocation"]["order_check"]["losses"]["mean_act"]


def test_order_check_questions_a_defaulted_variety_after_the_own_counts(two_criteria_calib):
    import onnxprune

    # the winner's own counts are found and judged without the variety chooser (as the orders
    # were compared), and the chooser is then tried on the final order and counts
    path = two_criteria_calib
    off = onnxprune.prune(dead_large_then_live_model(), criterion="blend", target_macs=0.3, calib=str(path),
                          variety="off").report["allocation"]["order_check"]
    rep = onnxprune.prune(dead_large_then_live_model(), criterion="blend", target_macs=0.3,
                          calib=str(path)).report["allocation"]["order_check"]
    labels = list(rep["losses"])
    assert labels.index("mean_act at its own counts") < labels.index("mean_act with variety") == len(labels) - 1
    assert rep["losses"]["mean_act at its own counts"] == off["losses"]["mean_act at its own counts"] < 1e-6
    assert rep["chosen"] == "mean_act" and rep["own_counts"] is True


def test_order_check_probes_a_runner_up_close_to_a_winning_blend(two_criteria_calib, monkeypatch):
    import onnxprune
    from onnxprune.allocation import allocate
    from onnxprune.allocation import order_check

    # l1 ranks the copies of duplicated_half_model as the blend does: the blend wins (ties go to
    # it) and l1, within CLOSE_RUNNER_UP of it, is probed for counts of its own, which do not beat it
    path = two_criteria_calib
    rep = onnxprune.prune(duplicated_half_model(), criterion="blend", target_macs=0.3, calib=str(path),
                          variety="off").report
    check = rep["allocation"]["order_check"]
    assert check["chosen"] == "blend" and check["own_counts"] is False
    assert check["losses"]["l1"] <= (1 + order_check.CLOSE_RUNNER_UP) * check["losses"]["blend"]
    assert check["losses"]["l1 at its own counts"] >= check["losses"]["blend"]
    probe = rep["forward_passes"]["sensitivity"]
    assert check["passes"] == pytest.approx(3 * (32 + 16) + probe, abs=0.2)
    # a runner-up further away is not probed ...
    monkeypatch.setattr(order_check, "CLOSE_RUNNER_UP", -0.5)
    far = onnxprune.prune(duplicated_half_model(), criterion="blend", target_macs=0.3, calib=str(path),
                          variety="off").report["allocation"]["order_check"]
    assert "own_counts" not in far and list(far["losses"]) == ["blend", "l1"]
    # ... nor where a second probe would not repeat the first (an expensive model)
    monkeypatch.setattr(order_check, "CLOSE_RUNNER_UP", 0.1)
    monkeypatch.setattr(allocate, "PROBE_PASSES", 8)
    costly = onnxprune.prune(duplicated_half_model(), criterion="blend", target_macs=0.3, calib=str(path),
                             variety="off").report
    assert costly["allocation"]["cost"]["repeatable"] is False
    assert "own_counts" not in costly["allocation"]["order_check"]


def test_order_check_fits_its_repairs_on_at_most_32_scoring_images(tmp_path, two_criteria_calib):
    import onnxprune
    from onnxprune.allocation.order_check import CHECK_FIT_SAMPLES

    path = tmp_path / "d128.npz"
    np.savez(path, x=np.random.default_rng(1).standard_normal((128, 3, 8, 8)).astype(np.float32))
    rep = onnxprune.prune(dead_large_half_model(), criterion="blend", ratio=0.5, calib=str(path),
                          allocate="uniform", variety="off").report
    check = rep["allocation"]["order_check"]
    # 128 samples = 96 scoring + 32 held out; least squares runs the pruned model over the first 32
    # scoring images (the original's targets came from the calibration pass), then the held-out run
    assert CHECK_FIT_SAMPLES == 32
    assert check["passes"] == len(check["losses"]) * (32 + 32)
    assert check["chosen"] == "mean_act" and check["losses"]["mean_act"] < 1e-6


def test_a_score_limit_view_shortens_the_scoring_split_only():
    from onnxprune.calibration.calib import CalibConfig, CalibData, input_specs

    model = dead_large_half_model()
    data = CalibData(CalibConfig("random", 100, 8), input_specs(model, {"x": [1, 3, 8, 8]}))
    view = data.with_score_limit(20)
    assert (data.size("score"), data.size("holdout")) == (75, 25)
    assert (view.size("score"), view.size("holdout"), view.size("all")) == (20, 25, 100)
    assert sum(len(b["x"]) for b in view.batches("score")) == 20
    first = next(data.batches("score"))["x"]
    assert np.array_equal(next(view.batches("score"))["x"], first)
    assert np.array_equal(next(view.batches("holdout"))["x"], next(data.batches("holdout"))["x"])
    assert data.size("score") == 75            # the original is untouched


def test_cli_says_when_the_winner_kept_its_own_counts(tmp_path, two_criteria_calib):
    from click.testing import CliRunner

    from onnxprune.cli import main

    model = tmp_path / "m.onnx"
    onnx.save(dead_large_then_live_model(), str(model))
    result = CliRunner().invoke(main, [str(model), "--target-macs", "0.3", "--variety", "off",
                                       "--calib", str(two_criteria_calib), "-o", str(tmp_path / "p.onnx")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "mean_act at its own counts 0" in text and "pruned by mean_act at its own counts" in text
