"""Fidelity of a pruned model against its original on data: the numbers of `onnxprune eval`.

- classifier-like outputs ([N, K], K > 1): KL(softmax(original) || softmax(pruned)), top-1 and
  top-5 agreement, accuracy when labels exist;
- every output: cosine similarity and the relative squared error ``||p - o||^2 / ||o||^2``.
The *fidelity loss* used for accept/reject decisions is the sum over outputs of the KL (or the
cross-entropy with labels, for a single classifier output) or the relative squared error.
"""

from __future__ import annotations

import numpy as np


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    z = z.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _is_classifier(a: np.ndarray) -> bool:
    return a.ndim == 2 and a.shape[1] > 1


def fidelity_loss(reference: list[np.ndarray], outputs: list[np.ndarray], labels: np.ndarray | None = None) -> float:
    """Lower is better: KL (or CE with labels) for classifier outputs, relative squared error otherwise."""
    total = 0.0
    for ref, out in zip(reference, outputs):
        if not np.issubdtype(ref.dtype, np.floating):
            continue
        if _is_classifier(ref):
            lq = log_softmax(out)
            if labels is not None and len(reference) == 1:
                total += float(-lq[np.arange(len(labels)), labels].mean())
            else:
                lp = log_softmax(ref)
                total += float((np.exp(lp) * (lp - lq)).sum(axis=1).mean())
        else:
            denom = float((ref.astype(np.float64) ** 2).sum()) or 1.0
            total += float(((out.astype(np.float64) - ref) ** 2).sum()) / denom
    return total


def compare(reference: list[np.ndarray], outputs: list[np.ndarray], names: list[str],
            labels: np.ndarray | None = None) -> dict:
    """Per-output metrics of `outputs` against `reference` (see module docstring)."""
    result = {}
    for name, ref, out in zip(names, reference, outputs):
        entry = {}
        if np.issubdtype(ref.dtype, np.floating):
            fr, fo = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
            denom = np.linalg.norm(fr) * np.linalg.norm(fo)
            entry["cosine"] = float(fr @ fo / denom) if denom else float(np.array_equal(fr, fo))
            entry["rel_sq_error"] = float(((fo - fr) ** 2).sum() / max((fr ** 2).sum(), 1e-30))
        if _is_classifier(ref):
            lp, lq = log_softmax(ref), log_softmax(out)
            entry["kl"] = float((np.exp(lp) * (lp - lq)).sum(axis=1).mean())
            top_ref = ref.argmax(1)
            entry["top1_agreement"] = float((out.argmax(1) == top_ref).mean())
            k = min(5, ref.shape[1])
            top5 = np.argsort(-out, axis=1)[:, :k]
            entry["top5_agreement"] = float((top5 == top_ref[:, None]).any(axis=1).mean())
            entry["classes_predicted"] = [int(len(np.unique(top_ref))), int(len(np.unique(out.argmax(1))))]
            if labels is not None and len(labels) == len(ref):
                entry["accuracy_original"] = float((top_ref == labels).mean())
                entry["accuracy"] = float((out.argmax(1) == labels).mean())
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
    from . import activations, io
    from .calib import CalibConfig, CalibData, input_specs
    from .errors import OnnxPruneError
    from .graph import fixed_input_shapes, real_inputs

    ref_model, new_model = io.load(original), io.load(pruned)
    if [i.name for i in real_inputs(ref_model)] != [i.name for i in real_inputs(new_model)]:
        raise OnnxPruneError(f"{pruned}: its inputs differ from {original}'s")
    shapes = fixed_input_shapes(ref_model, input_shape)
    loaded = CalibData(CalibConfig(data, samples, batch_size, tuple(mean), tuple(std), scale, holdout=0.0),
                       input_specs(ref_model, shapes))
    ref = activations.outputs(ref_model, loaded, "all")
    out = activations.outputs(new_model, loaded, "all")
    names = [o.name for o in ref_model.graph.output]
    return {"original": original, "pruned": pruned, "data": data, "samples": loaded.size("all"),
            "outputs": compare(ref, out, names, loaded.split_labels("all"))}
