"""The pruning pipeline: load -> analyse -> score -> select -> rewrite -> verify -> measure -> report.

`prune` reads as that sequence; each stage lives in its own module.
"""

from __future__ import annotations

import fnmatch
import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from . import activations, criteria, datafree, graph, io, metrics, recover as recovery, rewrite
from .calib import CalibConfig, CalibData, input_specs
from .errors import OnnxPruneError
from .evaluate import Reference, choice_loss, compare, warnings_for
from .groups import Analysis, analyse as analyse_groups
from .masking import MaskRunner
from .reconstruct import reconstruct
from .select import Plan, SelectConfig, select
from .variety import merges as find_merges
from .verify import Verification, verify as verify_model

REPORT_SCHEMA = 1
BLEND_FITNESS_SAMPLES = 128   # held-out images behind each fitness evaluation of the blend search
CHECK_FIT_SAMPLES = 64        # scoring images behind the order check's least-squares repair of a candidate
CLOSE_RUNNER_UP = 0.1         # a representative this close to a winning blend (relative loss) gets counts of its own
SPEED_ROUND_TO = 8        # the --round-to default when pruning for speed (resolve_round_to) ...
SPEED_ROUND_TO_AVX512 = 16   # ... on the CPU provider of a CPU with AVX-512 (onnxruntime's NCHWc blocks of 16)


@dataclass
class PruneResult:
    """What `prune` returns: the pruned model, its plan, the verification and the report dict."""

    model: onnx.ModelProto
    plan: Plan
    analysis: Analysis
    verification: Verification | None
    report: dict = field(default_factory=dict)


@dataclass
class Prepared:
    """A loaded model ready for scoring: original, normalised copy, shapes, groups."""

    original: onnx.ModelProto
    analysis: Analysis
    input_shapes: dict
    source: str
    folded: dict | None = None   # the constant folding beyond graph.FOLDABLE (onnxprune.fold), for the report


def prepare(model_or_path, input_shape: dict | None = None) -> Prepared:
    """Load (if a path), fix input shapes, normalise weights, infer shapes and analyse groups."""
    if isinstance(model_or_path, (str, os.PathLike)):
        source = str(model_or_path)
        model = io.load(model_or_path)
    else:
        source = "<ModelProto>"
        model = model_or_path
        io.check_supported(model)
    if not any(n.op_type in ("Conv", "ConvTranspose") for n in model.graph.node):
        raise OnnxPruneError(f"{source}: nothing to prune: the model has no Conv or ConvTranspose node")
    input_shapes = graph.fixed_input_shapes(model, input_shape)
    norm = graph.normalise(model, input_shapes, folded := {})
    graph.check_finite(norm, source)
    shapes = graph.infer_shapes(norm, input_shapes)
    return Prepared(model, analyse_groups(norm, shapes), input_shapes, source, folded or None)


def analyse(model_or_path, input_shape: dict | None = None) -> Analysis:
    """The channel-dependency groups of a model (path or ModelProto), without pruning."""
    return prepare(model_or_path, input_shape).analysis


