"""Training-free recovery with calibration data: an ordered list of steps under one
accept-if-better loop.

Each `Step` builds a candidate model from the recovery state (the best model so far, the removed
units, the data); the loop keeps a candidate only if its held-out fidelity loss is below the
best so far. A new step is one `Step(name, run)` record in `STEPS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import onnx

from .. import rewrite
from ..progress import iterate as stage_iterate
from ..analysis.groups import Analysis
from ..calibration.calib import CalibData
from ..criteria.variety import merges as find_merges
from . import recover as repair
from .reconstruct import Teacher, reconstruct


@dataclass
class State:
    """What the steps read: the analysis, what was removed, the data, and the best model so far."""

    an: Analysis
    removed: object
    data: CalibData
    stats: dict
    best: onnx.ModelProto
    kept: dict = field(default_factory=dict)
    means: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One recovery step: `run(state)` -> (candidate or None to skip, extra image passes it cost,
    report entries to add after the step's own)."""

    name: str
    run: Callable[[State], tuple]


def mean_compensation(state: State) -> tuple:
    """Fold the removed channels' mean activations into their consumers' biases."""
    return rewrite.apply(state.an, state.removed, means=state.means), 0, []


def merge_duplicates(state: State) -> tuple:
    """Mean compensation plus merging each removed channel into its functional duplicate (if any)."""
    duplicates = find_merges(state.stats, {t: k for t, k in state.kept.items() if t in state.stats})
    if not duplicates:
        return None, 0, []
    return rewrite.apply(state.an, state.removed, means=state.means, merges=duplicates), 0, []


def least_squares(state: State) -> tuple:
    """Refit the consumers of pruned tensors to the original's outputs (teacher targets + one walk)."""
    teacher = Teacher.of(state.an.model, state.data)
    spent = teacher.passes
    repaired, skipped = reconstruct(state.an.model, state.best, state.kept, state.data)
    after = [{"step": "least_squares_skipped", "layers": [f"{n}: {why}" for n, why in skipped]}] if skipped else []
    # the pruned model's pass, and the original's where its targets were not computed before
    return repaired, state.data.size("score") + teacher.passes - spent, after


def bn_reestimation(state: State) -> tuple:
    """Re-estimate BatchNorm statistics on the pruned model (one walk through the network)."""
    return repair.reestimate_bn(state.best, state.data), state.data.size("score"), []


def moment_matching(state: State) -> tuple:
    """Match the pruned model's per-channel moments to the original's (the original's from the
    calibration pass where it collected them: one pass of the pruned model, else two)."""
    teacher = state.data.shared.get("moment teacher")
    outs = repair.repaired_nodes(state.best, state.kept)
    passes = (1 if teacher is not None and all(o in teacher for o in outs) else 2) * state.data.size("score")
    return repair.match_moments(state.an.model, state.best, state.kept, state.data, teacher)[0], passes, []


STEPS = (Step("mean_compensation", mean_compensation), Step("merge_duplicates", merge_duplicates),
         Step("least_squares", least_squares), Step("bn_reestimation", bn_reestimation),
         Step("moment_matching", moment_matching))


def recover(an: Analysis, removed, pruned: onnx.ModelProto, data: CalibData, stats: dict, reference,
            steps: tuple[Step, ...] = STEPS) -> tuple:
    """Training-free recovery: each step is kept only if the held-out fidelity loss drops.

    Returns the best model, the steps' report entries, and the image passes spent (through the
    whole network).
    """
    state = State(an, removed, data, stats, pruned, an.kept_channels(removed), {t: st.mean for t, st in stats.items()})
    best_loss = repair.held_out_loss(pruned, data, reference)
    held = data.size("holdout")
    passes, report = held, []
    for step in stage_iterate(steps, "recovery (steps)", len(steps)):
        candidate, cost, after = step.run(state)
        if candidate is not None:
            passes += held + cost
            loss = repair.held_out_loss(candidate, data, reference)
            accepted = loss < best_loss
            report.append({"step": step.name, "loss_before": best_loss, "loss_after": loss, "kept": accepted})
            if accepted:
                state.best, best_loss = candidate, loss
        report.extend(after)
    return state.best, report, passes
