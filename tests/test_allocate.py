"""The sensitivity allocator's incremental greedy equals the plain greedy it speeds up."""

import math

import numpy as np
import onnx
import pytest

from onnxprune.allocation import allocate as al
from onnxprune import criteria
from onnxprune.analysis.metrics import MacModel
from onnxprune.pipeline import prepare
from onnxprune.allocation.select import SelectConfig, limit_removal


def plain_greedy(an, scores, config, macs, target, curves):
    """criteria.md §8.3 as written: every step re-evaluates every group."""
    gids = list(curves)
    steps = (0.0,) + al.GRID
    level = {g: 0 for g in gids}
    cap = {g: min(config.max_ratio, 1.0 - min(config.min_channels, an.groups[g].size) / an.groups[g].size)
           for g in gids}

    def count(g, lv):     # what select removes for the grid level (round_to, min_channels)
        size = an.groups[g].size
        return limit_removal(size, int(math.floor(steps[lv] * size + 1e-9)),
                             int((~an.unit_blocked[an.group_units[g]]).sum()), config)

    def counts():
        return {g: count(g, level[g]) for g in gids}

    def removed(c):
        return 1.0 - macs.macs(al.removed_by(an, scores, c)) / macs.total

    current = removed(counts())
    while current < target:
        best, best_gain = None, -1.0
        up = {}
        for g in gids:
            now = counts()[g]
            # the next grid step that removes more channels (small groups skip steps that do not)
            up[g] = next((lv for lv in range(level[g] + 1, len(steps)) if steps[lv] <= cap[g] + 1e-9
                          and count(g, lv) > now), None)
            if up[g] is None:
                continue
            old, level[g] = level[g], up[g]
            frac = removed(counts())
            level[g] = old
            d_loss = max(curves[g][steps[up[g]]] - curves[g][steps[level[g]]], 0.0)
            if frac > current and (frac - current) / (d_loss + 1e-8) > best_gain:
                best, best_gain = g, (frac - current) / (d_loss + 1e-8)
        if best is None:
            break
        level[best] = up[best]
        current = removed(counts())
    return counts()


@pytest.mark.parametrize("name", ["resnet_style", "densenet_style", "yolo_style", "shufflenet_style",
                                  "inception_style", "mobilenetv3_style"])
@pytest.mark.parametrize("target", [0.3, 0.6])
@pytest.mark.parametrize("round_to", [1, 8])
def test_incremental_greedy_equals_the_plain_one(name, target, round_to):
    an = prepare(onnx.load(f"tests/models/{name}.onnx")).analysis
    scores = criteria.score("l1", criteria.ScoreContext(an))
    macs = MacModel(an)
    rng = np.random.default_rng(len(name))
    curves = {g.id: {r: r * r * rng.random() for r in (0.0,) + al.GRID} for g in an.groups if g.prunable}
    config = SelectConfig(max_ratio=0.8, round_to=round_to)
    counts, _ = al.sensitivity_counts(an, scores, config, macs, target, curves)
    assert counts == plain_greedy(an, scores, config, macs, target, curves)


def test_groups_of_fewer_than_ten_channels_reach_the_budget():
    """A grid step of 0.1 removes no channel of an 8-channel group: the greedy must step over it
    (it used to stop there and remove nothing at all)."""
    from test_seed_methods import dead_large_half_model

    an = prepare(dead_large_half_model()).analysis
    scores = criteria.score("l1", criteria.ScoreContext(an))
    curves = {g.id: {r: r for r in (0.0,) + al.GRID} for g in an.groups if g.prunable}
    assert [an.groups[g].size for g in curves] == [8]
    counts, reasons = al.sensitivity_counts(an, scores, SelectConfig(), MacModel(an), 0.5, curves)
    assert list(counts.values()) == [4]
    assert counts == plain_greedy(an, scores, SelectConfig(), MacModel(an), 0.5, curves)


@pytest.mark.parametrize("allocate", ["sensitivity", "redundancy"])
@pytest.mark.parametrize("round_to", [8, 16])
def test_rounded_widths_still_reach_the_mac_budget(allocate, round_to):
    """The allocators count MACs with the widths `select` will round to: `--round-to 16` on the
    Fashion-MNIST demo used to leave 0.62 of the MACs at `--target-macs 0.5`."""
    import onnxprune

    result = onnxprune.prune("models/fmnist_resnet.onnx", criterion="l1", target_macs=0.5, round_to=round_to,
                             calib="calib_data/fmnist_calib.npz", calib_samples=64, allocate=allocate,
                             recover=False, verify=False)
    assert 0.3 < result.report["macs_kept"] <= 0.5     # reached; whole steps of 16 channels may overshoot
    for g in result.report["groups"]:
        if g["kept"] < g["size"]:
            assert g["kept"] % round_to == 0


def test_an_unreachable_budget_is_said(tmp_path):
    """Widths rounded to 128 leave every group of the demo model whole: the report says the
    budget was not reached instead of returning the model unpruned in silence."""
    import onnxprune

    result = onnxprune.prune("models/fmnist_resnet.onnx", criterion="l1", target_macs=0.5, round_to=128,
                             calib="calib_data/fmnist_calib.npz", calib_samples=64, recover=False, verify=False)
    assert result.report["macs_kept"] > 0.5
    assert any("MAC budget was not reached" in n for n in result.report["notes"])
