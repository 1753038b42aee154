"""Report building: the numbers of a pruning run as plain data (what `render` shows and
`--report` writes)."""

from __future__ import annotations

import os

from ..allocation.select import Plan
from ..analysis import graph, metrics
from ..analysis.groups import Analysis

REPORT_SCHEMA = 1


def group_rows(an: Analysis, plan: Plan) -> list[dict]:
    """One report row per channel group: its analysis and how many units the plan keeps."""
    kept = {gp.group: len(gp.keep) for gp in plan.groups}
    rows = []
    for g in an.groups:
        rows.append({**g.to_dict(), "kept": kept.get(g.id, g.size)})
    return rows


def prune_report(run) -> dict:
    """The report of a pruning run (`pipeline.Run`): options, sizes before and after, groups,
    verification, scoring, allocation, recovery, held-out metrics, seconds and image passes."""
    from ..verification.evaluate import loss_names

    config, prep, an, data = run.config, run.prep, run.prep.analysis, run.data
    after = metrics.stats(run.pruned, graph.infer_shapes(run.pruned, prep.input_shapes))
    held = run.holdout
    before, c, plan = run.before, config.calibration, config.selection.plan
    options = {**config.to_dict(), "round_to_source": run.round_to_source,
               "finetune": run.tuning.to_dict() if run.tuning else None}
    return {
        "schema_version": REPORT_SCHEMA,
        "model": prep.source,
        "criterion": config.scoring.criterion if plan is None else f"plan:{os.path.basename(str(plan))}",
        "ratio": config.budget.ratio,
        "target_macs": config.budget.target_macs,
        "target_latency": config.budget.target_latency,
        "preset": config.scoring.preset,
        "options": options,
        "input_shapes": prep.input_shapes,
        "folded": prep.folded,
        "before": before.to_dict(),
        "after": after.to_dict(),
        "macs_kept": after.macs / before.macs if before.macs else 1.0,
        "params_kept": after.params / before.params if before.params else 1.0,
        "groups": group_rows(an, run.plan),
        "skipped": run.skipped,
        "verification": run.check.to_dict() if run.check else None,
        "fidelity": run.fidelity,
        "approximate": run.approximate,
        "scoring": {k: v for k, v in run.ctx.extras.items() if k != "ranks"},
        "allocation": run.allocation,
        "latency_search": run.latency_search,
        "recovery": run.steps,
        "holdout": held,
        "losses": loss_names(run.reference, data.split_labels("holdout")) if run.reference is not None else None,
        "calibration": {"path": c.calib, "samples": data.size("all"), "holdout": data.size("holdout"),
                        "mean": list(c.mean), "std": list(c.std), "scale": c.scale,
                        "synthetic": getattr(data, "synthetic", None)} if data else None,
        "notes": run.ctx.notes,
        "seconds": {k: round(v, 3) for k, v in run.timings.items()},
        "forward_passes": {**{k: round(v, 1) for k, v in run.passes.items() if v},
                           "total": round(sum(run.passes.values()), 1)},
        "workers": run.workers,
    }
