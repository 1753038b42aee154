"""The recovery stage: training-free recovery with calibration data (`sequence`), then fine-tuning
when asked for, or the data-free repair without data (`datafree`)."""

from __future__ import annotations

from ..analysis import metrics
from ..errors import UsageError
from .. import progress
from . import datafree, sequence


def finetune_config(config):
    """The fine-tuning options checked before any work (None without `finetune`): the extra
    installed, the device present, calibration data given."""
    r = config.recovery
    if not r.finetune:
        return None
    from ..finetuning import FinetuneConfig, check_ready
    tuning = FinetuneConfig(epochs=r.epochs, lr=r.lr, batch_size=r.finetune_batch, augment=r.augment, device=r.device,
                            seed=config.scoring.seed)
    if not config.calibration.calib:
        raise UsageError("--finetune needs calibration data: give --calib PATH (images or arrays; labels not needed)")
    check_ready(tuning)
    return tuning


def check_model(run) -> None:
    """With fine-tuning asked for, fail before pruning starts when torch cannot run the model."""
    if run.tuning is not None:
        from ..finetuning import check_convertible
        check_convertible(run.prep.original, run.prep.source, run.prep.input_shapes)


def with_data(run) -> bool:
    """Whether the data-driven recovery runs (calibration data given, recovery not switched off)."""
    return bool(run.config.calibration.calib) and run.config.recovery.recover is not False


def run(run) -> None:
    """Recover `run.pruned` in place: the data-driven steps, fine-tuning, or the data-free repair;
    builds `run.checker` (the fidelity check inputs) for verification too."""
    an, prep, config = run.prep.analysis, run.prep, run.config
    if with_data(run) and run.reference is None:
        run.ctx.notes.append("recovery skipped: the held-out split is empty (more --calib-samples or --holdout)")
    elif with_data(run):
        with run.timed("recover"):
            run.pruned, run.steps, run.passes["recovery"] = sequence.recover(an, run.removed, run.pruned, run.data,
                                                                             run.stats, run.reference)
    if run.tuning is not None and run.reference is None:
        run.ctx.notes.append("fine-tuning skipped: the held-out split is empty (more --calib-samples or --holdout)")
    elif run.tuning is not None:
        finetune(run)
    datafree_on = not config.calibration.calib and config.recovery.recover is not False
    run.before = metrics.stats(prep.original, an.shapes)
    run.checker = (datafree.Checker(prep.original, prep.input_shapes, config.scoring.seed, run.before.macs)
                   if datafree_on or config.verification.verify else None)
    if datafree_on:
        with run.timed("recover"), progress.stage("data-free repair"):
            run.pruned, run.steps, run.passes["recovery"] = run.checker.repair(an, run.removed, run.pruned)


def finetune(run) -> None:
    """Fine-tune `run.pruned` against the original by distillation on the calibration data."""
    from ..finetuning import finetune_model, hints_for

    with run.timed("finetune"):
        run.pruned, step = finetune_model(run.prep.original, run.pruned, run.data, run.reference, run.tuning,
                                          progress=run.finetune_progress,
                                          hints=hints_for(run.prep.analysis, run.removed))
        run.steps.append(step)
        # per epoch: the teacher and the student over the training split, the student over the held-out
        # one; per refit epoch: the teacher and the student over both splits
        run.passes["finetune"] = step["epochs_run"] * (2 * run.data.size("score") + run.data.size("holdout")) + \
            step.get("refit", {}).get("epochs", 0) * 2 * run.data.size("all")