def prune(model_or_path, criterion: str = "blend", ratio: float = 0.5, *, global_pruning: bool = False,
          max_ratio: float = 1.0, min_channels: int = 1, round_to: int | None = None, ignore: tuple[str, ...] = (),
          plan: str | None = None, save_plan: str | None = None, input_shape: dict | None = None,
          seed: int = 0, verify: bool = True, calib: str | None = None, calib_samples: int = 512,
          batch_size: int = 32, mean: tuple[float, ...] = (0.0,), std: tuple[float, ...] = (1.0,),
          scale: float = 1.0 / 255.0, holdout: float = 0.25, recover: bool | None = None,
          allocate: str | None = None, target_macs: float | None = None, variety: str | None = None,
          preset: str = "default", target_latency: float | None = None, latency_provider: str = "cpu",
          latency_batch: int | None = None, latency_threads: int = 0, for_speed: bool = False,
          ensemble_mode: str = "group", order_check: bool | None = None, finetune: bool = False,
          epochs: int = 20, lr: float = 1e-3, finetune_batch: int = 32, augment: str | tuple = "default",
          device: str = "cpu", finetune_progress=None,
          min_fidelity: float | None = None) -> PruneResult:
    """Prune a model's channels (the Python form of the `onnxprune` command).

    Args:
        model_or_path: an ONNX file path or a ModelProto (not modified).
        criterion: a name from `onnxprune.criteria.names()`.
        ratio: fraction of channels removed in each prunable group, in [0, 1).
        global_pruning: one threshold across groups on group-normalised scores.
        max_ratio, min_channels, round_to: per-group limits (see `select`); `round_to` None means,
            when pruning for speed (`target_latency` or `for_speed`), 16 on the CPU provider of an
            AVX-512 CPU and 8 elsewhere, else 1 (`resolve_round_to`).
        ignore: fnmatch patterns of node names whose groups are left alone.
        plan: a plan JSON to apply instead of scoring and selecting.
        save_plan: write the plan used to this JSON file.
        input_shape: {input name: shape} for inputs with dynamic dims.
        seed: seed for random criteria, calibration subsets and verification inputs.
        verify: check the result with onnx.checker and onnxruntime.
        calib: calibration data: an image folder, a .npy/.npz of input arrays, "random", or
            "synthetic" (inputs generated from the model's BN statistics; needs the [finetune]
            extra, see `onnxprune.finetuning.synthetic`).
        calib_samples, batch_size: how many calibration samples, and per onnxruntime call.
        mean, std, scale: image preprocessing ``(pixel * scale - mean) / std``.
        holdout: fraction of calibration samples kept apart for accept/reject decisions.
        recover: training-free recovery (default: on). With `calib`, the data-driven steps; without,
            the data-free ones (`onnxprune.datafree`: expected-activation compensation, neuron
            merging, linear reconstruction, each kept only if it lowers the output error on
            synthetic check inputs).
        allocate: per-group ratios: "uniform" (or "global" = `global_pruning`), or with `calib`:
            "sensitivity" (the default with `calib`), "utilization" (SNPFI: groups with weakly
            interacting filters lose more) or "redundancy" (groups with functional duplicates lose more).
        target_macs: fraction of MACs to remove, instead of `ratio`.
        variety: "cluster", "gate", "soft" or "off" (default: cluster for blend, else off; a
            defaulted one is questioned by the order check, when that runs, which turns it off
            where it does not lower the held-out loss).
        preset: "fast" (data-free blend, uniform ratios, no variety), "default" (criteria.md §10:
            blend with activation criteria, sensitivity allocation, variety, order check) or
            "thorough" (adds the ensemble criterion to the pool and searches the blend weights).
        target_latency: a latency ratio in (0, 1) to reach instead of `ratio`/`target_macs`: the
            smallest MAC budget whose pruned model runs in at most this fraction of the original's
            latency, measured on `latency_provider` ("cpu", "cuda") at `latency_batch` (None: the
            batch of `input_shape`, else 1) with `latency_threads` intra-op threads (0: onnxruntime's
            default); see `onnxprune.latency`. A target that is not met even at the largest
            budget is an error (nothing is returned), not a best effort.
        ensemble_mode: the `ensemble` criterion's games: "group" (one per group) or "joint" (one
            over every unit; scores share loss units, so global allocation compares them as they are).
        order_check: with `blend` and calibration data, prune by whichever of the blend and its
            representatives alone loses least on held-out data after cheap recovery at the
            allocated counts (default: on, except preset "fast"; not with `target_latency`,
            whose search would repeat it for every budget).
        min_fidelity: raise instead of returning when an output collapsed on the check inputs or
            its cosine with the original's there is below this (`datafree.fidelity`; needs `verify`).
        for_speed: the result is meant to be faster (the CLI's `--bench`): only changes the
            `round_to` default (see `resolve_round_to`); `target_latency` implies it.
        finetune: after the training-free recovery, fine-tune the pruned model against the
            original by distillation on the calibration data (needs `calib` and the `[finetune]`
            extra; see `onnxprune.finetuning`), kept only if its held-out loss is lower.
        epochs, lr, finetune_batch, augment, device: fine-tuning's schedule, batch size,
            augmentation ("default", "none" or a comma list of shift, crop, flip) and torch device.
        finetune_progress: optional callable(epoch, epochs, train_loss, held_out_loss).
    Returns:
        A `PruneResult`; `report` holds the numbers shown by the CLI.
    Raises:
        OnnxPruneError: bad input, nothing to prune, or a latency target that cannot be measured
            (provider missing) or reached.
    """
    tuning = _finetune_config(finetune, calib, epochs, lr, finetune_batch, augment, device, seed)
    if calib == "synthetic":
        from .finetuning import require_torch
        require_torch("--calib synthetic")
    latency_provider = str(latency_provider).lower()
    round_to, round_to_source = resolve_round_to(round_to, for_speed or target_latency is not None, latency_provider)
    if target_latency is not None:
        _check_latency_options(target_latency, target_macs, plan, latency_provider, latency_batch, latency_threads)
    timings = {}
    passes = {}    # image passes through the whole network, per stage (suffix runs by their MAC share)
    t0 = time.perf_counter()
    prep = prepare(model_or_path, input_shape)
    an = prep.analysis
    if tuning is not None:
        from .finetuning import check_convertible
        check_convertible(prep.original, prep.source, prep.input_shapes)    # an op torch cannot run: said before pruning starts
    timings["analyse"] = time.perf_counter() - t0
    if not any(g.prunable for g in an.groups):
        reasons = sorted({r for g in an.groups for r in g.reasons})
        raise OnnxPruneError(f"{prep.source}: nothing to prune: every channel group is blocked"
                             + (f" ({reasons[0]}{' ...' if len(reasons) > 1 else ''})" if reasons else ""))
    config = SelectConfig(ratio=ratio, global_pruning=global_pruning, max_ratio=max_ratio,
                          min_channels=min_channels, round_to=round_to, ignore=tuple(ignore))
    if preset not in ("fast", "default", "thorough"):
        raise OnnxPruneError(f"unknown preset '{preset}'; choose fast, default or thorough")
    if min_fidelity is not None and not 0.0 <= min_fidelity <= 1.0:
        raise OnnxPruneError(f"--min-fidelity must be in [0, 1], got {min_fidelity}")
    datafree_on = not calib and recover is not False   # no data: the data-free repair instead
    recover = bool(calib) and recover is not False
    if preset == "fast":
        allocate, variety = allocate or "uniform", variety or "off"
    # a defaulted variety is the order check's to question; one the user asked for is kept as given
    variety_given = variety is not None
    # without data the variety's weight signatures lowered the repaired accuracy (docs/benchmarks.md)
    variety = variety or ("cluster" if criterion == "blend" and calib else "off")
    data, stats, reference = None, {}, None
    if calib:
        t = time.perf_counter()
        config_calib = CalibConfig(calib, calib_samples, batch_size, tuple(mean), tuple(std), scale, holdout, seed)
        data, stats, reference = _calibrate(prep, config_calib, criterion, recover, variety)
        timings["calibration"] = time.perf_counter() - t
        passes["calibration"] = (data.size("score") if stats else 0) + (data.size("holdout") if reference else 0)
    t = time.perf_counter()
    ctx = criteria.ScoreContext(an, seed=seed, stats=stats, data=data,
                                options={"ratio": ratio, "preset": preset, "ensemble_mode": ensemble_mode,
                                         "order_check": preset != "fast" if order_check is None else order_check})
    if data is not None:
        ctx.notes.extend(data.notes)
    if plan is not None:
        chosen = Plan.load(plan, an)
        skipped = [{"group": g.id, "name": g.name, "reason": "; ".join(g.reasons[:3])}
                   for g in an.groups if not g.prunable]
        allocation = {"method": "plan"}
    else:
        meter = None
        if target_latency is not None:
            from .latency import Meter
            meter = Meter(prep.source if isinstance(model_or_path, (str, os.PathLike)) else prep.original,
                          latency_provider, latency_batch, latency_threads, input_shape, log=ctx.notes.append)
        chosen, skipped, allocation = _score_and_select(ctx, criterion, config, allocate, target_macs, variety,
                                                        target_latency, meter, reference, recover,
                                                        question_variety=not variety_given)
    latency_search = allocation.pop("latency_search", None)
    timings["score_select"] = time.perf_counter() - t
    passes.update(_scoring_passes(ctx, criterion, allocation))
    chosen = Plan(chosen.groups, {"model": os.path.basename(prep.source), "criterion": criterion, "ratio": ratio})
    if save_plan:
        chosen.save(save_plan)

    t = time.perf_counter()
    removed = chosen.removed_units(an)
    pruned = rewrite.apply(an, removed)
    timings["rewrite"] = time.perf_counter() - t
    steps = []
    if recover and reference is None:
        ctx.notes.append("recovery skipped: the held-out split is empty (more --calib-samples or --holdout)")
    elif recover:
        t = time.perf_counter()
        pruned, steps, passes["recovery"] = _recover(an, removed, pruned, data, stats, reference)
        timings["recover"] = time.perf_counter() - t
    if tuning is not None and reference is None:
        ctx.notes.append("fine-tuning skipped: the held-out split is empty (more --calib-samples or --holdout)")
    elif tuning is not None:
        from .finetuning import finetune_model, hints_for
        t = time.perf_counter()
        pruned, step = finetune_model(prep.original, pruned, data, reference, tuning, progress=finetune_progress,
                                      hints=hints_for(an, removed))
        steps.append(step)
        # per epoch: the teacher and the student over the training split, the student over the held-out
        # one; per refit epoch: the teacher and the student over both splits
        passes["finetune"] = step["epochs_run"] * (2 * data.size("score") + data.size("holdout")) + \
            step.get("refit", {}).get("epochs", 0) * 2 * data.size("all")
        timings["finetune"] = time.perf_counter() - t
    before = metrics.stats(prep.original, an.shapes)
    checker = datafree.Checker(prep.original, prep.input_shapes, seed, before.macs) if datafree_on or verify else None
    if datafree_on:
        t = time.perf_counter()
        pruned, steps, passes["recovery"] = checker.repair(an, removed, pruned)
        timings["recover"] = time.perf_counter() - t

    t = time.perf_counter()
    check = verify_model(prep.original, pruned, prep.input_shapes, seed=seed) if verify else None
    fidelity = checker.fidelity(pruned) if verify and (check is None or check.valid) else None
    warning = datafree.collapse_warning(fidelity, bool(calib))
    if warning or datafree.fidelity_failure(fidelity, min_fidelity):
        if min_fidelity is not None:
            raise OnnxPruneError(datafree.fidelity_failure(fidelity, min_fidelity))
        ctx.notes.append(warning)
    timings["verify"] = time.perf_counter() - t

    after = metrics.stats(pruned, graph.infer_shapes(pruned, prep.input_shapes))
    holdout_metrics = _holdout_metrics(pruned, data, reference) if reference is not None else None
    if holdout_metrics:
        ctx.notes.extend(warnings_for(holdout_metrics))
    report = {
        "schema_version": REPORT_SCHEMA,
        "model": prep.source,
        "criterion": criterion if plan is None else f"plan:{os.path.basename(str(plan))}",
        "ratio": ratio,
        "target_macs": target_macs,
        "target_latency": target_latency,
        "preset": preset,
        "options": {"global_pruning": global_pruning, "max_ratio": max_ratio, "min_channels": min_channels,
                    "round_to": round_to, "round_to_source": round_to_source, "for_speed": for_speed,
                    "ignore": list(ignore), "seed": seed, "finetune": tuning.to_dict() if tuning else None},
        "input_shapes": prep.input_shapes,
        "folded": prep.folded,
        "before": before.to_dict(),
        "after": after.to_dict(),
        "macs_kept": after.macs / before.macs if before.macs else 1.0,
        "params_kept": after.params / before.params if before.params else 1.0,
        "groups": _group_rows(an, chosen),
        "skipped": skipped,
        "verification": check.to_dict() if check else None,
        "fidelity": fidelity,
        "scoring": {k: v for k, v in ctx.extras.items() if k != "ranks"},
        "allocation": allocation,
        "latency_search": latency_search,
        "recovery": steps,
        "holdout": holdout_metrics,
        "calibration": {"path": calib, "samples": data.size("all"), "holdout": data.size("holdout"),
                        "mean": list(mean), "std": list(std), "scale": scale,
                        "synthetic": getattr(data, "synthetic", None)} if data else None,
        "notes": ctx.notes,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "forward_passes": {**{k: round(v, 1) for k, v in passes.items() if v}, "total": round(sum(passes.values()), 1)},
    }
    return PruneResult(pruned, chosen, an, check, report)


