"""Fidelity of a pruned model against its original on data: the numbers of `onnxprune eval`.

- classifier-like outputs: logits [N, K] (K > 1), or probabilities (values in [0, 1] that sum to 1
  over the last axis or axis 1, any rank: a classifier ending in Softmax, a CTC recogniser's
  [N, T, K], a segmenter's [N, K, H, W]): KL(original || pruned) per row or position, top-1 and
  top-5 agreement, accuracy when labels exist. Probabilities are compared as they are: softmax
  over them again (as if they were logits) squeezes [0.99, 0.01] to [0.73, 0.27] and hides most
  of the damage;
- every output: cosine similarity and the relative squared error ``||p - o||^2 / ||o||^2``.
The *fidelity loss* used for accept/reject decisions is the sum over outputs of the KL (or the
cross-entropy with labels, for a single classifier output) or the relative squared error.

An output that is a Concat of parts of different kinds (a YOLOv8 head: 4 box coordinates in
pixels and the class scores of a Sigmoid, concatenated on axis 1) is compared part by part
(`output_parts`, `Reference`): over the whole tensor the boxes' squared error, hundreds of times
the scores', hides a detector whose scores all fell to zero (cosine 0.9998 for the whole output).
A part of scores is measured against at least the energy of every score at PART_SCORE_FLOOR.
"""

from __future__ import annotations

import numpy as np

from ..analysis.graph import attr


def flat_pair(a, b) -> tuple[np.ndarray, np.ndarray] | None:
    """Two outputs as flat float64 vectors, or None where they cannot be compared element by
    element (not floating point, or different shapes: data-dependent detections)."""
    if not np.issubdtype(np.asarray(a).dtype, np.floating) or np.shape(a) != np.shape(b):
        return None
    return np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()


def flat_cosine(fa: np.ndarray, fb: np.ndarray) -> float:
    """Cosine similarity of two flat vectors; where a norm is zero or not finite, 1.0 if they are
    equal, else 0.0."""
    denom = np.linalg.norm(fa) * np.linalg.norm(fb)
    return float(fa @ fb / denom) if denom > 0 and np.isfinite(denom) else float(np.array_equal(fa, fb))


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    z = z.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


PROBABILITY_TOLERANCE = 1e-3   # |sum - 1| allowed for an output to count as probabilities
LOG_FLOOR = 1e-12              # probabilities are clipped here before the log (a pruned zero is not -inf)


def class_axis(a: np.ndarray) -> tuple[int, bool] | None:
    """How to read an output as class scores: (class axis, already probabilities?) or None.

    Probabilities: every value in [0, 1] and sums of 1 over the last axis or axis 1 (of length > 1).
    Logits: a 2-D [N, K] output (K > 1) that is not probabilities. Anything else is no classifier.
    """
    if not np.issubdtype(a.dtype, np.floating) or a.ndim < 2 or a.size == 0:
        return None
    if a.min() >= -PROBABILITY_TOLERANCE and a.max() <= 1 + PROBABILITY_TOLERANCE:
        for axis in dict.fromkeys((a.ndim - 1, 1)):
            if a.shape[axis] > 1 and np.abs(a.sum(axis=axis, dtype=np.float64) - 1).max() < PROBABILITY_TOLERANCE:
                return axis, True
    return (1, False) if a.ndim == 2 and a.shape[1] > 1 else None


def class_log_probs(a: np.ndarray, axis: int, probabilities: bool) -> np.ndarray:
    """[rows, K] log-probabilities: the class axis moved last, every other axis a row."""
    rows = np.moveaxis(a.astype(np.float64), axis, -1).reshape(-1, a.shape[axis])
    return np.log(np.clip(rows, LOG_FLOOR, None)) if probabilities else log_softmax(rows)


_REFERENCE_CACHE: dict[int, tuple] = {}   # id -> (reference array, shape, sampled values, ClassRows or None)


class ClassRows:
    """A reference output read as class probabilities: `how` (class_axis), the rows' log-probs
    `lp`, probabilities `p`, the mean of sum(p log p) over rows (KL's constant part) and the
    top-1 class of every row `top`."""

    def __init__(self, ref: np.ndarray, how: tuple[int, bool]):
        self.how = how
        self.lp = class_log_probs(ref, *how)
        self.p = np.exp(self.lp)
        self.plogp = float((self.p * self.lp).sum(axis=1).mean())
        self.top = self.lp.argmax(1)

    def log_probs(self, out: np.ndarray) -> np.ndarray:
        """`out` read the same way: [rows, K] log-probabilities."""
        return class_log_probs(out, *self.how)

    def kl(self, lq: np.ndarray) -> float:
        """Mean over rows of KL(reference || out), given out's log-probs `lq`."""
        return self.plogp - float(np.dot(self.p.ravel(), lq.ravel())) / len(lq)


