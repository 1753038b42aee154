"""Criteria registry: name -> function(context) -> {group id: importance per unit (higher = keep)}.

Every criterion scores the units of each prunable group in the group's canonical order. Scores
of a coupled group are reduced over its members: each member's per-channel scores are
normalised by their maximum and summed into the units they belong to.
"""

from __future__ import annotations

from . import activations, blend, ensembles, functional, interactions, thinet, weights  # noqa: F401  (each registers its criteria)
from .registry import REGISTRY, Criterion, ScoreContext, names, register, score  # noqa: F401  (the package's API)

DATA_CRITERIA = ("mean_act", "apoz", "entropy", "hrank", "thinet", "ensemble", "functional", "interactions")
# the optional activation statistics each criterion reads (activations.ChannelStats.want)
STATS_NEEDED = {"mean_act": {"abs"}, "apoz": {"zeros"}, "entropy": {"pooled"}, "hrank": set(), "thinet": set(), "ensemble": set(),
                "blend": {"abs", "zeros", "pooled", "signature"}, "functional": {"signature"},
                "interactions": set()}
RANK_CRITERIA = ("hrank", "blend")