def _score_and_select(ctx, criterion: str, config: SelectConfig, allocate, target_macs, variety: str,
                      target_latency: float | None = None, meter=None, reference=None, recover: bool = True,
                      question_variety: bool = False) -> tuple:
    """Score every prunable group with `criterion`, allocate per-group counts, choose the units.

    `reference` (the original's held-out outputs), `recover` and `question_variety` (the variety
    was defaulted: the order check may turn it off) are what the order check needs.

    With `target_latency`, the MAC budget is searched (`onnxprune.latency`), timing candidates with
    `meter`; the search is returned as ``allocation["latency_search"]``.
    """
    an, data = ctx.analysis, ctx.data
    if criterion not in criteria.names():
        raise OnnxPruneError(f"unknown criterion '{criterion}'; choose from {', '.join(criteria.names())}")
    if ctx.options.get("preset") == "thorough" and criterion == "blend" and data is not None:
        ctx.options["blend_fitness"] = _blend_fitness(an, data, config, target_macs)
    scores = criteria.score(criterion, ctx)
    chooser = _variety_chooser(an, ctx.stats, variety) if variety != "off" else None
    if target_latency is None:
        chosen, skipped, allocation = _allocate(an, scores, config, allocate, target_macs, criterion, data, ctx,
                                                chooser, reference, recover, question_variety)
    else:
        allocator = Allocation(an, scores, config, allocate, criterion, data, ctx, chooser)
        chosen, skipped, allocation = _latency_select(an, allocator, target_latency, meter)
    dropped = variety != "off" and (allocation.get("order_check") or {}).get("variety") == "off"
    allocation["variety"] = "off (order check)" if dropped else variety
    return chosen, skipped, allocation


