"""Ratio sweeps: the trade-off curve users pick a ratio from.

One analysis, one calibration pass and one set of scores serve every ratio; for each ratio the
model is pruned (uniform allocation), repaired when calibration data is given, and measured:
MACs, parameters, latency on the CPU provider (alternating runs), and held-out fidelity
(accuracy when labels exist).
"""

from __future__ import annotations

import numpy as np

from . import criteria, rewrite
from .analysis import metrics
from .runtime.bench import BenchConfig, bench
from .calibration.calib import CalibConfig
from .errors import OnnxPruneError
from .calibration.stage import calibrate, holdout_metrics
from .pipeline import prepare
from .recovery.sequence import recover
from .report.plots import tradeoff as plot  # noqa: F401  (the sweep's plot, importable from here)
from .allocation.select import SelectConfig, select


class SweepRows(list):
    """The rows of a sweep (a list of dicts), plus `groups`: id, name, size and prunable of every
    channel group, in the order of each row's `kept_channels`, and `holdout`: the held-out
    calibration samples the fidelity columns were measured on (0 without calibration data)."""

    groups: list[dict]
    holdout: int = 0


def parse_ratios(spec: str) -> list[float]:
    """'0.1:0.8:0.1' (start:stop:step, stop included) or '0.3,0.5' -> ratios in [0, 1)."""
    try:
        if ":" in spec:
            start, stop, step = (float(v) for v in spec.split(":"))
            ratios = list(np.round(np.arange(start, stop + step / 2, step), 6))
        else:
            ratios = [float(v) for v in spec.split(",")]
    except ValueError:
        raise OnnxPruneError(f"--ratios '{spec}': expected start:stop:step or a comma-separated list") from None
    if not ratios or any(not 0.0 <= r < 1.0 for r in ratios):
        raise OnnxPruneError(f"--ratios '{spec}': every ratio must be in [0, 1)")
    return [float(r) for r in ratios]


def sweep(model_path: str, ratios: list[float], criterion: str = "l1", calib: CalibConfig | None = None,
          input_shape: dict | None = None, round_to: int = 1, seed: int = 0, latency: bool = True) -> list[dict]:
    """Prune at every ratio and measure; returns one row per ratio, the original first (ratio 0).

    Each row has `kept_channels` (channels per group, in the order of the result's `groups`).
    """
    prep = prepare(model_path, input_shape)
    an = prep.analysis
    if not any(g.prunable for g in an.groups):
        raise OnnxPruneError(f"{model_path}: nothing to prune: every channel group is blocked")
    data, stats, reference = (None, {}, None)
    if calib is not None:
        data, stats, reference = calibrate(prep, calib, criterion, recover=True, variety="off")
    ctx = criteria.ScoreContext(an, seed=seed, stats=stats, data=data, options={"ratio": max(ratios)})
    if criterion not in criteria.names():
        raise OnnxPruneError(f"unknown criterion '{criterion}'; choose from {', '.join(criteria.names())}")
    scores = criteria.score(criterion, ctx)
    base = metrics.stats(prep.original, an.shapes)
    models, rows = [], []
    for ratio in ratios:
        plan, _ = select(an, scores, SelectConfig(ratio=ratio, round_to=round_to))
        removed = plan.removed_units(an)
        pruned = rewrite.apply(an, removed)
        if reference is not None and len(removed):
            pruned, _, _ = recover(an, removed, pruned, data, stats, reference)
        macs = metrics.MacModel(an).macs(removed)
        kept = {gp.group: len(gp.keep) for gp in plan.groups}
        row = {"ratio": ratio, "macs_kept": macs / base.macs if base.macs else 1.0,
               "params_kept": metrics.count_params(pruned) / base.params if base.params else 1.0,
               "kept_channels": [kept.get(g.id, g.size) for g in an.groups]}
        if reference is not None:
            out = next(iter(holdout_metrics(pruned, data, reference).values()))
            row.update({k: out[k] for k in ("accuracy", "accuracy_original", "top1_agreement", "kl", "cosine")
                        if k in out})
        rows.append(row)
        models.append(pruned)
    original = {"ratio": 0.0, "macs_kept": 1.0, "params_kept": 1.0, "kept_channels": [g.size for g in an.groups]}
    if reference is not None:
        original.update(top1_agreement=1.0, kl=0.0, cosine=1.0)
        if "accuracy_original" in rows[0]:
            original["accuracy"] = rows[0]["accuracy_original"]
    rows.insert(0, original)
    if latency:
        timing = bench([prep.original] + models, BenchConfig(input_shapes=input_shape or {}, warmup=3, repeat=15))
        medians = [t.median_ms for t in timing.timings]
        for row, median in zip(rows, medians):
            row["latency_ms"] = median
            row["speedup"] = medians[0] / median if median else None
    result = SweepRows(rows)
    result.holdout = data.size("holdout") if data is not None else 0
    result.groups = [{"id": g.id, "name": g.name, "size": g.size, "prunable": g.prunable} for g in an.groups]
    return result
