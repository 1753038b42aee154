"""The fidelity check that replaces the pruning oracle for groups pruned approximately.

For exact rules the rewritten model computes what the original computes with the removed
channels masked to zero (the oracle, `runtime.masking`). Where a group was pruned through an op
whose result changes with the channel count (`PruneConfig.approximate`: LayerNorm over channels,
a mean or max over channels, GRN), the two differ by the approximation alone; this check runs
both on seeded random inputs and reports, per float output, the cosine and the largest
difference relative to the masked model's largest value. The result is *faithful* when every
cosine reaches the threshold (``--min-fidelity`` where given, else `APPROX_COSINE`); the
pipeline names the groups, the figures and the verdict in the report, and an unfaithful result
is a note (an error under ``--min-fidelity``).
"""

from __future__ import annotations

import numpy as np
import onnx

from ..analysis.groups import Analysis
from ..runtime.masking import MaskRunner
from ..runtime.sessions import random_feeds, session
from .evaluate import flat_cosine, flat_pair

APPROX_COSINE = 0.99   # an approximation below it is flagged as not faithful
SAMPLES = 4            # seeded random inputs both models run on


def approximated_groups(analysis: Analysis, removed: np.ndarray) -> list[dict]:
    """The groups that lose units and were admitted through an approximation: name, id, units
    removed of size, and why each is approximate (`Group.approximate`)."""
    gone = np.zeros(len(analysis.unit_blocked), dtype=bool)
    gone[np.asarray(removed, dtype=np.int64)] = True
    rows = []
    for g in analysis.groups:
        lost = int(gone[analysis.group_units[g.id]].sum())
        if g.approximate and lost:
            rows.append({"name": g.name, "id": g.id, "removed": lost, "size": g.size, "why": list(g.approximate)})
    return rows


def check(analysis: Analysis, removed: np.ndarray, rewritten: onnx.ModelProto, input_shapes: dict,
          seed: int = 0, min_cosine: float | None = None) -> dict | None:
    """Compare `rewritten` (the rewrite of `analysis.model` without `removed`, before any recovery)
    with the masked original; None when no approximate group lost units.

    Returns {"groups", "inputs", "samples", "threshold", "outputs": {name: {"cosine",
    "max_rel_diff"}}, "faithful"}; where the models cannot run, no outputs, faithful False and
    the "error".
    """
    groups = approximated_groups(analysis, removed)
    if not groups:
        return None
    gone = np.zeros(len(analysis.unit_blocked), dtype=bool)
    gone[np.asarray(removed, dtype=np.int64)] = True
    lost = [g.id for g in analysis.groups if gone[analysis.group_units[g.id]].any()]
    masks = {gid: (~gone[analysis.group_units[gid]]).astype(np.float32) for gid in lost}
    threshold = APPROX_COSINE if min_cosine is None else float(min_cosine)
    names = [o.name for o in analysis.model.graph.output]
    feeds = random_feeds(analysis.model, input_shapes, batch=SAMPLES, seed=seed)
    try:
        masked = MaskRunner(analysis, lost).run(feeds, [masks])[0]
        pruned = session(rewritten).run(names, feeds)
    except Exception as exc:  # noqa: BLE001 - a model onnxruntime cannot run (custom ops): not measured
        return {"groups": groups, "inputs": "random", "samples": SAMPLES, "threshold": threshold, "outputs": {},
                "faithful": False, "error": str(exc).splitlines()[0][:200]}
    outputs = {}
    for name, a, b in zip(names, masked, pruned):
        if (pair := flat_pair(a, b)) is None:
            continue
        fa, fb = pair
        cos = flat_cosine(fa, fb)
        scale = float(np.max(np.abs(fa))) if fa.size else 0.0
        rel = float(np.max(np.abs(fa - fb)) / scale) if scale > 0 else float(np.max(np.abs(fb), initial=0.0))
        outputs[name] = {"cosine": cos, "max_rel_diff": rel}
    faithful = bool(outputs) and all(o["cosine"] >= threshold for o in outputs.values())
    return {"groups": groups, "inputs": "random", "samples": SAMPLES, "threshold": threshold,
            "outputs": outputs, "faithful": bool(faithful)}


def note(result: dict | None) -> str | None:
    """The report's line for an unfaithful approximation (None when faithful or not used)."""
    if not result or result["faithful"]:
        return None
    if not result["outputs"]:
        return (f"the pruned model is structurally valid but the approximation is not faithful: it could not be "
                f"measured ({result.get('error', 'no float output')}) for {len(result['groups'])} group(s) pruned "
                f"through ops whose result changes with the channel count (--approximate); drop --approximate")
    worst = min(result["outputs"].items(), key=lambda kv: kv[1]["cosine"])
    return (f"the pruned model is structurally valid but the approximation is not faithful: {len(result['groups'])} "
            f"group(s) pruned through ops whose result changes with the channel count (--approximate) move output "
            f"'{worst[0]}' to cosine {worst[1]['cosine']:.3f} against the masked original on {result['samples']} "
            f"random inputs (threshold {result['threshold']:g}); prune fewer channels there (--ignore) or drop "
            f"--approximate")
