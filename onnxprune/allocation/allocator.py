"""The allocation stage: score every prunable group, decide per-group removal counts, choose the units.

`Allocation` does its expensive work (sensitivity curves, utilization or redundancy signals) once;
`score_and_select` runs the criterion, the allocator, the order check (`order_check`) or the latency
search (`latency.select_for_latency`), and returns the plan.
"""

from __future__ import annotations

import fnmatch

import numpy as np

from .. import criteria, progress
from ..analysis.groups import Analysis
from ..calibration.calib import CalibData
from ..errors import OnnxPruneError
from ..runtime.masking import MaskRunner
from ..verification.evaluate import Reference
from . import allocate as alloc
from .latency import select_for_latency
from .order_check import candidate_orders, check_orders
from .select import Plan, SelectConfig, select
from ..analysis.metrics import MacModel

BLEND_FITNESS_SAMPLES = 128   # held-out images behind each fitness evaluation of the blend search


def score_and_select(ctx, criterion: str, config: SelectConfig, allocate, target_macs, variety: str,
                      target_latency: float | None = None, meter=None, reference=None, recover: bool = True,
                      question_variety: bool = False) -> tuple:
    """Score every prunable group with `criterion`, allocate per-group counts, choose the units.

    `reference` (the original's held-out outputs), `recover` and `question_variety` (the variety
    was defaulted: the order check may turn it off) are what the order check needs.

    With `target_latency`, the MAC budget is searched (`onnxprune.allocation.latency`), timing candidates with
    `meter`; the search is returned as ``allocation["latency_search"]``.
    """
    an, data = ctx.analysis, ctx.data
    if criterion not in criteria.names():
        raise OnnxPruneError(f"unknown criterion '{criterion}'; choose from {', '.join(criteria.names())}")
    if ctx.options.get("blend_search") and criterion == "blend" and data is not None:
        ctx.options["blend_fitness"] = blend_fitness(an, data, config, target_macs)
    with progress.stage(f"scoring ({criterion})"):
        scores = criteria.score(criterion, ctx)
    chooser = variety_chooser(an, ctx.stats, variety) if variety != "off" else None
    if target_latency is None:
        chosen, skipped, allocation = allocate_plan(an, scores, config, allocate, target_macs, criterion, data, ctx,
                                                chooser, reference, recover, question_variety)
    else:
        allocator = Allocation(an, scores, config, allocate, criterion, data, ctx, chooser)
        chosen, skipped, allocation = select_for_latency(an, allocator, target_latency, meter)
    dropped = variety != "off" and (allocation.get("order_check") or {}).get("variety") == "off"
    allocation["variety"] = "off (order check)" if dropped else variety
    return chosen, skipped, allocation


def blend_fitness(an: Analysis, data: CalibData, config: SelectConfig, target_macs):
    """Fitness of a blended order: minus the held-out loss of the masked network at uniform counts."""
    gids = [g.id for g in an.groups if g.prunable]
    ratio = config.ratio
    if target_macs is not None:
        l1 = criteria.score("l1", criteria.ScoreContext(an))
        ratio = alloc.uniform_ratio_for(an, l1, config, MacModel(an), target_macs)
    counts = {gid: int(ratio * an.groups[gid].size) for gid in gids}
    runner = MaskRunner(an, gids)
    split = "holdout" if data.size("holdout") else "score"
    feeds = next(data.batches(split, BLEND_FITNESS_SAMPLES))
    reference = Reference.of(an, runner.run(feeds, [{}])[0])

    def fitness(order: dict[int, np.ndarray]) -> float:
        masks = {}
        for gid in gids:
            units = an.group_units[gid]
            mask = np.ones(len(units))
            s = np.where(an.unit_blocked[units], np.inf, order[gid])
            mask[np.argsort(s, kind="stable")[:counts[gid]]] = 0.0
            masks[gid] = mask
        return -float(runner.losses(feeds, [masks], reference)[0])

    return fitness


def variety_chooser(an: Analysis, stats: dict, mode: str):
    """A selection chooser that keeps filter variety (onnxprune/criteria/variety.py).

    The similarity matrix of a group depends on the group only: it is computed once and reused
    (the latency search selects many times with the same chooser)."""
    from ..criteria import variety as var

    if mode not in ("cluster", "gate", "soft"):
        raise OnnxPruneError(f"unknown --variety '{mode}'; choose cluster, gate, soft or off")
    similarity = {}

    def choose(gid, scores, n_remove):
        if gid not in similarity:
            similarity[gid] = var.similarity(var.unit_descriptors(an, gid, stats))
        return var.choose(mode, similarity[gid], scores, n_remove, an.unit_blocked[an.group_units[gid]])

    return choose


