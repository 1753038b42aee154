"""The calibration stage: load the data, stream the statistics the criterion and recovery need,
and record the original's outputs on the held-out split."""

from __future__ import annotations

import onnx

from .. import criteria
from ..verification.evaluate import Reference, compare
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
    if criterion in criteria.DATA_CRITERIA or criterion == "blend" or recover:
        want = set(criteria.STATS_NEEDED.get(criterion, set()))
        if recover or variety != "off":
            want.add("signature")   # merge compensation and variety compare activation signatures
        stats = activations.collect(an.model, an.read_tensors(), data, "score",
                                    rank_samples=128 if criterion in criteria.RANK_CRITERIA else 0,
                                    want=frozenset(want))
    reference = Reference.of(an, activations.outputs(an.model, data, "holdout")) if data.size("holdout") else None
    return data, stats, reference

def holdout_metrics(model: onnx.ModelProto, data: CalibData, reference) -> dict:
    """`compare` of `model`'s held-out outputs with the original's (`reference`), per output."""
    names = [o.name for o in model.graph.output]
    return compare(reference, activations.outputs(model, data, "holdout"), names, data.split_labels("holdout"))
