"""Criteria registry: name -> function(context) -> {group id: importance per unit (higher = keep)}.

Every criterion scores the units of each prunable group in the group's canonical order. Scores
of a coupled group are reduced over its members: each member's per-channel scores are
normalised by their maximum and summed into the units they belong to.
"""

from __future__ import annotations

from . import activations, blend, ensembles, functional, interactions, thinet, weights  # noqa: F401  (each registers its criteria)
from .registry import RECORDS, REGISTRY, Criterion, Record, ScoreContext, names, register, score  # noqa: F401  (the package's API)

# derived from the records (one place per criterion: its @register line)
DATA_CRITERIA = tuple(r.name for r in RECORDS.values() if r.needs_data)
STATS_NEEDED = {r.name: set(r.stats) for r in RECORDS.values() if r.needs_data or r.stats}
RANK_CRITERIA = tuple(r.name for r in RECORDS.values() if r.ranks)