class Allocation:
    """An allocator set up once: its expensive work (sensitivity curves from masked forward passes,
    utilization or redundancy signals) is done in the constructor; `counts_for` and `plan_for`
    then give per-group counts and the plan for any MAC budget without forward passes (the
    latency search calls them once per candidate budget)."""

    def __init__(self, an: Analysis, scores, config: SelectConfig, method, criterion, data, ctx, chooser=None):
        # with calibration data, sensitivity for every criterion: uniform ratios halve the heads of
        # dense predictors (PaddleOCR det: mean_act IoU 0.04 uniform, 0.89 with sensitivity)
        method = method or ("global" if config.global_pruning else "sensitivity" if data is not None else "uniform")
        if method == "sensitivity" and data is None:
            raise OnnxPruneError("--allocate sensitivity needs calibration data: give --calib PATH")
        if method not in ("uniform", "global", "sensitivity", "utilization", "redundancy"):
            raise OnnxPruneError(f"unknown allocator '{method}'; choose uniform, global, sensitivity, "
                                 f"utilization or redundancy")
        if method in ("utilization", "redundancy") and data is None:
            raise OnnxPruneError(f"--allocate {method} needs calibration data: give --calib PATH")
        if method == "global" or config.global_pruning:
            # scores in shared units (joint-mode ensemble) are compared as they are, not per-group scaled
            shared = bool((ctx.extras.get("ensemble") or {}).get("shared_scale"))
            config = SelectConfig(**{**config.__dict__, "global_pruning": True, "normalise": not shared})
        self.an, self.scores, self.config, self.method, self.chooser = an, scores, config, method, chooser
        self.macs = MacModel(an)
        self.info = {"method": method}          # what does not depend on the budget
        self.signal = self.curves = None
        if method == "utilization":
            from ..criteria.interactions import games
            self.signal = alloc.utilization_signal({gid: g["utilization"] for gid, g in games(ctx).items()})
        elif method == "redundancy":
            from ..criteria import variety as var
            self.signal = alloc.redundancy_signal({
                g.id: 1.0 - len(set(var.functional_clusters(var.similarity(var.unit_descriptors(an, g.id, ctx.stats)))))
                / g.size for g in an.groups if g.prunable})
        elif method == "sensitivity":
            self.data = data
            self.curves, cost = self.probe(scores)
            self.info.update(forward_samples=cost["sample_rows"], cost=cost)
        if self.signal is not None:
            self.info["signal"] = {str(k): round(v, 4) for k, v in self.signal.items()}

    def probe(self, scores, second: bool = False) -> tuple[dict, dict]:
        """(curves, cost): the sensitivity curves of every group pruned in the order of `scores`
        (masked forward passes on the held-out split, or the scoring split without one; `second`:
        repeated or on half the budget, see allocate.sensitivity_curves). The counts come from `self.curves`."""
        an, config, data = self.an, self.config, self.data
        gids = [g.id for g in an.groups if g.prunable and not any(
            fnmatch.fnmatch(s, p) for p in config.ignore for s in g.sources)]
        feeds = next(data.batches("holdout", 256)) if data.size("holdout") else next(data.batches("score", 256))
        return alloc.sensitivity_curves(an, scores, gids, feeds, second=second)

    def counts_for(self, target_macs: float | None) -> tuple[SelectConfig, dict | None, dict | None, dict]:
        """Per-group removal counts for a MAC budget (the fraction of MACs to remove; None: what
        `config.ratio` removes). Cheap: no forward passes.

        Returns:
            (the selection config to use, counts per group or None to let `select` apply the
            config's ratio, a reason per group or None, budget-dependent report entries).
        """
        an, scores, config, macs = self.an, self.scores, self.config, self.macs
        if self.method in ("uniform", "global"):
            if target_macs is None:
                return config, None, None, {}
            ratio = alloc.uniform_ratio_for(an, scores, config, macs, target_macs)
            return SelectConfig(**{**config.__dict__, "ratio": ratio}), None, None, {"ratio": round(ratio, 4)}
        target = alloc.budget(an, scores, config, macs, target_macs)
        if self.method == "sensitivity":
            counts, reasons = alloc.sensitivity_counts(an, scores, config, macs, target, self.curves)
        else:
            counts, reasons = alloc.scaled_counts(an, scores, config, macs, target, self.signal, self.method)
        return config, counts, reasons, {"target": round(target, 4)}

    def plan_for(self, target_macs: float | None) -> tuple[Plan, list[dict], dict]:
        """The plan for a MAC budget: (plan, skipped groups, the allocation's report entries)."""
        config, counts, reasons, extra = self.counts_for(target_macs)
        plan, skipped = select(self.an, self.scores, config, counts=counts, notes=reasons, chooser=self.chooser)
        info = {**self.info, **extra}
        if self.curves is not None:      # the curves the counts came from
            info["curves"] = {str(g): {str(k): round(v, 5) for k, v in c.items()} for g, c in self.curves.items()}
        info["macs_removed"] = (round(1.0 - self.macs.macs(plan.removed_units(self.an)) / self.macs.total, 4)
                                if self.macs.total else 0.0)
        return plan, skipped, info


