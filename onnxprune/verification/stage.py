"""The verification stage: the checker and both models run (`verify`), then the fidelity of the
outputs on the check inputs (`recovery.datafree.Checker.fidelity`)."""

from __future__ import annotations

from ..errors import OnnxPruneError
from ..recovery import datafree
from .verify import verify


def run(run) -> None:
    """Verify `run.pruned`: sets `run.check` and `run.fidelity`; a collapsed output is a note, or an
    error under `min_fidelity`."""
    config, prep = run.config, run.prep
    min_fidelity = config.verification.min_fidelity
    on = config.verification.verify
    run.check = verify(prep.original, run.pruned, prep.input_shapes, seed=config.scoring.seed) if on else None
    run.fidelity = run.checker.fidelity(run.pruned) if on and (run.check is None or run.check.valid) else None
    warning = datafree.collapse_warning(run.fidelity, bool(config.calibration.calib))
    if warning or datafree.fidelity_failure(run.fidelity, min_fidelity):
        if min_fidelity is not None:
            raise OnnxPruneError(datafree.fidelity_failure(run.fidelity, min_fidelity))
        run.ctx.notes.append(warning)