def _calibrate(prep: Prepared, config: CalibConfig, criterion: str, recover: bool, variety: str) -> tuple:
    """Load calibration data, stream the statistics the criterion and recovery need, and record
    the original's outputs on the held-out split (the reference for every accept/reject decision)."""
    an = prep.analysis
    if config.path == "synthetic":
        from .finetuning.synthetic import synthetic_calib
        data = synthetic_calib(prep.original, config, input_specs(prep.original, prep.input_shapes))
    else:
        data = CalibData(config, input_specs(prep.original, prep.input_shapes))
    stats = {}
    if criterion in criteria.DATA_CRITERIA or criterion == "blend" or recover:
        want = set(criteria.STATS_NEEDED.get(criterion, set()))
        if recover or variety != "off":
            want.add("signature")   # merge compensation and variety compare activation signatures
        stats = activations.collect(an.model, an.read_tensors(), data, "score",
                                    rank_samples=128 if criterion in criteria.RANK_CRITERIA else 0,
                                    want=frozenset(want))
    reference = Reference.of(an, activations.outputs(an.model, data, "holdout")) if data.size("holdout") else None
    return data, stats, reference


def _blend_fitness(an: Analysis, data: CalibData, config: SelectConfig, target_macs):
    """Fitness of a blended order: minus the held-out loss of the masked network at uniform counts."""
    from . import allocate as alloc
    from .metrics import MacModel

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


