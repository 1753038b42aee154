"""Per-group prune ratios (criteria.md §8) under a MAC budget.

- `uniform`: one ratio everywhere; with a MAC target, the ratio is found by bisection.
- `sensitivity` (Li et al. 2017, solved greedily for MACs): for every group and every ratio on the
  grid 0.1..0.9, mask the group's lowest-scored units only and record the held-out loss
  increase ``dL_l(rho)``. Starting from nothing removed, repeatedly raise by one grid step the
  group with the largest ``dMACs / (max(dL_l(next) - dL_l(now), 0) + 1e-8)`` until the MACs
  removed reach the target. A step that lowers the loss is free; a step that removes no more
  channels (0.1 of a group of fewer than 10, or a step that `round_to` rounds away) is stepped over.
Counts are taken as `select` applies them (`limit_removal`), so a `--round-to` does not leave the
budget short.
The MAC target is `target_macs` (fraction of MACs to remove), or else the MACs a uniform `ratio`
would remove, so `--ratio` and the sensitivity allocator spend the same budget differently.
"""

from __future__ import annotations

import math

import numpy as np

from ..verification.evaluate import Reference, fidelity_loss
from ..analysis.groups import Analysis
from ..runtime.masking import fixed_batch, group_starts, outputs_of, probes, suffix_states
from ..analysis.metrics import MacModel
from ..progress import iterate as stage_iterate
from .select import SelectConfig, limit_removal, select

GRID = tuple(round(0.1 * k, 1) for k in range(1, 10))
PROBE_PASSES = 1024       # sensitivity budget, in full-network forward passes of one image ...
MIN_PROBE_SAMPLES = 16    # ... but never fewer probe images than this


def removed_by(analysis: Analysis, scores: dict[int, np.ndarray], counts: dict[int, int]) -> np.ndarray:
    """Units removed when each group drops its `counts[g]` lowest-scored removable units."""
    parts = []
    for gid, n in counts.items():
        if n <= 0:
            continue
        units = analysis.group_units[gid]
        s = np.where(analysis.unit_blocked[units], np.inf, scores[gid])
        parts.append(units[np.argsort(s, kind="stable")[:n]])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def uniform_ratio_for(analysis: Analysis, scores, config: SelectConfig, macs: MacModel, target: float) -> float:
    """The smallest uniform ratio whose plan removes at least `target` of the MACs (bisection)."""
    lo, hi = 0.0, 0.99
    for _ in range(20):
        mid = (lo + hi) / 2
        plan, _ = select(analysis, scores, SelectConfig(**{**config.__dict__, "ratio": mid}))
        if 1.0 - macs.macs(plan.removed_units(analysis)) / macs.total >= target:
            hi = mid
        else:
            lo = mid
    return hi


def budget(analysis: Analysis, scores, config: SelectConfig, macs: MacModel, target_macs: float | None) -> float:
    """Fraction of MACs to remove: `target_macs`, or what the uniform `config.ratio` removes."""
    if target_macs is not None:
        return target_macs
    plan, _ = select(analysis, scores, config)
    return 1.0 - macs.macs(plan.removed_units(analysis)) / macs.total