def allocate_plan(an: Analysis, scores, config: SelectConfig, method, target_macs, criterion, data, ctx,
              chooser=None, reference=None, recover: bool = True, question_variety: bool = False) -> tuple:
    """Per-group removal counts from the chosen allocator (and the order check), then the plan."""
    if target_macs is not None and not 0.0 < target_macs < 1.0:
        raise OnnxPruneError(f"--target-macs must be in (0, 1), got {target_macs}")
    allocator = Allocation(an, scores, config, method, criterion, data, ctx, chooser)
    orders = candidate_orders(criterion, scores, ctx)
    with progress.stage("order check (candidates)", len(orders) + 2):
        check = (check_orders(allocator, orders, target_macs, data, ctx.stats, reference, recover, question_variety)
                 if len(orders) > 1 and reference is not None else None)
    plan, skipped, info = allocator.plan_for(target_macs)
    if check:
        info["order_check"] = check
    if "target" in info and info["macs_removed"] < info["target"] - 0.005:
        ctx.notes.append(f"the MAC budget was not reached: {info['macs_removed']:.1%} of the MACs removed, "
                         f"{info['target']:.1%} asked; the limits (--round-to, --min-channels, --max-ratio, "
                         f"blocked groups) allow no more")
    return plan, skipped, info


def run(run, model_or_path) -> None:
    """The scoring, allocation and selection stage of a pruning run: sets `run.ctx`, `run.plan`,
    `run.skipped`, `run.allocation` (a saved plan is applied as it is)."""
    import os

    from ..calibration.stage import variety_of

    config, an = run.config, run.prep.analysis
    sc, sel, budget, lat = config.scoring, config.selection, config.budget, config.latency
    run.ctx = ctx = criteria.ScoreContext(an, seed=sc.seed, stats=run.stats, data=run.data,
                                          options={"ratio": budget.ratio, "preset": sc.preset,
                                                   "ensemble_mode": sc.ensemble_mode, "order_check": sel.order_check,
                                                   "blend_pool": config.preset_value("blend_pool"),
                                                   "blend_search": config.preset_value("blend_search", False)})
    if run.data is not None:
        ctx.notes.extend(run.data.notes)
    if sel.plan is not None:
        chosen = Plan.load(sel.plan, an)
        run.skipped = [{"group": g.id, "name": g.name, "reason": "; ".join(g.reasons[:3])}
                       for g in an.groups if not g.prunable]
        run.allocation = {"method": "plan"}
    else:
        meter = None
        if budget.target_latency is not None:
            from .latency import Meter
            meter = Meter(run.prep.source if isinstance(model_or_path, (str, os.PathLike)) else run.prep.original,
                          lat.latency_provider, lat.latency_batch, lat.latency_threads, config.input_shape,
                          log=ctx.notes.append)
        select_config = SelectConfig(ratio=budget.ratio, global_pruning=sel.global_pruning, max_ratio=sel.max_ratio,
                                     min_channels=sel.min_channels, round_to=sel.round_to, ignore=tuple(sel.ignore))
        recover = bool(config.calibration.calib) and config.recovery.recover is not False
        chosen, run.skipped, run.allocation = score_and_select(
            ctx, sc.criterion, select_config, sel.allocate, budget.target_macs, variety_of(config),
            budget.target_latency, meter, run.reference, recover, question_variety=sel.variety is None)
    run.latency_search = run.allocation.pop("latency_search", None)
    run.passes.update(scoring_passes(ctx, sc.criterion, run.allocation))
    run.plan = Plan(chosen.groups, {"model": os.path.basename(run.prep.source), "criterion": sc.criterion,
                                    "ratio": budget.ratio})
    if sel.save_plan:
        run.plan.save(sel.save_plan)


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
