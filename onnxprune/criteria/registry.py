"""The criteria registry: name -> function(context) -> {group id: importance per unit (higher = keep)}.

Every criterion module registers its functions here with `register`; `onnxprune.criteria`
imports those modules, so importing the package fills the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..analysis.groups import Analysis


@dataclass
class ScoreContext:
    """What criteria may read: the analysis, a seed, and (later stages) calibration statistics."""

    analysis: Analysis
    seed: int = 0
    stats: dict = field(default_factory=dict)      # tensor -> activations.ChannelStats (with --calib)
    data: object = None                             # calib.CalibData (with --calib)
    options: dict = field(default_factory=dict)     # ratio, preset knobs
    extras: dict = field(default_factory=dict)      # what criteria report back (blend weights, U_l, ...)
    notes: list[str] = field(default_factory=list)


Criterion = Callable[[ScoreContext], dict[int, np.ndarray]]


@dataclass(frozen=True)
class Record:
    """A registered criterion: its function and what it needs before it can run."""

    name: str
    fn: Criterion
    needs_data: bool = False              # needs calibration data (fails without --calib)
    stats: frozenset = frozenset()        # optional activation statistics it reads (activations.ChannelStats.want)
    ranks: bool = False                   # reads activation-map ranks (HRank's rank samples)
    cost: str = "weights"                 # what scoring costs: weights, statistics, or forward passes


RECORDS: dict[str, Record] = {}
REGISTRY: dict[str, Criterion] = {}       # name -> function, what `score` and the blend call


def register(name: str, *, needs_data: bool = False, stats: tuple[str, ...] = (), ranks: bool = False,
             cost: str = "weights"):
    """Decorator adding a criterion to the registry under `name`, with what it needs."""
    def wrap(fn: Criterion) -> Criterion:
        RECORDS[name] = Record(name, fn, needs_data, frozenset(stats), ranks, cost)
        REGISTRY[name] = fn
        return fn
    return wrap


def names() -> list[str]:
    """Criterion names, as offered by the CLI."""
    return list(REGISTRY)


def score(name: str, ctx: ScoreContext) -> dict[int, np.ndarray]:
    """Run criterion `name` on every prunable group."""
    if name not in REGISTRY:
        raise KeyError(name)
    return REGISTRY[name](ctx)