def sensitivity_curves(analysis: Analysis, scores, group_ids, feeds: dict[str, np.ndarray],
                       labels=None, second: bool = False) -> tuple[dict[int, dict[float, float]], dict]:
    """``dL_l(rho)`` for every group on the grid: the loss when only group l loses its lowest `rho`.

    A `second` probe (the order check's winner, whose counts are kept only if they repair to a
    lower held-out loss) repeats the first where the first spent at most half the budget (it ran
    out of rows), else it spends half the budget: every other ratio (0.1, 0.3, ..., 0.9; those
    between interpolated linearly) on the rows half the budget allows, at least half the minimum.

    The budget: the bundled Fashion-MNIST model (31.5 full passes per probed image) gets 32 rows.
    At 4096 passes (128 rows) and the second probe repeated in full, the default at --ratio 0.5
    spent 17,095 image passes in all for 88.10% test accuracy (10k, seed 0); at 1024 with the
    half-budget second probe, 5,404 passes for 88.76% (benchmarks/passes.py; docs/results.md,
    "Cost and scale", has three seeds). Earlier figures
    on PaddleOCR's recogniser, measured at the larger budget: a second probe with 16 held-out rows
    and interpolated curves gave counts that repaired to 0.49 instead of 0.39, and with 40, 18
    rows gave counts that lost to the blend's.

    Groups are probed in node order on suffix sub-models (onnxprune/analysis/segments.py): the unmasked
    tensors at the cut before a group's first producer are carried forward once, and only the
    nodes from that cut on run for the group's masks. The probes use the first rows of `feeds`,
    as many as `PROBE_PASSES` allows (suffix runs counted by their share of the MACs), at least
    `MIN_PROBE_SAMPLES`.
    Returns:
        The curves, and the cost: sample rows run and their share of the network's MACs.
    """
    model = analysis.model
    start = group_starts(analysis, group_ids)
    node_macs, _ = _node_mac_shares(analysis)
    # as many probe images as the budget allows (at least MIN_PROBE_SAMPLES)
    per_image = len(GRID) * sum(float(node_macs[start[gid]:].sum()) for gid in group_ids)
    available = len(next(iter(feeds.values())))
    rows = min(available, max(MIN_PROBE_SAMPLES, int(PROBE_PASSES / max(per_image, 1e-9))))
    grid = GRID
    repeatable = rows * per_image <= PROBE_PASSES / 2
    if second and not repeatable:
        # rows budgeted on the whole grid's cost: the coarse grid spends fewer passes, not more rows
        grid = GRID[::2]
        rows = min(available, max(MIN_PROBE_SAMPLES // 2, int(PROBE_PASSES / 2 / max(per_image, 1e-9))))
    batch = fixed_batch(model)
    rows = max(rows - rows % batch, batch) if batch else rows
    feeds = {k: v[:rows] for k, v in feeds.items()}
    labels = None if labels is None else labels[:rows]
    reference = Reference.of(analysis, outputs_of(model, feeds))
    base = float(fidelity_loss(reference, reference, labels))
    # the reference run; `repeatable`: a second probe would repeat this one (the order check reads it)
    cost = {"sample_rows": rows, "probe_rows": rows, "full_model_passes": float(rows), "repeatable": bool(repeatable)}
    curves = {}
    label = "sensitivity probes (groups)" if not second else "sensitivity probes again (groups)"
    def grid_masks(gid):
        size = analysis.groups[gid].size
        units = analysis.group_units[gid]
        order = np.argsort(np.where(analysis.unit_blocked[units], np.inf, scores[gid]), kind="stable")
        removable = int((~analysis.unit_blocked[units]).sum())
        masks = []
        for rho in grid:
            n = min(int(math.floor(rho * size + 1e-9)), removable, size - 1)
            mask = np.ones(size)
            mask[order[:n]] = 0.0
            masks.append({gid: mask})
        return masks

    # the groups' probes are independent: the pool (--workers, --ray) runs them, results in group order
    tasks = ((gid, at, state, grid_masks(gid)) for gid, at, state in
             stage_iterate(suffix_states(analysis, group_ids, feeds, start), label, len(group_ids)))
    for gid, losses, samples in probes(tasks, (analysis, reference, labels), label):
        curve = {0.0: 0.0, **{rho: float(loss) - base for rho, loss in zip(grid, losses)}}
        if grid != GRID:
            known = sorted(curve)
            curve = {rho: float(np.interp(rho, known, [curve[k] for k in known])) for rho in (0.0,) + GRID}
        curves[gid] = curve
        cost["sample_rows"] += samples
        cost["full_model_passes"] += samples * float(node_macs[start[gid]:].sum())
    cost["full_model_passes"] = round(cost["full_model_passes"], 1)
    return curves, cost


def _node_mac_shares(analysis: Analysis) -> tuple[np.ndarray, float]:
    """Each node's share of the network's MACs (uniform when the model has none), and their total."""
    from ..analysis.metrics import node_macs

    per_node = node_macs(analysis.model, analysis.shapes)
    macs = np.array([per_node.get(node.name or node.output[0], 0) for node in analysis.model.graph.node],
                    dtype=np.float64)
    total = float(macs.sum())
    return (macs / total if total > 0 else np.full(len(macs), 1.0 / max(len(macs), 1))), total


def _applied_counts(analysis: Analysis, gids, config: SelectConfig):
    """function(group id, ratio) -> the units `select` removes for that ratio of the group (after
    round_to, min_channels, max_ratio and blocked units), so that a budget the allocators reach
    is the one the plan removes."""
    removable = {gid: int((~analysis.unit_blocked[analysis.group_units[gid]]).sum()) for gid in gids}

    def applied(gid: int, ratio: float) -> int:
        size = analysis.groups[gid].size
        return limit_removal(size, int(math.floor(ratio * size + 1e-9)), removable[gid], config)

    return applied


def sensitivity_counts(analysis: Analysis, scores, config: SelectConfig, macs: MacModel, target: float,
                       curves: dict[int, dict[float, float]]) -> tuple[dict[int, int], dict[int, str]]:
    """Greedy per-group removal counts that reach `target` MACs removed; with a reason per group."""
    gids = list(curves)
    level = {gid: 0 for gid in gids}                      # index into (0.0,) + GRID
    steps = (0.0,) + GRID
    cap = {gid: min(config.max_ratio, 1.0 - min(config.min_channels, analysis.groups[gid].size)
                    / analysis.groups[gid].size) for gid in gids}
    applied = _applied_counts(analysis, gids, config)

    def count_at(gid, lvl):
        return applied(gid, steps[lvl])

    def counts_now():
        return {gid: count_at(gid, level[gid]) for gid in gids}

    def removed_fraction(counts):
        return 1.0 - macs.macs(removed_by(analysis, scores, counts)) / macs.total

    def step_up(gid):
        """The next grid level that removes more of `gid` (None when none is allowed): in a group
        of fewer than 10 channels some steps remove no more channels than the one before."""
        lvl = level[gid] + 1
        while lvl < len(steps) and steps[lvl] <= cap[gid] + 1e-9:
            if count_at(gid, lvl) > count_at(gid, level[gid]):
                return lvl
            lvl += 1
        return None

    def gained(gid):
        """Extra fraction of MACs removed if `gid` went one step up (None when it cannot)."""
        up = step_up(gid)
        if up is None:
            return None
        old, level[gid] = level[gid], up
        frac = removed_fraction(counts_now())
        level[gid] = old
        return frac - current

    # what raising a group gains changes only when a group sharing a counted node with it moves,
    # so after each step only the neighbours of the raised group are re-evaluated
    neighbours = _mac_neighbours(analysis, macs, gids)
    current = removed_fraction(counts_now())
    gain_of = {gid: gained(gid) for gid in gids}
    while current < target:
        best, best_gain = None, -1.0
        for gid in gids:
            d_macs = gain_of[gid]
            if d_macs is None:
                continue
            d_loss = max(curves[gid][steps[step_up(gid)]] - curves[gid][steps[level[gid]]], 0.0)
            gain = d_macs / (d_loss + 1e-8)
            if d_macs > 0 and gain > best_gain:
                best, best_gain = gid, gain
        if best is None:
            break
        level[best] = step_up(best)
        current = removed_fraction(counts_now())
        for gid in neighbours[best]:
            gain_of[gid] = gained(gid)
    # the loss is the probe's at the grid ratio; the count is what select removes (after round_to)
    reasons = {gid: f"sensitivity: {count_at(gid, level[gid])} of {analysis.groups[gid].size} removed, grid ratio "
                    f"{steps[level[gid]]:.1f} (held-out loss +{curves[gid][steps[level[gid]]]:.3g})" for gid in gids}
    return counts_now(), reasons


def _mac_neighbours(analysis: Analysis, macs: MacModel, gids) -> dict[int, set[int]]:
    """For each group, the groups (itself included) that share a counted node's MACs with it."""
    unit_group = np.full(len(analysis.unit_blocked), -1)
    for gid in gids:
        unit_group[analysis.group_units[gid]] = gid

    def groups_of(name):
        if not name:
            return set()
        t = analysis.tensors[name]
        return set(np.unique(unit_group[analysis.unit_of[t.base:t.base + t.size]]).tolist()) - {-1}

    neighbours = {gid: {gid} for gid in gids}
    for _, ins, outs in macs.terms:
        touch = groups_of(ins) | groups_of(outs)
        for gid in touch:
            neighbours[gid] |= touch
    return neighbours


def scaled_counts(analysis: Analysis, scores, config: SelectConfig, macs: MacModel, target: float,
                  signal: dict[int, float], label: str) -> tuple[dict[int, int], dict[int, str]]:
    """Ratios ``rho_l = clip(kappa * signal_l, 0, cap_l)`` with kappa found by bisection for `target` MACs."""
    caps = {gid: min(config.max_ratio, 0.9, 1.0 - min(config.min_channels, analysis.groups[gid].size)
                     / analysis.groups[gid].size) for gid in signal}

    def ratios(kappa):
        return {gid: float(np.clip(kappa * s, 0.0, caps[gid])) for gid, s in signal.items()}

    applied = _applied_counts(analysis, list(signal), config)

    def counts(kappa):
        return {gid: applied(gid, r) for gid, r in ratios(kappa).items()}

    def removed(kappa):
        return 1.0 - macs.macs(removed_by(analysis, scores, counts(kappa))) / macs.total

    lo, hi = 0.0, 1.0
    while removed(hi) < target and hi < 1e6:
        hi *= 2
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if removed(mid) >= target else (mid, hi)
    final = ratios(hi)
    final_counts = counts(hi)
    return final_counts, {gid: f"{label}: {final_counts[gid]} of {analysis.groups[gid].size} removed, ratio "
                               f"{final[gid]:.2f} before limits (signal {signal[gid]:.3g})" for gid in signal}


def utilization_signal(utilization: dict[int, float]) -> dict[int, float]:
    """SNPFI rule: groups whose units act independently (low U) are pruned harder, ``mean U / U_l``."""
    u = {gid: max(val, 1e-3) for gid, val in utilization.items()}
    mean = float(np.mean(list(u.values()))) if u else 1.0
    return {gid: mean / val for gid, val in u.items()}


def redundancy_signal(redundant: dict[int, float]) -> dict[int, float]:
    """Functional redundancy: groups with more duplicate filters are pruned harder (``r_l + 0.05``)."""
    return {gid: val + 0.05 for gid, val in redundant.items()}
