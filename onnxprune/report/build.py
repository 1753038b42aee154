"""Report building: the numbers of a pruning run as plain data (what `render` shows and
`--report` writes)."""

from __future__ import annotations

from ..allocation.allocator import BLEND_FITNESS_SAMPLES
from ..allocation.select import Plan
from ..analysis.groups import Analysis

REPORT_SCHEMA = 1


def scoring_passes(ctx, criterion: str, allocation: dict) -> dict:
    """Image passes spent scoring and allocating, from what the criteria and allocators report."""
    passes = {}
    data = ctx.data
    pool = (ctx.extras.get("blend") or {}).get("pool", ())
    if data is not None and (criterion == "thinet" or "thinet" in pool):
        from ..criteria.thinet import MAX_IMAGES
        passes["thinet"] = min(MAX_IMAGES, data.size("score"))
    for name in ("ensemble", "interactions"):
        if (ctx.extras.get(name) or {}).get("forward_samples"):
            passes[name] = ctx.extras[name]["forward_samples"]    # suffix rows, counted as full passes
    search = (ctx.extras.get("blend") or {}).get("search")
    if search and data is not None:
        split = "holdout" if data.size("holdout") else "score"
        passes["blend_search"] = search["evaluations"] * min(BLEND_FITNESS_SAMPLES, data.size(split))
    cost = allocation.get("cost")
    if cost:
        passes["sensitivity"] = cost["full_model_passes"]
    if allocation.get("order_check"):
        passes["order_check"] = allocation["order_check"]["passes"]
    return passes

def group_rows(an: Analysis, plan: Plan) -> list[dict]:
    """One report row per channel group: its analysis and how many units the plan keeps."""
    kept = {gp.group: len(gp.keep) for gp in plan.groups}
    rows = []
    for g in an.groups:
        rows.append({**g.to_dict(), "kept": kept.get(g.id, g.size)})
    return rows
