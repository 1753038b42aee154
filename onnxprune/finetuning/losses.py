"""The distillation loss: the pruned model (student) against the original (teacher) on the same inputs.

Per graph output, the kind the held-out decisions already read it as (`evaluate`):
- class scores (logits [N, K], or probabilities over axis 1 or the last axis, any rank: a
  classifier, a CTC recogniser's [N, T, K], a segmenter's [N, K, H, W]): KL(teacher || student)
  at temperature T per row, frame or pixel, times T^2 (Hinton et al.: keeps the gradient scale
  of the soft targets independent of T); probabilities are read as log-probabilities first;
- an output that is a Concat of parts (a YOLO head: boxes and Sigmoid scores): each part's
  relative squared error ``||s - t||^2 / ||t||^2``, a part of scores measured against at least
  every score at `evaluate.PART_SCORE_FLOOR` (as `evaluate._part_scale`);
- anything else: the relative squared error.
Plus the cross-entropy with the labels for a single classifier output when the data has labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..verification.evaluate import PART_SCORE_FLOOR, PROBABILITY_TOLERANCE, class_axis


@dataclass(frozen=True)
class OutputKind:
    """How one output is compared: `classes` = (class axis, probabilities?) or None; `parts` =
    (axis, [(start, size, is_score)]) or None."""

    classes: tuple[int, bool] | None = None
    parts: tuple[int, list] | None = None


def output_kinds(reference) -> list[OutputKind]:
    """The kind of every output, read from the original's held-out outputs (`evaluate.Reference`)."""
    kinds = []
    parts = getattr(reference, "parts", {})
    for i, ref in enumerate(reference):
        how = class_axis(ref)
        if how is not None or i not in parts:
            kinds.append(OutputKind(classes=how))
            continue
        axis, sizes = parts[i]
        pieces, start = [], 0
        for size in sizes:
            piece = np.take(ref, range(start, start + size), axis=axis)
            is_score = bool(piece.size and piece.min() >= -PROBABILITY_TOLERANCE
                            and piece.max() <= 1 + PROBABILITY_TOLERANCE)
            pieces.append((start, size, is_score))
            start += size
        kinds.append(OutputKind(parts=(axis, pieces)))
    return kinds


def _log_probs(x, axis: int, probabilities: bool, temperature: float):
    import torch

    z = torch.log(x.clamp_min(1e-12)) if probabilities else x
    return torch.log_softmax(z / temperature, dim=axis)


def _relative_se(s, t, floor: bool = False):
    energy = (t.double() ** 2).sum()
    lowest = t.numel() * PART_SCORE_FLOOR ** 2 if floor else 1e-12
    return ((s.double() - t.double()) ** 2).sum() / energy.clamp_min(lowest)


def distill_loss(student: list, teacher: list, kinds: list[OutputKind], temperature: float, labels=None):
    """The training loss of one batch (torch tensors; see module docstring)."""
    import torch

    total = 0.0
    for s, t, kind in zip(student, teacher, kinds):
        if not torch.is_floating_point(t):
            continue
        if kind.classes is not None:
            axis, probabilities = kind.classes
            lt = _log_probs(t, axis, probabilities, temperature)
            ls = _log_probs(s, axis, probabilities, temperature)
            kl = (lt.exp() * (lt - ls)).sum(dim=axis).mean()
            total = total + kl * temperature ** 2
            if labels is not None and len(student) == 1 and s.ndim == 2:
                total = total - _log_probs(s, axis, probabilities, 1.0)[torch.arange(len(labels)), labels].mean()
        elif kind.parts is not None:
            axis, pieces = kind.parts
            for start, size, is_score in pieces:
                total = total + _relative_se(s.narrow(axis, start, size), t.narrow(axis, start, size), is_score)
        else:
            total = total + _relative_se(s, t)
    return total


def feature_loss(student: list, teacher: list):
    """Mean over tensors of the relative squared error ``||s - t||^2 / ||t||^2`` (feature matching)."""
    if not student:
        return 0.0
    return sum(_relative_se(s, t) for s, t in zip(student, teacher)) / len(student)
