"""The pruning pipeline: load -> analyse -> calibrate -> score -> allocate -> select -> rewrite ->
recover -> verify -> report.

`prune` reads as that sequence; each stage is a public function of its own module
(`calibration.stage`, `allocation.allocator`, `rewrite`, `recovery.stage`, `verification.stage`,
`report.build`), timed by `Run.timed`.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import onnx

from . import io, rewrite
from .allocation import allocator, latency
from .allocation.select import Plan
from .analysis import fold, graph
from .analysis.ops import rule_or_default
from .analysis.groups import Analysis, analyse as analyse_groups
from .calibration import stage as calibration
from .config import PruneConfig, check_ratio_given
from .errors import OnnxPruneError
from .recovery import stage as recovery
from .report import build
from .runtime import pool, providers, sessions
from .verification import approximate, stage as verification
from .verification.verify import Verification


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



def prepare(model_or_path, input_shape: dict | None = None, approximate: bool = False) -> Prepared:
    """Load (if a path), fix input shapes, normalise weights, infer shapes and analyse groups
    (`approximate`: also through ops whose result changes with the channel count, `groups.analyse`)."""
    if isinstance(model_or_path, (str, os.PathLike)):
        source = str(model_or_path)
        model = io.load(model_or_path)
    else:
        source = "<ModelProto>"
        model = model_or_path
        io.check_supported(model)
    if not any(rule_or_default(n).convolves for n in model.graph.node):
        raise OnnxPruneError(f"{source}: nothing to prune: the model has no Conv or ConvTranspose node")
    input_shapes = graph.fixed_input_shapes(model, input_shape)
    norm = fold.normalise(model, input_shapes, folded := {})
    graph.check_finite(norm, source)
    shapes = graph.infer_shapes(norm, input_shapes)
    return Prepared(model, analyse_groups(norm, shapes, approximate), input_shapes, source, folded or None)



def analyse(model_or_path, input_shape: dict | None = None, approximate: bool = False) -> Analysis:
    """The channel-dependency groups of a model (path or ModelProto), without pruning."""
    return prepare(model_or_path, input_shape, approximate).analysis



def prune(model_or_path, criterion: str | None = None, ratio: float | None = None, *,
          config: PruneConfig | None = None, finetune_progress=None, **keywords) -> PruneResult:
    """Prune a model's channels (the Python form of the `onnxprune` command).

    Args:
        model_or_path: an ONNX file path or a ModelProto (not modified).
        criterion, ratio, keywords: the options, as `PruneConfig` documents them (the CLI's
            flags with underscores: `round_to` is `--round-to`); they override `config`'s.
        config: a `PruneConfig` (e.g. `PruneConfig.from_dict(report["options"])` repeats a run).
        finetune_progress: optional callable(epoch, epochs, train_loss, held_out_loss).
    Returns:
        A `PruneResult`; `report` holds the numbers shown by the CLI.
    Raises:
        OnnxPruneError: a bad option (before any file is read), bad input, nothing to prune, or a
            latency target that cannot be measured (provider missing) or reached.
    """
    given = {**({} if criterion is None else {"criterion": criterion}), **({} if ratio is None else {"ratio": ratio}),
             **keywords}
    config = config.replace(**given) if config is not None else PruneConfig.from_keywords(**given)
    if ratio is not None:
        check_ratio_given(config)
    run = start(config, finetune_progress)
    runtime = run.config.runtime
    # every session on --device; the independent passes on --workers processes or --ray actors
    with pool.active(runtime.workers, runtime.ray, run.config.recovery.device) as workers:
        with run.timed("analyse"):
            run.prep = prepare(model_or_path, config.input_shape, config.selection.approximate)
            recovery.check_model(run)
            check_prunable(run.prep)
        if run.config.calibration.calib:
            with run.timed("calibration"):
                calibration.run(run)
        with run.timed("score_select"):
            allocator.run(run, model_or_path)
        workers.release()     # no later stage hands out passes: free the workers' copies of the model
        with run.timed("rewrite"):
            run.removed = run.plan.removed_units(run.prep.analysis)
            run.pruned = rewrite.apply(run.prep.analysis, run.removed)
        if run.config.selection.approximate:   # before recovery changes the rewrite: the oracle's replacement
            with run.timed("approximate"):
                run.approximate = approximate.check(run.prep.analysis, run.removed, run.pruned,
                                                    run.prep.input_shapes, run.config.scoring.seed,
                                                    run.config.verification.min_fidelity)
        recovery.run(run)
        with run.timed("verify"):
            verification.run(run)
        run.workers = {**workers.stats(), "device": run.config.recovery.device}
    return PruneResult(run.pruned, run.plan, run.prep.analysis, run.check, build.prune_report(run))


def start(config: PruneConfig, finetune_progress=None) -> "Run":
    """Check every option before any file is read and resolve the defaults (preset, round_to).

    The order of the checks is the order of their messages' precedence: fine-tuning's options,
    `--calib synthetic`'s extra, --round-to, the latency target, then everything else
    (`PruneConfig.validate`)."""
    from dataclasses import replace

    tuning = recovery.finetune_config(config)
    if config.calibration.calib == "synthetic":
        from .finetuning import require_torch
        require_torch("--calib synthetic")
    lat, budget, sel = config.latency, config.budget, config.selection
    lat = replace(lat, latency_provider=str(lat.latency_provider).lower())
    round_to, source = providers.resolve_round_to(sel.round_to, lat.for_speed or budget.target_latency is not None,
                                                  lat.latency_provider)
    if budget.target_latency is not None:
        latency.check_options(budget.target_latency, budget.target_macs, sel.plan, lat.latency_provider,
                              lat.latency_batch, lat.latency_threads)
    config.validate()
    sessions.check_device(config.recovery.device)     # onnxruntime's CUDA provider and a GPU, at once
    if config.runtime.ray:
        pool.require_ray()
    resolved = replace(config.resolved(), latency=lat)
    resolved = replace(resolved, selection=replace(resolved.selection, round_to=round_to))
    return Run(resolved, source, tuning, finetune_progress)


def check_prunable(prep: Prepared) -> None:
    """Fail, naming the first reason, when every channel group of the model is blocked."""
    an = prep.analysis
    if not any(g.prunable for g in an.groups):
        reasons = sorted({r for g in an.groups for r in g.reasons})
        raise OnnxPruneError(f"{prep.source}: nothing to prune: every channel group is blocked"
                             + (f" ({reasons[0]}{' ...' if len(reasons) > 1 else ''})" if reasons else ""))


@dataclass
class Run:
    """The state of one pruning run as the stages fill it in."""

    config: PruneConfig                    # as resolved: preset defaults and round_to filled in
    round_to_source: str = ""
    tuning: object = None                  # a finetuning.FinetuneConfig, or None
    finetune_progress: object = None
    prep: Prepared | None = None
    data: object = None                    # calibration data (calib.CalibData) or None
    stats: dict = field(default_factory=dict)
    reference: object = None               # the original's held-out outputs, or None
    ctx: object = None                     # the criteria.ScoreContext
    plan: Plan | None = None
    skipped: list = field(default_factory=list)
    allocation: dict = field(default_factory=dict)
    latency_search: dict | None = None
    removed: object = None
    pruned: onnx.ModelProto | None = None
    steps: list = field(default_factory=list)
    before: object = None                  # metrics.stats of the original
    checker: object = None                 # the data-free fidelity checker, or None
    check: Verification | None = None
    fidelity: dict | None = None
    approximate: dict | None = None        # the fidelity check of groups pruned approximately (verification.approximate)
    holdout: dict | None = None            # held-out metrics of the pruned model (calibration.stage)
    timings: dict = field(default_factory=dict)
    passes: dict = field(default_factory=dict)   # image passes through the whole network, per stage
    workers: dict | None = None            # where the passes ran (runtime.pool's stats, the device)

    @contextmanager
    def timed(self, stage: str):
        """Time the block as `stage` in the report's `seconds`."""
        t = time.perf_counter()
        yield
        self.timings[stage] = time.perf_counter() - t
