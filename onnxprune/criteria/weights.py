"""Data-free criteria computed from weights (criteria.md §7): l1, l2, fpgm, bn_scale, random.

- l1: ``s_i = sum |W_i|`` (Li et al., ICLR 2017); l2: ``s_i = ||W_i||_2``;
- fpgm: ``s_i = sum_j ||W_i - W_j||_2`` (He et al., CVPR 2019): filters near the geometric median
  of their layer are the most replaceable and score lowest;
- bn_scale: ``|gamma_c|`` of the BatchNormalization reading the channel (Network Slimming);
- random: uniform scores from the seed (a control).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

from ..analysis.graph import GraphIndex
from ..analysis.ops import is_batchnorm, rule_for
from .registry import ScoreContext, register


def filters(node, index: GraphIndex) -> np.ndarray:
    """The weights of each output channel of a source node, one row per channel (its rule knows the layout)."""
    return rule_for(node).filters(node, index.const(node.input[1]))


def sum_over_tensors(ctx: ScoreContext, per_tensor) -> dict[int, np.ndarray]:
    """For every prunable group, the sum of its tensors' max-normalised per-channel scores.

    Args:
        per_tensor: function(tensor name) -> score per channel of that tensor, or None to skip it.
    """
    an = ctx.analysis
    result = {}
    for g in an.groups:
        if not g.prunable:
            continue
        scores = np.zeros(g.size)
        for tensor in g.tensors:
            s = per_tensor(tensor)
            if s is not None:
                _accumulate(an, g.id, tensor, np.asarray(s, dtype=np.float64), scores)
        result[g.id] = scores
    return result


def reduce_members(ctx: ScoreContext, per_channel) -> dict[int, np.ndarray]:
    """Sum max-normalised per-filter scores of every producer into its group's units.

    Args:
        per_channel: function(source node, filter matrix) -> score per output channel.
    """
    an = ctx.analysis
    index = GraphIndex(an.model)

    def per_tensor(tensor):
        node = an.source_nodes.get(tensor)
        return None if node is None else per_channel(node, filters(node, index))

    return sum_over_tensors(ctx, per_tensor)


def _accumulate(an, gid, tensor, s, scores) -> None:
    top = np.max(np.abs(s)) if s.size else 0.0
    s = s / top if top > 0 else s
    pos = an.positions(gid, tensor)
    valid = pos >= 0
    np.add.at(scores, pos[valid], s[valid])


@register("l1")
def l1(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """L1 norm of each filter."""
    return reduce_members(ctx, lambda node, f: np.abs(f).sum(axis=1, dtype=np.float64))


@register("l2")
def l2(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """L2 norm of each filter."""
    return reduce_members(ctx, lambda node, f: np.sqrt(np.einsum("ij,ij->i", f, f, dtype=np.float64)))


@register("fpgm")
def fpgm(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """Sum of distances to the other filters of the layer (geometric-median criterion)."""
    return reduce_members(ctx, lambda node, f: cdist(f.astype(np.float64), f.astype(np.float64)).sum(axis=1))


@register("bn_scale")
def bn_scale(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """|gamma| of the BatchNormalization nodes reading the group's channels (l2 where there is none)."""
    an = ctx.analysis
    index = GraphIndex(an.model)
    fallback = None
    result = {}
    for g in an.groups:
        if not g.prunable:
            continue
        scores = np.zeros(g.size)
        found = False
        for tensor in g.tensors:
            for node, slot in index.consumers.get(tensor, []):
                if is_batchnorm(node) and slot == 0:
                    gamma = index.const(node.input[1])
                    if gamma is not None:
                        _accumulate(an, g.id, tensor, np.abs(gamma.astype(np.float64)), scores)
                        found = True
        if not found:
            if fallback is None:
                fallback = l2(ctx)
                ctx.notes.append("bn_scale: groups without BatchNormalization were scored by l2")
            scores = fallback[g.id]
        result[g.id] = scores
    return result


@register("random")
def random(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """Uniform random scores from `ctx.seed` (reproducible)."""
    rng = np.random.default_rng(ctx.seed)
    return {g.id: rng.random(g.size) for g in ctx.analysis.groups if g.prunable}