def reference_rows(ref: np.ndarray) -> ClassRows | None:
    """`ref` as class probabilities (None: no classifier output), cached: one reference is compared
    with many masked outputs (a sensitivity probe: every group x every ratio), and reading a CTC
    recogniser's [16, 40, 6625] probabilities costs more than the loss itself."""
    probe = ref.ravel()[::max(1, ref.size // 64)].copy()   # catches an array refilled in place
    hit = _REFERENCE_CACHE.get(id(ref))
    # the cached array is held, so a live id is never reused by another array
    if hit is None or hit[0] is not ref or hit[1] != ref.shape or not np.array_equal(hit[2], probe):
        how = class_axis(ref)
        hit = (ref, ref.shape, probe, None if how is None else ClassRows(ref, how))
        if len(_REFERENCE_CACHE) >= 2:     # each entry holds float64 copies: keep few
            _REFERENCE_CACHE.pop(next(iter(_REFERENCE_CACHE)))
        _REFERENCE_CACHE[id(ref)] = hit
    return hit[3]


def output_parts(model, shapes: dict) -> dict[int, tuple[int, list[int]]]:
    """The graph outputs made by a Concat of several parts: {output index: (axis, part sizes)}.

    Nested Concats on the same axis are flattened; axis 0 (the batch) and parts of unknown size
    are not split. `shapes`: tensor name -> static shape (Analysis.shapes)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    result = {}
    for index, output in enumerate(model.graph.output):
        node = producer.get(output.name)
        rank = len(shapes.get(output.name) or [])
        if node is None or node.op_type != "Concat" or not rank:
            continue
        axis = attr(node, "axis", 0) % rank
        stack, sizes = list(reversed(node.input)), []
        while stack:
            name = stack.pop()
            inner = producer.get(name)
            if inner is not None and inner.op_type == "Concat" and attr(inner, "axis", 0) % rank == axis:
                stack.extend(reversed(inner.input))
                continue
            shape = shapes.get(name) or []
            sizes.append(shape[axis] if len(shape) == rank and isinstance(shape[axis], int) else None)
        if axis and len(sizes) > 1 and all(sizes):
            result[index] = (axis, sizes)
    return result


class Reference(list):
    """The original's outputs (a list, as `outputs` lists) with the `parts` of each output
    (`output_parts`) that the losses and `compare` read one by one."""

    @classmethod
    def of(cls, analysis, arrays) -> "Reference":
        """`arrays`, the outputs of `analysis.model`, with the parts its graph gives them."""
        return cls(arrays, output_parts(analysis.model, analysis.shapes))

    def __init__(self, arrays, parts: dict[int, tuple[int, list[int]]] | None = None):
        super().__init__(arrays)
        self.parts = {i: p for i, p in (parts or {}).items()
                      if i < len(self) and self[i].ndim > p[0] and self[i].shape[p[0]] == sum(p[1])}
        # the reference's slices, made once: the loss caches read them by identity
        self.slices = {i: [np.ascontiguousarray(self[i][_part(axis, start, size)])
                           for start, size in _starts(sizes)] for i, (axis, sizes) in self.parts.items()}
        self.scales = {i: [_part_scale(piece) for piece in pieces] for i, pieces in self.slices.items()}


PART_SCORE_FLOOR = 0.05   # a score part's error is relative to at least every score at this value


def _part_scale(piece: np.ndarray) -> float:
    """What a part's squared error is divided by: its energy, but for scores (values in [0, 1]: a
    Sigmoid's) at least that of every score at PART_SCORE_FLOOR. Held-out images without objects
    leave a detector's scores near zero everywhere; relative to that energy a change from 0.001
    to 0.003 counted as much as losing every detection, and the decisions chased it (YOLOv8n:
    the default preset kept no detection)."""
    energy = float((piece.astype(np.float64) ** 2).sum())
    if piece.size and piece.min() >= -PROBABILITY_TOLERANCE and piece.max() <= 1 + PROBABILITY_TOLERANCE:
        energy = max(energy, piece.size * PART_SCORE_FLOOR ** 2)
    return energy or 1.0


def _starts(sizes):
    return list(zip(np.cumsum([0] + list(sizes[:-1])).tolist(), sizes))


def _part(axis: int, start: int, size: int) -> tuple:
    return (slice(None),) * axis + (slice(start, start + size),)


def _pieces(reference: list[np.ndarray], outputs: list[np.ndarray]):
    """(output index, part label or None, reference array, output array, the squared error's
    divisor for a part or None) for every output, or for every part of an output with parts
    (whole outputs read as classifiers are not split)."""
    parts = getattr(reference, "parts", {})
    for i, (ref, out) in enumerate(zip(reference, outputs)):
        if i in parts and out.shape == ref.shape and reference_rows(ref) is None:
            axis, sizes = parts[i]
            for (start, size), piece, scale in zip(_starts(sizes), reference.slices[i], reference.scales[i]):
                label = "[" + ":, " * axis + f"{start}:{start + size}]"
                yield i, label, piece, out[_part(axis, start, size)], scale
        else:
            yield i, None, ref, out, None


def _losses(reference: list[np.ndarray], outputs: list[np.ndarray], labels, answers: bool) -> tuple[float, float | None]:
    """(fidelity loss, top-1 disagreement summed over classifier outputs or None without any);
    the disagreement only with `answers` (the fidelity loss alone is the hot path: every probe)."""
    total, disagreement = 0.0, None
    for _, _, ref, out, scale in _pieces(reference, outputs):
        if not np.issubdtype(ref.dtype, np.floating):
            continue
        rows = reference_rows(ref) if out.shape == ref.shape else None
        if rows is not None:
            lq = rows.log_probs(out)
            if labels is not None and len(reference) == 1 and len(lq) == len(labels):
                total += float(-lq[np.arange(len(labels)), labels].mean())
            else:
                total += rows.kl(lq)
            if answers:
                disagreement = (disagreement or 0.0) + float((lq.argmax(1) != rows.top).mean())
        elif out.shape != ref.shape:
            # a data-dependent count (detections after NMS) changed: the relative change of the count
            total += abs(out.size - ref.size) / max(ref.size, 1)
        else:
            denom = scale or float((ref.astype(np.float64) ** 2).sum()) or 1.0
            total += float(((out.astype(np.float64) - ref) ** 2).sum()) / denom
    return total, disagreement


def fidelity_loss(reference: list[np.ndarray], outputs: list[np.ndarray], labels: np.ndarray | None = None) -> float:
    """Lower is better: KL (or CE with labels) for classifier outputs, relative squared error otherwise."""
    return _losses(reference, outputs, labels, answers=False)[0]


def loss_names(reference: list[np.ndarray], labels: np.ndarray | None = None) -> dict[str, str]:
    """What `fidelity_loss` and `choice_loss` measure on this reference, in words, for the report:
    {"fidelity": e.g. "KL to the original's class scores", "choice": ...}."""
    kinds = []
    for _, _, ref, _, _ in _pieces(reference, reference):
        if not np.issubdtype(ref.dtype, np.floating):
            continue
        if reference_rows(ref) is None:
            kind = "relative squared error"
        elif labels is not None and len(reference) == 1:
            kind = "cross-entropy with the labels"
        else:
            kind = "KL to the original's class scores"
        if kind not in kinds:
            kinds.append(kind)
    fidelity = " + ".join(kinds) or "none"
    classifier = any(k != "relative squared error" for k in kinds)
    choice = (f"top-1 disagreement with the original + {CHECK_LOSS_WEIGHT:g} x ({fidelity})" if classifier
              else fidelity)
    return {"fidelity": fidelity, "choice": choice}


CHECK_LOSS_WEIGHT = 0.01   # the fidelity loss's weight behind the top-1 disagreement in `choice_loss`


def choice_loss(reference: list[np.ndarray], outputs: list[np.ndarray], labels: np.ndarray | None = None) -> float:
    """The loss the order check ranks its candidates by: the top-1 disagreement with the original
    summed over classifier outputs (per row, frame or pixel; with labels too, as the report's
    held-out agreement), plus CHECK_LOSS_WEIGHT x `fidelity_loss` (a tie-break); a model without
    classifier outputs gets its fidelity loss as it is.

    Why not the fidelity loss alone: among candidates whose KL lies close together, the KL follows
    the probability drift on samples the original is unsure of, the top-1 answer follows what a
    user sees. PaddleOCR's direction classifier, 40 pruned variants: Kendall tau against
    agreement on new crops 0.12 for the held-out KL, 0.68 for the held-out disagreement.
    """
    fidelity, disagreement = _losses(reference, outputs, labels, answers=True)
    return fidelity if disagreement is None else disagreement + CHECK_LOSS_WEIGHT * fidelity


def compare(reference: list[np.ndarray], outputs: list[np.ndarray], names: list[str],
            labels: np.ndarray | None = None) -> dict:
    """Per-output metrics of `outputs` against `reference` (see module docstring)."""
    result = {}
    for i, label, ref, out, _ in _pieces(reference, outputs):
        name = names[i] if label is None else f"{names[i]}{label}"
        entry = {}
        if out.shape != ref.shape:   # data-dependent dims (detections): the shapes, no fidelity numbers
            result[name] = {"shape": list(ref.shape), "pruned_shape": list(out.shape)}
            continue
        if np.issubdtype(ref.dtype, np.floating):
            fr, fo = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
            denom = np.linalg.norm(fr) * np.linalg.norm(fo)
            entry["cosine"] = float(fr @ fo / denom) if denom else float(np.array_equal(fr, fo))
            entry["rel_sq_error"] = float(((fo - fr) ** 2).sum() / max((fr ** 2).sum(), 1e-30))
        rows = reference_rows(ref) if out.shape == ref.shape else None
        if rows is not None:     # per sample for [N, K]; per position (frame, pixel) for more axes
            lp, lq = rows.lp, rows.log_probs(out)
            entry["kl"] = rows.kl(lq)
            top_ref, top_out = rows.top, lq.argmax(1)
            entry["top1_agreement"] = float((top_out == top_ref).mean())
            k = min(5, lp.shape[1])
            top5 = np.argsort(-lq, axis=1)[:, :k]
            entry["top5_agreement"] = float((top5 == top_ref[:, None]).any(axis=1).mean())
            entry["classes_predicted"] = [int(len(np.unique(top_ref))), int(len(np.unique(top_out)))]
            if labels is not None and len(labels) == len(lp):
                entry["accuracy_original"] = float((top_ref == labels).mean())
                entry["accuracy"] = float((top_out == labels).mean())
        result[name] = entry
    return result


def warnings_for(metrics: dict, samples: str = "held-out samples") -> list[str]:
    """Plain-language warnings about a pruned classifier's metrics (`compare`'s result) on `samples`."""
    notes = []
    for name, entry in metrics.items():
        before, after = entry.get("classes_predicted", (0, 0))
        if after == 1 < before:
            notes.append(f"output '{name}': the pruned model predicts one class for every {samples[:-1]} (the "
                         f"original predicts {before}): pruned too far; try a smaller ratio or target, recovery (on "
                         "by default with --calib), another criterion (with --calib: mean_act, hrank, blend), or "
                         "fine-tuning")
        elif entry.get("top1_agreement", 1.0) < 0.5:
            notes.append(f"output '{name}': the pruned model agrees with the original on only "
                         f"{entry['top1_agreement']:.0%} of the {samples}; try a smaller ratio or target")
    return notes


def evaluate_files(original: str, pruned: str, data: str, samples: int = 100000, batch_size: int = 64,
                   mean=(0.0,), std=(1.0,), scale: float = 1 / 255, input_shape: dict | None = None) -> dict:
    """Run two model files on the same data and compare them (the `onnxprune eval` command)."""
    from ..calibration import activations
    from .. import io
    from ..calibration.calib import CalibConfig, CalibData, input_specs
    from ..errors import OnnxPruneError
    from ..analysis.graph import fixed_input_shapes, infer_shapes, real_inputs

    ref_model, new_model = io.load(original), io.load(pruned)
    if [i.name for i in real_inputs(ref_model)] != [i.name for i in real_inputs(new_model)]:
        raise OnnxPruneError(f"{pruned}: its inputs differ from {original}'s")
    shapes = fixed_input_shapes(ref_model, input_shape)
    loaded = CalibData(CalibConfig(data, samples, batch_size, tuple(mean), tuple(std), scale, holdout=0.0),
                       input_specs(ref_model, shapes))
    try:
        parts = output_parts(ref_model, infer_shapes(ref_model, shapes))
    except Exception:   # noqa: BLE001 - shapes are only needed to split Concat outputs into parts
        parts = {}
    ref = Reference(activations.outputs(ref_model, loaded, "all"), parts)
    out = activations.outputs(new_model, loaded, "all")
    names = [o.name for o in ref_model.graph.output]
    return {"original": original, "pruned": pruned, "data": data, "samples": loaded.size("all"),
            "outputs": compare(ref, out, names, loaded.split_labels("all"))}