def _variety_chooser(an: Analysis, stats: dict, mode: str):
    """A selection chooser that keeps filter variety (onnxprune/variety.py).

    The similarity matrix of a group depends on the group only: it is computed once and reused
    (the latency search selects many times with the same chooser)."""
    from . import variety as var

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
        from . import allocate as alloc
        from .metrics import MacModel

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
            from .criteria.interactions import games
            self.signal = alloc.utilization_signal({gid: g["utilization"] for gid, g in games(ctx).items()})
        elif method == "redundancy":
            from . import variety as var
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
        from . import allocate as alloc

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
        from . import allocate as alloc

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


def _candidate_orders(criterion: str, scores, ctx) -> dict[str, dict]:
    """The orders the order check compares: the criterion's own first, then, for `blend` with the
    check on (ctx.options["order_check"]), each representative criterion's ranks alone."""
    orders = {criterion: scores}
    summary = ctx.extras.get("blend")
    if criterion == "blend" and summary and ctx.options.get("order_check"):
        for name in summary["representatives"]:
            orders.setdefault(name, ctx.extras["ranks"][name])
    return orders


def _check_orders(allocator: "Allocation", orders: dict[str, dict], target_macs, data: CalibData,
                  stats: dict, reference: list, recover: bool, question_variety: bool = False) -> dict:
    """Which order to prune by: the blend or one of its representatives alone (the vertices of the
    blend's simplex), whichever gives the lowest held-out loss after cheap recovery (criteria.md
    §5's fitness: the plan at the allocated counts, repaired as `_recover` starts: mean
    compensation if it helps, then least squares, the best of these counted).
    Masked losses without recovery cannot tell the orders apart where recovery does most of the
    work (PaddleOCR's direction classifier: all within 10%). The first order (the blend) wins ties.

    The orders are compared at the blend's counts, which its own sensitivity curves chose: a
    group that is sensitive under the blend's order may not be under another's, and the reverse.
    So a winner other than the blend is probed again for counts of its own (`_try_own_counts`),
    kept if they lower its loss; where the blend wins, the best representative is probed too when
    it came within CLOSE_RUNNER_UP of the blend and a second probe repeats the first (cheap
    models, allocate.SECOND_PROBE_MACS), and wins if its own counts beat the blend. PaddleOCR's
    recogniser (64 crops), seed 0: blend 0.104, mean_act 0.111 at the blend's counts, 0.096 at its own.
    With `question_variety` (variety was defaulted, not asked for), all this runs without the
    variety chooser, and the final order and counts keep it only if that lowers their loss: one
    keeper forced per activation cluster overrides the criterion (PaddleOCR's recogniser: mean_act
    from CER 0.34 to 0.80 against the original, the blend's held-out loss from 0.105 to 0.691; on
    the detector it kept the default from an IoU of 0.89), and own counts were once tried with a
    variety kept by a margin of 0.002 and repaired to 0.58 instead of about 0.1.
    With `recover` off, the loss is the pruned model's as it is (what the user will get).
    Switches `allocator.scores` (and `allocator.chooser`) to the winner and returns the report
    entry, with the image passes it cost."""
    an = allocator.an
    means = {t: st.mean for t, st in stats.items()}
    passes = 0
    config, counts, reasons, _ = allocator.counts_for(target_macs)   # the same counts for every order

    def loss_of(scores, chooser, config=config, counts=counts, reasons=reasons) -> float:
        nonlocal passes
        plan, _ = select(an, scores, config, counts=counts, notes=reasons, chooser=chooser)
        loss, cost = _repaired_loss(an, plan.removed_units(an), data, means, reference, recover)
        passes += cost
        return loss

    # variety questioned: compare the orders (and counts) without it (its forced keepers are the
    # same for every order and would blur the comparison), then try it on the final choice
    chooser = None if question_variety else allocator.chooser
    first = next(iter(orders))
    losses = {name: loss_of({**allocator.scores, **order}, chooser) for name, order in orders.items()}
    best = min(orders, key=lambda n: (losses[n], n != first))
    held = losses[best]
    allocator.scores = {**allocator.scores, **orders[best]}
    challenger = best if best != first else _close_runner_up(losses, first)
    own_counts = None
    if challenger is not None and allocator.curves is not None and (
            challenger == best or allocator.info.get("cost", {}).get("repeatable")):
        own_counts = _try_own_counts(allocator, target_macs, orders[challenger], held, loss_of, chooser)
        passes += own_counts["probe_passes"]
        losses[f"{challenger} at its own counts"] = own_counts["loss"]
        if own_counts["kept"]:
            best, held = challenger, own_counts["loss"]
    variety = "kept" if allocator.chooser is not None else "off"
    if question_variety and allocator.chooser is not None:
        label = f"{best} with variety"
        final_config, final_counts, final_reasons, _ = allocator.counts_for(target_macs)
        losses[label] = loss_of(allocator.scores, allocator.chooser, final_config, final_counts, final_reasons)
        if losses[label] >= held:
            allocator.chooser, variety = None, "off"
    entry = {"losses": {n: round(v, 6) for n, v in losses.items()}, "chosen": best, "variety": variety,
             "passes": passes, "recovery": "best of none / mean compensation, then least squares" if recover else "none"}
    if own_counts:
        entry["own_counts"] = own_counts["kept"]
    return entry


