"""The verification stage: the checker and both models run (`verify`), then the fidelity of the
outputs: on the held-out calibration images where there are some, else on the random check inputs
(`recovery.datafree.Checker.fidelity`); the held-out metrics and their warnings with it."""

from __future__ import annotations

from ..calibration.activations import outputs
from ..calibration.stage import holdout_metrics
from ..errors import OnnxPruneError
from ..recovery import datafree
from . import approximate
from .evaluate import warnings_for
from .verify import verify


def run(run) -> None:
    """Verify `run.pruned`: sets `run.check`, `run.fidelity` and `run.holdout`; a collapsed output,
    or an approximation that is not faithful (`run.approximate`), is a note, or an error under
    `min_fidelity`."""
    config, prep = run.config, run.prep
    min_fidelity = config.verification.min_fidelity
    on = config.verification.verify
    run.check = verify(prep.original, run.pruned, prep.input_shapes, seed=config.scoring.seed) if on else None
    # random inputs are out of the data's distribution: the demo model at --ratio 0.5 with 128
    # images agreed with the original on 91% of its held-out images and looked collapsed on random ones
    held_out = outputs(run.pruned, run.data, "holdout") if run.reference is not None else None
    run.fidelity = None
    if on and (run.check is None or run.check.valid):
        run.fidelity = (datafree.fidelity(run.reference, held_out, [o.name for o in prep.original.graph.output],
                                          "held-out calibration") if held_out is not None
                        else run.checker.fidelity(run.pruned))
    run.holdout = holdout_metrics(run.pruned, run.data, run.reference, held_out) if held_out is not None else None
    holdout_notes = warnings_for(run.holdout) if run.holdout else []
    # the held-out warnings say it already where they apply (one class for every image)
    warning = None if holdout_notes else datafree.collapse_warning(run.fidelity, bool(config.calibration.calib))
    approx = approximate.note(run.approximate)   # the more specific cause: named first
    if approx and min_fidelity is not None:
        raise OnnxPruneError(approx.replace("structurally valid but", "not written:").replace(
            "; prune", f" (--min-fidelity {min_fidelity:g}); prune"))
    failure = datafree.fidelity_failure(run.fidelity, min_fidelity)
    if failure and min_fidelity is not None:
        raise OnnxPruneError(failure)
    if approx:
        run.ctx.notes.append(approx)
    if warning:
        run.ctx.notes.append(warning)
    run.ctx.notes.extend(holdout_notes)
