"""The calibration stage: load the data, stream the statistics the criterion and recovery need,
and record the original's outputs on the held-out split."""

from __future__ import annotations

import numpy as np
import onnx

from .. import criteria
from ..verification.evaluate import Reference, compare
from ..analysis.graph import batch_axes
from ..recovery.reconstruct import Teacher
from ..recovery.recover import moment_targets
from . import activations
from .calib import CalibConfig, CalibData, input_specs


def calibrate(prep, config: CalibConfig, criterion: str, recover: bool, variety: str) -> tuple:
    """Load calibration data, stream the statistics the criterion and recovery need, and record
    the original's outputs on the held-out split (the reference for every accept/reject decision)."""
    an = prep.analysis
    if config.path == "synthetic":
        from ..finetuning.synthetic import synthetic_calib
        data = synthetic_calib(prep.original, config, input_specs(prep.original, prep.input_shapes))
    else:
        data = CalibData(config, input_specs(prep.original, prep.input_shapes))
    stats = {}
    record = criteria.RECORDS.get(criterion)     # an unknown name is reported by the scoring stage
    if (record is not None and (record.needs_data or record.stats)) or recover:
        want = set(record.stats if record else ())
        if recover or variety != "off":
            want.add("signature")   # merge compensation and variety compare activation signatures
        stats = activations.collect(an.model, an.read_tensors(), data, "score",
                                    rank_samples=128 if record is not None and record.ranks else 0,
                                    want=frozenset(want), also=recovery_targets(an, data) if recover else None)
    reference = Reference.of(an, activations.outputs(an.model, data, "holdout")) if data.size("holdout") else None
    return data, stats, reference


RECORD_BATCH_BYTES = 512 << 20   # the most recovery's extra outputs may add to one calibration batch


def recovery_targets(an, data: CalibData):
    """(tensors, record) for `activations.collect(..., also=...)`, or None: what recovery reads
    of the original, taken from the calibration pass instead of passes of its own: the
    least-squares teacher's sampled targets (reconstruct.Teacher) and the moments at the outputs
    moment matching may repair (`data.shared["moment teacher"]`, recover.moment_targets; means
    and variances only: the criteria's statistics stay on the tensors they read).

    None where those outputs of one batch exceed RECORD_BATCH_BYTES: onnxruntime holds every
    requested output of a batch at once (ResNet-50 at batch 16, every conv output: 5.1 GB peak
    for the calibration pass instead of 3.0 GB), so there least squares and moment matching each
    run the original once when they first need it, as separate passes."""
    original = an.model
    teacher = Teacher.of(original, data)
    moment_outputs = moment_targets(original)
    wanted = list(dict.fromkeys([*teacher.candidates, *moment_outputs]))
    per_image = sum(4 * int(np.prod([d for d in an.shapes.get(o, [])[1:] if isinstance(d, int)] or [0]))
                    for o in wanted)
    if per_image * data.feed_batch > RECORD_BATCH_BYTES:
        return None
    tensors, teach = teacher.recorder(data)
    batch = batch_axes(original, {spec.name: [1, *spec.sample_shape] for spec in data.specs})
    moments = {o: activations.ChannelStats(1, frozenset({"sumsq"}), batch.get(o, 0)) for o in moment_outputs}
    data.shared["moment teacher"] = moments

    def record(k: int, outputs: dict) -> None:
        teach(k, {o: outputs[o] for o in tensors})
        for o, st in moments.items():
            st.update(outputs[o])

    return wanted, record


def holdout_metrics(model: onnx.ModelProto, data: CalibData, reference, held_out: list | None = None) -> dict:
    """`compare` of `model`'s held-out outputs (`held_out`, or run now) with the original's
    (`reference`), per output."""
    names = [o.name for o in model.graph.output]
    if held_out is None:
        held_out = activations.outputs(model, data, "holdout")
    return compare(reference, held_out, names, data.split_labels("holdout"))


def variety_of(config) -> str:
    """The variety mode in effect: as given (or set by the preset), else cluster for blend with
    data, else off (without data the variety's weight signatures lowered the repaired accuracy,
    docs/results.md)."""
    chosen = config.selection.variety
    return chosen or ("cluster" if config.scoring.criterion == "blend" and config.calibration.calib else "off")


def run(run) -> None:
    """The calibration stage of a pruning run: fills `run.data`, `run.stats`, `run.reference`."""
    c, config = run.config.calibration, run.config
    recover = bool(c.calib) and config.recovery.recover is not False
    calib_config = CalibConfig(c.calib, c.calib_samples, c.batch_size, tuple(c.mean), tuple(c.std), c.scale, c.holdout,
                               config.scoring.seed)
    run.data, run.stats, run.reference = calibrate(run.prep, calib_config, config.scoring.criterion, recover,
                                                   variety_of(config))
    run.passes["calibration"] = ((run.data.size("score") if run.stats else 0)
                                 + (run.data.size("holdout") if run.reference else 0))