def _close_runner_up(losses: dict[str, float], first: str) -> str | None:
    """The best order other than `first` if its loss is within CLOSE_RUNNER_UP of `first`'s."""
    others = [n for n in losses if n != first]
    if not others:
        return None
    runner_up = min(others, key=lambda n: losses[n])
    return runner_up if losses[runner_up] <= (1.0 + CLOSE_RUNNER_UP) * losses[first] else None


def _try_own_counts(allocator: "Allocation", target_macs, order: dict, to_beat: float, loss_of, chooser) -> dict:
    """Re-probe the sensitivity curves in `order` and switch the allocator to that order and the
    counts they give if its loss there is below `to_beat`; otherwise the allocator's scores and
    curves stay as they were.

    On PaddleOCR's recogniser mean_act won at the blend's counts with CER 0.62 against the
    original, at its own counts 0.33.
    Returns {"loss": at those counts, "kept": bool, "probe_passes": full-network passes the probe cost}."""
    first_scores, first_curves = allocator.scores, allocator.curves
    allocator.scores = {**allocator.scores, **order}
    # the first probe again where cheap, else on half the budget; its cost is the check's (the
    # report's sensitivity cost stays the first probe's)
    allocator.curves, cost = allocator.probe(allocator.scores, second=True)
    config, counts, reasons, _ = allocator.counts_for(target_macs)
    loss = loss_of(allocator.scores, chooser, config, counts, reasons)
    kept = loss < to_beat
    if not kept:
        allocator.scores, allocator.curves = first_scores, first_curves
    return {"loss": loss, "kept": kept, "probe_passes": round(cost["full_model_passes"], 1)}


