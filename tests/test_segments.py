"""Suffix sub-models and cut-by-cut walks (onnxprune/analysis/segments.py) compute what the whole model does."""

import glob

import numpy as np
import onnx
import pytest

from helpers import run
from onnxprune.allocation import allocate
from onnxprune import criteria, rewrite
from onnxprune.recovery import reconstruct as ls
from onnxprune.analysis import segments
from onnxprune.calibration.calib import CalibConfig, CalibData, input_specs
from onnxprune.runtime.masking import MaskRunner
from onnxprune.pipeline import prepare

MODELS = sorted(glob.glob("tests/models/*.onnx"))


def feeds_for(prep, n=4, seed=0):
    return {s.name: np.random.default_rng(seed).standard_normal((n, *s.sample_shape)).astype(np.float32)
            for s in input_specs(prep.original, prep.input_shapes)}


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.split("/")[-1])
def test_walking_every_cut_reproduces_the_outputs(path):
    prep = prepare(onnx.load(path))
    model = prep.analysis.model
    feeds = feeds_for(prep)
    n = len(model.graph.node)
    walker = segments.Walker(model, [feeds])
    for cut in sorted({1, n // 3, n // 2, n - 1, n}):
        walker.advance(model, cut)
        assert set(walker.state[0]) == set(segments.live_sets(model)[cut])
    expected = run(model, feeds)
    for out in model.graph.output:
        np.testing.assert_allclose(walker.values(out.name)[0], expected[out.name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", MODELS[:4], ids=lambda p: p.split("/")[-1])
def test_suffix_mask_runner_equals_the_full_one(path):
    prep = prepare(onnx.load(path))
    an = prep.analysis
    feeds = feeds_for(prep)
    made = {o: k for k, node in enumerate(an.model.graph.node) for o in node.output}
    rng = np.random.default_rng(0)
    for g in [g for g in an.groups if g.prunable][-3:]:
        start = min(made[t] for t in g.tensors)
        walker = segments.Walker(an.model, [feeds])
        walker.advance(an.model, start)
        suffix = MaskRunner(an, [g.id], start=start, input_types={k: v.dtype for k, v in walker.state[0].items()})
        masks = [{g.id: (rng.random(g.size) > 0.5).astype(float)} for _ in range(3)]
        full = MaskRunner(an, [g.id]).run(feeds, masks)
        for a, b in zip(full, suffix.run(walker.state[0], masks)):
            np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)


def shape_target_model() -> onnx.ModelProto:
    """Conv-Relu-Conv-Relu-GAP-Reshape-Gemm whose Reshape target is computed from Shape(x) before
    the convs: a tensor whose value holds the batch size stays live across every later cut (as in
    PaddleOCR's recogniser)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(v, k) for k, v in {
        "wa": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
        "wb": rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.3,
        "wg": rng.standard_normal((4, 8)).astype(np.float32) * 0.3,
        "bg": np.zeros(4, np.float32), "i0": np.array([0], np.int64), "m1": np.array([-1], np.int64)}.items()]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
        helper.make_node("Concat", ["n", "m1"], ["target"], axis=0),
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Conv", ["ra", "wb"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["rb"]),
        helper.make_node("GlobalAveragePool", ["rb"], ["p"]),
        helper.make_node("Reshape", ["p", "target"], ["f"]),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1),
    ]
    graph = helper.make_graph(nodes, "shape_target", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_cuts_with_a_live_shape_value_are_not_clean():
    clean = segments.clean_cuts(prepare(shape_target_model()).analysis.model)
    assert clean == [True] + [False] * 10        # the Reshape target is live from node 3 to node 8
    plain = prepare(onnx.load("tests/models/resnet_style.onnx")).analysis.model
    assert all(segments.clean_cuts(plain))       # a plain CNN: only batch-major activations are live


@pytest.mark.parametrize("source", ["tests/models/resnet_style.onnx", "shape_target"])
def test_sensitivity_curves_match_full_model_probes(source):
    # many masks per call repeat the rows; a suffix fed a stale batch size broke here (PaddleOCR rec)
    prep = prepare(shape_target_model() if source == "shape_target" else onnx.load(source))
    an = prep.analysis
    feeds = feeds_for(prep, n=8)
    scores = criteria.score("l1", criteria.ScoreContext(an))
    gids = [g.id for g in an.groups if g.prunable]
    curves, cost = allocate.sensitivity_curves(an, scores, gids, feeds)
    full = MaskRunner(an, gids)
    reference = full.run(feeds, [{}])[0]
    for gid in gids:
        units = an.group_units[gid]
        order = np.argsort(np.where(an.unit_blocked[units], np.inf, scores[gid]), kind="stable")
        mask = np.ones(an.groups[gid].size)
        n = min(int(0.5 * len(mask)), int((~an.unit_blocked[units]).sum()), len(mask) - 1)
        mask[order[:n]] = 0
        expected = full.losses(feeds, [{gid: mask}], reference)[0]
        assert curves[gid][0.5] == pytest.approx(expected, rel=1e-3, abs=1e-7)
    # suffixes cost less than one full pass per probe (where they can start after the input)
    if source != "shape_target":
        assert cost["full_model_passes"] < len(gids) * len(allocate.GRID) * 8


def test_least_squares_walk_equals_prefix_reruns(tmp_path, monkeypatch):
    prep = prepare(onnx.load("tests/models/resnet_style.onnx"))
    an = prep.analysis
    path = tmp_path / "d.npz"
    np.savez(path, **feeds_for(prep, n=32))
    data = CalibData(CalibConfig(str(path), batch_size=8, holdout=0.25), input_specs(prep.original, prep.input_shapes))
    scores = criteria.score("l1", criteria.ScoreContext(an))
    from onnxprune.allocation.select import SelectConfig, select
    plan, _ = select(an, scores, SelectConfig(ratio=0.5))
    removed = plan.removed_units(an)
    pruned = rewrite.apply(an, removed)
    kept = an.kept_channels(removed)
    walked, _ = ls.reconstruct(an.model, pruned, kept, data)
    monkeypatch.setattr(segments, "MEMORY_BUDGET", 0)     # every layer re-runs its prefix instead
    rerun, _ = ls.reconstruct(an.model, pruned, kept, data)
    x = next(data.batches("holdout"))
    a, b = run(walked, x), run(rerun, x)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert not np.allclose(run(pruned, x)[k], a[k])       # it did repair something


def test_walker_refuses_beyond_its_budget():
    prep = prepare(onnx.load("tests/models/resnet_style.onnx"))
    with pytest.raises(segments.OverBudget):
        segments.Walker(prep.analysis.model, [feeds_for(prep)], budget=16)


def test_default_pipeline_on_a_fixed_batch_model(tmp_path):
    """Probes, ensembles and the walk cut their feeds into the model's fixed batch size."""
    from onnxprune.pipeline import prune

    model = onnx.load("tests/models/resnet_style.onnx")
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 4
    for out in model.graph.output:
        d = out.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_value = 4
    path = tmp_path / "fixed.onnx"
    onnx.save(model, path)
    result = prune(str(path), calib="random", calib_samples=24, batch_size=8, target_macs=0.4)
    assert result.verification.valid
    assert result.report["allocation"]["method"] == "sensitivity"
    prep = prepare(str(path))
    data = CalibData(CalibConfig("random", 24), input_specs(prep.original, prep.input_shapes))
    ctx = criteria.ScoreContext(prep.analysis, data=data, options={"ensemble_masks": 16})
    scores = criteria.score("ensemble", ctx)
    assert set(scores) == {g.id for g in prep.analysis.groups if g.prunable}


def test_a_second_probe_spends_at_most_half_the_budget(monkeypatch):
    prep = prepare(onnx.load("tests/models/resnet_style.onnx"))
    an = prep.analysis
    feeds = feeds_for(prep, n=64)
    scores = criteria.score("l1", criteria.ScoreContext(an))
    gids = [g.id for g in an.groups if g.prunable]
    monkeypatch.setattr(allocate, "MIN_PROBE_SAMPLES", 4)
    monkeypatch.setattr(allocate, "PROBE_PASSES", 10 ** 6)       # not binding: every row probed
    full, full_cost = allocate.sensitivity_curves(an, scores, gids, feeds)
    # where the first probe's rows fit half the budget, the second probe repeats it
    assert allocate.sensitivity_curves(an, scores, gids, feeds, second=True) == (full, full_cost)
    per_row = (full_cost["sample_rows"] - 64) / 64       # no binding budget: every row probed
    monkeypatch.setattr(allocate, "PROBE_PASSES", full_cost["full_model_passes"] / 4)   # binds at ~16 rows
    fine, fine_cost = allocate.sensitivity_curves(an, scores, gids, feeds)
    assert fine_cost["repeatable"] is False      # the budget bound the first probe's rows
    coarse, coarse_cost = allocate.sensitivity_curves(an, scores, gids, feeds, second=True)
    fine_rows = int(fine_cost["sample_rows"] / (1 + per_row))
    coarse_rows = int(coarse_cost["sample_rows"] / (1 + per_row * 5 / 9))
    # else every other ratio on half the rows
    assert 14 <= fine_rows <= 18 and coarse_rows == fine_rows // 2
    for gid in gids:
        assert set(coarse[gid]) == set(fine[gid]) == {0.0, *allocate.GRID}
        for odd in (0.2, 0.4, 0.6, 0.8):
            below, above = coarse[gid][round(odd - 0.1, 1)], coarse[gid][round(odd + 0.1, 1)]
            assert coarse[gid][odd] == pytest.approx((below + above) / 2)
