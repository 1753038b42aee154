"""Functionality-oriented pruning (Qin et al., criteria.md §4): remove functional duplicates first.

Units are clustered by activation signature (similarity >= 0.8, see onnxprune/criteria/variety.py); in
each cluster the unit with the best l1 score is kept and the others are marked functionally
redundant. Scores: ``1 + rank`` for keepers and ``rank`` for redundant units (ranks in [0, 1]
within the group by l1), so every redundant unit goes before any keeper. The redundant fraction
``r_l = 1 - clusters / C_l`` of each group is reported (and used by `--allocate redundancy`).
"""

from __future__ import annotations

import numpy as np

from . import variety
from ..errors import OnnxPruneError
from .registry import REGISTRY, ScoreContext, register
from .blend import percentile_ranks


@register("functional", needs_data=True, stats=("signature",), cost="statistics")
def functional(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """Functional redundancy first, l1 within (needs calibration data for activation signatures)."""
    if not ctx.stats:
        raise OnnxPruneError("criterion 'functional' needs calibration data: give --calib PATH")
    an = ctx.analysis
    base = REGISTRY["l1"](ctx)
    result, redundant = {}, {}
    for gid, s in base.items():
        labels = variety.functional_clusters(variety.similarity(variety.unit_descriptors(an, gid, ctx.stats)))
        ranks = percentile_ranks(s)
        keepers = np.zeros(len(s), dtype=bool)
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            keepers[members[np.argmax(s[members])]] = True
        result[gid] = ranks + keepers
        redundant[gid] = round(1.0 - len(np.unique(labels)) / len(s), 4)
    ctx.extras["functional"] = {"redundant_fraction": redundant}
    return result
