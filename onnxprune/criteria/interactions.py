"""Filter-wise interactions (SNPFI, Tang et al., criteria.md §6), on the mask sampler of §3.

Players are a group's units, the game is ``v(S) = -L(mask = 1_S)``. Sampling Bernoulli(1/2)
masks and fitting the additive model gives each unit's Banzhaf value (its importance, the
criterion `interactions`) and the group's *utilization strength* ``U = 1 - R^2`` of that fit on
held-out masks: the share of the loss variance carried by interactions of two or more units.
The `utilization` allocator prunes groups whose units act independently (low U) harder:
``rho_l = clip(kappa * (mean U / U_l), 0, 0.9)`` with kappa set by bisection for the MAC target.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import OnnxPruneError
from ..verification.evaluate import Reference
from ..runtime.masking import outputs_of
from .registry import ScoreContext, register
from .ensembles import first_batch, group_games

KEEP_PROB = 0.5


def games(ctx: ScoreContext, keep_prob: float = KEEP_PROB) -> dict[int, dict]:
    """The mask game of every prunable group (cached in ctx.extras)."""
    if "games" in ctx.extras:
        return ctx.extras["games"]
    if ctx.data is None:
        raise OnnxPruneError("filter interactions need calibration data: give --calib PATH")
    an = ctx.analysis
    gids = [g.id for g in an.groups if g.prunable]
    feeds = first_batch(ctx.data, 64)
    reference = Reference.of(an, outputs_of(an.model, feeds))
    rng = np.random.default_rng(ctx.seed)
    result, samples = group_games(an, gids, feeds, reference, lambda gid: int(
        ctx.options.get("ensemble_masks") or 4 * an.groups[gid].size), keep_prob, rng, "interaction games")
    ctx.extras["games"] = result
    ctx.extras["interactions"] = {"utilization": {gid: round(g["utilization"], 4) for gid, g in result.items()},
                                  "forward_samples": samples}
    return result


@register("interactions", needs_data=True, cost="forward passes")
def interactions(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """Banzhaf importance of each unit in its group's mask game (needs calibration data)."""
    return {gid: g["importance"] for gid, g in games(ctx).items()}


def banzhaf_interaction(v, n: int, i: int, j: int) -> float:
    """Exact pairwise Banzhaf interaction ``E_S[v(S+ij) - v(S+i) - v(S+j) + v(S)]`` over n players."""
    others = [k for k in range(n) if k not in (i, j)]
    total = 0.0
    for bits in itertools.product([0, 1], repeat=len(others)):
        z = np.zeros(n)
        z[others] = bits
        zi, zj, zij = z.copy(), z.copy(), z.copy()
        zi[i] = zj[j] = zij[i] = zij[j] = 1
        total += v(zij) - v(zi) - v(zj) + v(z)
    return total / 2 ** len(others)


def walsh_coefficient(v, n: int, subset: tuple[int, ...]) -> float:
    """Fourier (Walsh) coefficient of v in +-1 coding: ``E_x[v(x) * prod_{k in T} x_k]``."""
    total = 0.0
    for bits in itertools.product([0, 1], repeat=n):
        x = np.array(bits, dtype=float)
        total += v(x) * np.prod([2 * x[k] - 1 for k in subset])
    return total / 2 ** n