def _repaired_loss(an: Analysis, removed, data: CalibData, means: dict, reference: list,
                   recover: bool) -> tuple[float, int]:
    """Held-out loss (evaluate.choice_loss: top-1 disagreement, then KL) of the network without
    `removed`, repaired as `_recover` starts (the better of
    plain and mean compensation, then least squares fitted on the first CHECK_FIT_SAMPLES scoring
    images; the best of the three counts), or as it is without `recover`; NaN counts as inf.
    Returns (loss, image passes spent)."""
    held = data.size("holdout")
    fit = data.with_score_limit(CHECK_FIT_SAMPLES)    # a comparison, not the final repair
    score = fit.size("score")
    plain = rewrite.apply(an, removed)
    best = float(recovery.held_out_loss(plain, data, reference, choice_loss))
    passes = held
    if recover:
        start = plain
        compensated = rewrite.apply(an, removed, means=means)
        loss = float(recovery.held_out_loss(compensated, data, reference, choice_loss))
        if loss < best:
            start, best = compensated, loss
        repaired, _ = reconstruct(an.model, start, an.kept_channels(removed), fit)
        passes += held + 2 * score + held
        best = min(best, float(recovery.held_out_loss(repaired, data, reference, choice_loss)))
    return (best if np.isfinite(best) else float("inf")), passes    # a NaN must not win min()


def _allocate(an: Analysis, scores, config: SelectConfig, method, target_macs, criterion, data, ctx,
              chooser=None, reference=None, recover: bool = True, question_variety: bool = False) -> tuple:
    """Per-group removal counts from the chosen allocator (and the order check), then the plan."""
    if target_macs is not None and not 0.0 < target_macs < 1.0:
        raise OnnxPruneError(f"--target-macs must be in (0, 1), got {target_macs}")
    allocator = Allocation(an, scores, config, method, criterion, data, ctx, chooser)
    orders = _candidate_orders(criterion, scores, ctx)
    check = (_check_orders(allocator, orders, target_macs, data, ctx.stats, reference, recover, question_variety)
             if len(orders) > 1 and reference is not None else None)
    plan, skipped, info = allocator.plan_for(target_macs)
    if check:
        info["order_check"] = check
    if "target" in info and info["macs_removed"] < info["target"] - 0.005:
        ctx.notes.append(f"the MAC budget was not reached: {info['macs_removed']:.1%} of the MACs removed, "
                         f"{info['target']:.1%} asked; the limits (--round-to, --min-channels, --max-ratio, "
                         f"blocked groups) allow no more")
    return plan, skipped, info


def resolve_round_to(round_to: int | None, for_speed: bool, provider: str = "cpu") -> tuple[int, str]:
    """The `round_to` in effect and where it comes from: as given, else, when pruning for speed (a
    latency target, or the result is benchmarked), 16 on the CPU provider of a CPU with AVX-512
    and 8 elsewhere, else 1.

    Why: onnxruntime's CPU provider runs convs in a blocked NCHWc layout whose block is 8 channels
    with AVX2 and 16 with AVX-512; convs whose channel counts are not multiples of the block fall
    off those kernels. MobileNetV2 at ratio 0.3 kept 52% of the MACs with odd widths and was no
    faster (0.89-0.98x), 1.25-1.5x faster with 8; on this AVX-512 machine 16 beat 8 outright at
    ratio 0.7 (MobileNetV2 12.1 vs 13.6 ms, ResNet-18 45.5 vs 47.6 ms at batch 8, one thread)
    while keeping more channels (docs/bench.md). GPUs: multiples of 8 suit fp16 tensor cores.
    When speed is not the goal, exact ratios (1) are the better default.
    """
    if round_to is not None:
        if round_to < 1:
            raise OnnxPruneError(f"--round-to must be at least 1, got {round_to}")
        return int(round_to), "given"
    if not for_speed:
        return 1, "default"
    if provider == "cpu" and cpu_has_avx512():
        return SPEED_ROUND_TO_AVX512, "default when pruning for speed on an AVX-512 CPU"
    return SPEED_ROUND_TO, "default when pruning for speed"


