"""The pruning pipeline: load -> analyse -> calibrate -> score -> allocate -> select -> rewrite ->
recover -> verify -> report.

`prune` reads as that sequence; each stage is a public function of its own module
(`calibration.stage`, `allocation.allocator`, `rewrite`, `recovery.sequence`, `verification.verify`,
`report.build`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import onnx

from . import criteria, io, rewrite
from .allocation import latency
from .allocation.allocator import score_and_select
from .allocation.select import Plan, SelectConfig
from .analysis import fold, graph, metrics
from .analysis.groups import Analysis, analyse as analyse_groups
from .calibration.calib import CalibConfig
from .calibration import stage as calibration
from .errors import OnnxPruneError
from .recovery import datafree, sequence
from .report import build
from .runtime import providers
from .verification.evaluate import warnings_for
from .verification.verify import Verification, verify as verify_model


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
    folded: dict | None = None   # the constant folding beyond graph.FOLDABLE (onnxprune.analysis.fold), for the report



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
    norm = fold.normalise(model, input_shapes, folded := {})
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
            the data-free ones (`onnxprune.recovery.datafree`: expected-activation compensation, neuron
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
            default); see `onnxprune.allocation.latency`. A target that is not met even at the largest
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
    round_to, round_to_source = providers.resolve_round_to(round_to, for_speed or target_latency is not None, latency_provider)
    if target_latency is not None:
        latency.check_options(target_latency, target_macs, plan, latency_provider, latency_batch, latency_threads)
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
        data, stats, reference = calibration.calibrate(prep, config_calib, criterion, recover, variety)
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
            meter = latency.Meter(prep.source if isinstance(model_or_path, (str, os.PathLike)) else prep.original,
                          latency_provider, latency_batch, latency_threads, input_shape, log=ctx.notes.append)
        chosen, skipped, allocation = score_and_select(ctx, criterion, config, allocate, target_macs, variety,
                                                        target_latency, meter, reference, recover,
                                                        question_variety=not variety_given)
    latency_search = allocation.pop("latency_search", None)
    timings["score_select"] = time.perf_counter() - t
    passes.update(build.scoring_passes(ctx, criterion, allocation))
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
        pruned, steps, passes["recovery"] = sequence.recover(an, removed, pruned, data, stats, reference)
        timings["recover"] = time.perf_counter() - t
    if tuning is not None and reference is None:
        ctx.notes.append("fine-tuning skipped: the held-out split is empty (more --calib-samples or --holdout)")
    elif tuning is not None:
        from .finetuning import finetune_model, hints_for
        t = time.perf_counter()
        pruned, step = finetune_model(prep.original, pruned, data, reference, tuning, progress=finetune_progress,
                                      hints=hints_for(an, removed))
        steps.append(step)
        # per epoch: the teacher and the student over the training split, the student over the held-out one
        passes["finetune"] = step["epochs_run"] * (2 * data.size("score") + data.size("holdout"))
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
    holdout_metrics = calibration.holdout_metrics(pruned, data, reference) if reference is not None else None
    if holdout_metrics:
        ctx.notes.extend(warnings_for(holdout_metrics))
    report = {
        "schema_version": build.REPORT_SCHEMA,
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
        "groups": build.group_rows(an, chosen),
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

