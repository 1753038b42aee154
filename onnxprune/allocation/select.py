"""Selection: from unit scores to a `Plan` (which units of each group are kept).

`ratio` is the fraction of units (channels) removed in each prunable group, the meaning
Torch-Pruning gives `pruning_ratio`: ``floor(ratio * size)`` units go, the lowest-scored first,
blocked units never. With `global_pruning`, one threshold on group-normalised scores
(``score / max score of the group``) removes ``floor(ratio * total)`` units across all groups.
Limits then apply in this order: `max_ratio` (per-group cap), `min_channels` (per-group floor),
`round_to` (kept count rounded up to a multiple; groups smaller than it are left whole).
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import OnnxPruneError
from ..analysis.groups import Analysis

PLAN_SCHEMA = 1


@dataclass(frozen=True)
class SelectConfig:
    """Options of the selection stage (CLI flags of the same names)."""

    ratio: float = 0.5
    global_pruning: bool = False
    max_ratio: float = 1.0
    min_channels: int = 1
    round_to: int = 1
    ignore: tuple[str, ...] = ()
    normalise: bool = True    # global pruning: scale each group's scores by its max (False: scores
                              # already share units across groups, e.g. the joint-mode ensemble)


@dataclass(frozen=True)
class GroupPlan:
    """What happens to one group: `keep` lists kept unit positions (canonical order)."""

    group: int
    name: str
    size: int
    keep: tuple[int, ...]
    note: str = ""

    def to_dict(self) -> dict:
        """Plain-data form (the plan file's entries)."""
        return {"group": self.group, "name": self.name, "size": self.size, "kept": len(self.keep),
                "keep": list(self.keep), "note": self.note}


@dataclass(frozen=True)
class Plan:
    """Which units of every group are kept; round-trips through JSON (`--save-plan`/`--plan`)."""

    groups: tuple[GroupPlan, ...]
    meta: dict = field(default_factory=dict)

    def removed_units(self, analysis: Analysis) -> np.ndarray:
        """Unit ids removed by this plan."""
        removed = []
        for gp in self.groups:
            units = analysis.group_units[gp.group]
            mask = np.ones(len(units), dtype=bool)
            mask[list(gp.keep)] = False
            removed.append(units[mask])
        return np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)

    def to_dict(self) -> dict:
        """Plain-data form with a schema version."""
        return {"schema_version": PLAN_SCHEMA, **self.meta, "groups": [g.to_dict() for g in self.groups]}

    def save(self, path) -> None:
        """Write the plan as JSON."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    @staticmethod
    def load(path, analysis: Analysis) -> "Plan":
        """Read a plan file and check it matches `analysis` (same groups, sizes and blocked units).

        Raises:
            OnnxPruneError: unreadable file, or a plan made for another model.
        """
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise OnnxPruneError(f"cannot read plan {path}: {exc}") from None
        if data.get("schema_version") != PLAN_SCHEMA:
            raise OnnxPruneError(f"plan {path}: unsupported schema_version {data.get('schema_version')}")
        plans = []
        for entry in data.get("groups", []):
            gid = entry.get("group")
            if not isinstance(gid, int) or not 0 <= gid < len(analysis.groups):
                raise OnnxPruneError(f"plan {path}: group {gid} does not exist in this model")
            g = analysis.groups[gid]
            if g.name != entry.get("name") or g.size != entry.get("size"):
                raise OnnxPruneError(f"plan {path}: group {gid} is '{g.name}' with {g.size} channels here, "
                                     f"the plan says '{entry.get('name')}' with {entry.get('size')}: made for another model?")
            keep = sorted(set(int(k) for k in entry.get("keep", [])))
            if not keep or keep[0] < 0 or keep[-1] >= g.size:
                raise OnnxPruneError(f"plan {path}: group {gid} keeps an invalid set of channels")
            blocked = np.flatnonzero(analysis.unit_blocked[analysis.group_units[gid]])
            if set(blocked.tolist()) - set(keep):
                raise OnnxPruneError(f"plan {path}: group {gid} removes channels that cannot be pruned")
            plans.append(GroupPlan(gid, g.name, g.size, tuple(keep), entry.get("note", "")))
        plan = Plan(tuple(plans))
        _ensure_nonempty_tensors(analysis, plan, scores=None)
        return plan


def select(analysis: Analysis, scores: dict[int, np.ndarray], config: SelectConfig,
           counts: dict[int, int] | None = None, notes: dict[int, str] | None = None,
           chooser=None) -> tuple[Plan, list[dict]]:
    """Choose the units to remove.

    Args:
        analysis: the groups.
        scores: importance per unit for each prunable group (higher = keep).
        config: ratio and limits.
        counts: units to remove per group, from an allocator (replaces `ratio`; limits still apply).
        notes: a reason per group for the plan (e.g. the allocator's).
        chooser: function(group id, scores, n_remove) -> positions to remove (filter variety);
            default: the lowest-scored removable units.
    Returns:
        The plan (pruned groups only) and a list of skipped groups with reasons.
    """
    if not (0.0 <= config.ratio < 1.0) or math.isnan(config.ratio):
        raise OnnxPruneError(f"ratio must be in [0, 1), got {config.ratio}")
    skipped = []
    candidates = []
    for g in analysis.groups:
        if not g.prunable:
            skipped.append({"group": g.id, "name": g.name, "reason": "; ".join(g.reasons[:3]) or "not prunable"})
            continue
        pattern = next((p for p in config.ignore if any(fnmatch.fnmatch(s, p) for s in g.sources)), None)
        if pattern:
            skipped.append({"group": g.id, "name": g.name, "reason": f"ignored by --ignore {pattern}"})
            continue
        candidates.append(g)

    removable = {g.id: ~analysis.unit_blocked[analysis.group_units[g.id]] for g in candidates}
    if counts is not None:
        counts = {g.id: counts.get(g.id, 0) for g in candidates}
    elif config.global_pruning:
        counts = _global_counts(candidates, scores, removable, config)
    else:
        counts = {g.id: int(math.floor(config.ratio * g.size + 1e-9)) for g in candidates}

    plans = []
    for g in candidates:
        n_remove = limit_removal(g.size, counts[g.id], int(removable[g.id].sum()), config)
        if n_remove <= 0:
            continue
        if chooser is not None:
            removed = set(int(i) for i in chooser(g.id, scores[g.id], n_remove))
        else:
            s = np.where(removable[g.id], scores[g.id], np.inf)
            removed = set(np.argsort(s, kind="stable")[:n_remove].tolist())
        keep = tuple(i for i in range(g.size) if i not in removed)
        plans.append(GroupPlan(g.id, g.name, g.size, keep, (notes or {}).get(g.id, "")))
    plan = Plan(tuple(plans))
    plan = _ensure_nonempty_tensors(analysis, plan, scores)
    return plan, skipped


def limit_removal(size: int, n_remove: int, removable: int, config: SelectConfig) -> int:
    """How many of a group's `size` units `select` really removes when asked for `n_remove`: at
    most `removable` and `max_ratio`, at least `min_channels` kept, the kept count rounded up to
    a multiple of `round_to` (a group no larger than `round_to` is left whole). Allocators count
    MACs with it, so that a budget they reach is the one the plan removes."""
    n_remove = min(n_remove, removable, int(math.floor(config.max_ratio * size + 1e-9)))
    kept = max(size - n_remove, min(config.min_channels, size))
    if config.round_to > 1:
        if size <= config.round_to:
            return 0
        kept = min(size, int(math.ceil(kept / config.round_to)) * config.round_to)
    return max(0, size - kept)


def _global_counts(candidates, scores, removable, config) -> dict[int, int]:
    entries = []
    for g in candidates:
        s = scores[g.id]
        top = np.max(np.abs(s)) if s.size and config.normalise else 0.0
        norm = s / top if top > 0 else s
        for i in np.flatnonzero(removable[g.id]):
            entries.append((float(norm[i]), g.id))
    total = sum(g.size for g in candidates)
    budget = int(math.floor(config.ratio * total + 1e-9))
    entries.sort(key=lambda e: e[0])
    counts = {g.id: 0 for g in candidates}
    sizes = {g.id: g.size for g in candidates}
    cap = {g.id: min(int(math.floor(config.max_ratio * g.size + 1e-9)), g.size - min(config.min_channels, g.size))
           for g in candidates}
    taken = 0
    for _, gid in entries:
        if taken >= budget:
            break
        if counts[gid] < cap[gid]:
            counts[gid] += 1
            taken += 1
    del sizes
    return counts


def _ensure_nonempty_tensors(analysis: Analysis, plan: Plan, scores) -> Plan:
    """Give back the best unit of any tensor that would lose every channel."""
    groups = {gp.group: gp for gp in plan.groups}
    for _ in range(8):
        kept = analysis.kept_channels(Plan(tuple(groups.values())).removed_units(analysis))
        empty = [name for name, idx in kept.items() if len(idx) == 0]
        if not empty:
            break
        for name in empty:
            for gid, gp in list(groups.items()):
                pos = analysis.positions(gid, name)
                pos = np.unique(pos[pos >= 0])
                if len(pos) == 0:
                    continue
                best = pos[np.argmax(scores[gid][pos])] if scores is not None else pos[0]
                groups[gid] = GroupPlan(gid, gp.name, gp.size, tuple(sorted(set(gp.keep) | {int(best)})),
                                        f"kept one channel so '{name}' is not emptied")
                break
    return Plan(tuple(groups.values()))