def cpu_has_avx512() -> bool:
    """Whether this CPU has AVX-512F (read from /proc/cpuinfo; False where that file is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False


def _check_latency_options(target, target_macs, plan, provider, batch, threads) -> None:
    """Reject a latency target that cannot be searched before any expensive work."""
    from .latency import check_provider

    if not 0.0 < target < 1.0:
        raise OnnxPruneError(f"--target-latency must be in (0, 1) (a latency ratio; 0.5 = twice as fast), "
                             f"got {target}")
    if target_macs is not None:
        raise OnnxPruneError("give --target-latency or --target-macs, not both")
    if plan is not None:
        raise OnnxPruneError("--target-latency searches the plan: it cannot be combined with --plan")
    if (batch is not None and batch < 1) or threads < 0:
        raise OnnxPruneError(f"--latency-batch must be >= 1 and --latency-threads >= 0, got {batch} and {threads}")
    check_provider(provider)


def _latency_select(an: Analysis, allocator: Allocation, target: float, meter) -> tuple:
    """The plan with the smallest MAC budget whose pruned model meets the latency target."""
    from . import latency

    def propose(budget):
        plan, skipped, info = allocator.plan_for(budget)
        removed = np.sort(plan.removed_units(an))
        return latency.Candidate(tuple(removed.tolist()), info["macs_removed"], (plan, skipped, info, removed))

    def measure(payload):
        return meter(rewrite.apply(an, payload[3]))

    t = time.perf_counter()
    result = latency.search(target, propose, measure)
    where = meter.describe()
    if not result.met:
        raise OnnxPruneError(
            f"--target-latency {target} cannot be reached on {where['provider']} at batch {where['batch']}: with "
            f"{result.macs_removed:.1%} of the MACs removed (the most the allocator and limits allow) the pruned model "
            f"still takes {result.latency_ratio:.2f}x the original's latency; try a looser target")
    plan, skipped, info, _ = result.choice
    info = {**info, "latency_search": {**where, **result.to_dict(), "seconds": round(time.perf_counter() - t, 3)}}
    return plan, skipped, info


def _recover(an: Analysis, removed, pruned: onnx.ModelProto, data: CalibData, stats: dict, reference) -> tuple:
    """Training-free recovery: each step is kept only if the held-out fidelity loss drops.

    Returns the best model, the steps, and the image passes spent (through the whole network).
    """
    steps = []
    best, best_loss = pruned, recovery.held_out_loss(pruned, data, reference)
    kept = an.kept_channels(removed)
    held, score = data.size("holdout"), data.size("score")
    passes = held

    def consider(name, candidate, cost=0):
        nonlocal best, best_loss, passes
        if candidate is None:
            return
        passes += held + cost
        loss = recovery.held_out_loss(candidate, data, reference)
        accepted = loss < best_loss
        steps.append({"step": name, "loss_before": best_loss, "loss_after": loss, "kept": accepted})
        if accepted:
            best, best_loss = candidate, loss

    means = {t: st.mean for t, st in stats.items()}
    consider("mean_compensation", rewrite.apply(an, removed, means=means))
    duplicates = find_merges(stats, {t: k for t, k in kept.items() if t in stats})
    if duplicates:
        consider("merge_duplicates", rewrite.apply(an, removed, means=means, merges=duplicates))
    repaired, skipped = reconstruct(an.model, best, kept, data)
    consider("least_squares", repaired, 2 * score)        # teacher targets + one walk (about a pass)
    if skipped:
        steps.append({"step": "least_squares_skipped", "layers": [f"{n}: {why}" for n, why in skipped]})
    consider("bn_reestimation", recovery.reestimate_bn(best, data), 2 * score)   # two sweeps
    consider("moment_matching", recovery.match_moments(an.model, best, kept, data)[0], 2 * score)
    return best, steps, passes


def _finetune_config(finetune: bool, calib, epochs, lr, finetune_batch, augment, device, seed):
    """The fine-tuning options checked before any work (None without `finetune`): the extra
    installed, the device present, calibration data given."""
    if not finetune:
        return None
    from .finetuning import FinetuneConfig, check_ready
    config = FinetuneConfig(epochs=epochs, lr=lr, batch_size=finetune_batch, augment=augment, device=device, seed=seed)
    if not calib:
        raise OnnxPruneError("--finetune needs calibration data: give --calib PATH (images or arrays; labels not needed)")
    check_ready(config)
    return config


def _holdout_metrics(model: onnx.ModelProto, data: CalibData, reference) -> dict:
    names = [o.name for o in model.graph.output]
    return compare(reference, activations.outputs(model, data, "holdout"), names, data.split_labels("holdout"))


def _scoring_passes(ctx, criterion: str, allocation: dict) -> dict:
    """Image passes spent scoring and allocating, from what the criteria and allocators report."""
    passes = {}
    data = ctx.data
    pool = (ctx.extras.get("blend") or {}).get("pool", ())
    if data is not None and (criterion == "thinet" or "thinet" in pool):
        from .criteria.thinet import MAX_IMAGES
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


def _group_rows(an: Analysis, plan: Plan) -> list[dict]:
    kept = {gp.group: len(gp.keep) for gp in plan.groups}
    rows = []
    for g in an.groups:
        rows.append({**g.to_dict(), "kept": kept.get(g.id, g.size)})
    return rows
