"""ThiNet (Luo et al., ICCV 2017): greedy channel selection by the next layer's reconstruction error.

For every consumer (Conv with group 1, Gemm) of a group's tensors, sample outputs
(image, output channel, position) and compute each input channel's contribution ``x^_c`` to them.
Removing a set T changes those outputs by ``sum_{c in T} x^_c``; ThiNet grows T greedily, each
time adding the channel that keeps ``|| sum_{c in T} x^_c ||^2`` smallest. The importance of a unit
is its position in that removal order (removed first = least important).
"""

from __future__ import annotations

import numpy as np

from ..calibration.activations import with_outputs
from ..errors import OnnxPruneError
from ..analysis.graph import GraphIndex
from ..analysis.ops import rule_or_default
from ..recovery.reconstruct import out_spatial, im2col_rows
from ..runtime.sessions import session
from .registry import ScoreContext, register

SAMPLES_PER_IMAGE = 8
MAX_IMAGES = 64


def contributions(node, w: np.ndarray, x: np.ndarray, rng) -> np.ndarray:
    """[C, M] contribution of each input channel of `node` to M sampled output values."""
    rule = rule_or_default(node)
    if not rule.patch_rows:
        b = rule.filters(node, w)                                      # [O, K]
        o = rng.integers(0, b.shape[0], size=(x.shape[0], SAMPLES_PER_IMAGE))
        n = np.repeat(np.arange(x.shape[0]), SAMPLES_PER_IMAGE)
        return (x[n].T * b[o.ravel()].T)                               # [K, M]
    n_img, c = x.shape[0], x.shape[1]
    spatial = out_spatial(node, x.shape, w.shape)                 # Conv1d, Conv2d, Conv3d
    n = np.repeat(np.arange(n_img), SAMPLES_PER_IMAGE)
    flat = rng.integers(0, int(np.prod(spatial, dtype=np.int64)), size=len(n))
    rows = im2col_rows(x, node, w.shape, (n, *np.unravel_index(flat, spatial))).reshape(len(n), c, -1)
    o = rng.integers(0, w.shape[0], size=len(n))
    return np.einsum("mck,mck->cm", rows, w.reshape(w.shape[0], c, -1)[o])


def greedy_order(v: np.ndarray) -> np.ndarray:
    """Removal order of the rows of `v` ([units, samples]) minimising ||sum of removed rows||^2."""
    n = v.shape[0]
    gram = v @ v.T
    total = np.zeros(n)          # <s, v_c> for the current sum s
    alive = np.ones(n, dtype=bool)
    order = []
    for _ in range(n):
        cost = 2 * total + np.diag(gram)
        cost[~alive] = np.inf
        c = int(np.argmin(cost))
        order.append(c)
        alive[c] = False
        total += gram[c]
    return np.array(order)


@register("thinet", needs_data=True, cost="forward passes")
def thinet(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """Importance from ThiNet's greedy removal order (needs calibration data)."""
    if ctx.data is None:
        raise OnnxPruneError("criterion 'thinet' needs calibration data: give --calib PATH (images, .npy/.npz)")
    an = ctx.analysis
    index = GraphIndex(an.model)
    consumers = {}
    for tensor in an.read_tensors():
        for node, slot in index.consumers.get(tensor, []):
            rule = rule_or_default(node)
            if slot == 0 and rule.dense_filter(node) and not rule.input_transposed(node):
                consumers.setdefault(tensor, []).append(node)
    names = list(consumers)
    sess = session(with_outputs(an.model, names))
    rng = np.random.default_rng(ctx.seed)
    samples = {name: [] for name in names}
    seen = 0
    for feeds in ctx.data.batches("score"):
        values = dict(zip(names, sess.run(names, feeds)))
        for name in names:
            for node in consumers[name]:
                samples[name].append(contributions(node, index.const(node.input[1]), values[name].astype(np.float64), rng))
        seen += len(next(iter(feeds.values())))
        if seen >= MAX_IMAGES:
            break
    result = {}
    for g in an.groups:
        if not g.prunable:
            continue
        parts = []
        for tensor in g.tensors:
            if tensor not in samples or not samples[tensor]:
                continue
            v = np.concatenate(samples[tensor], axis=1)                  # [channels, M]
            pos = an.positions(g.id, tensor)
            unit_v = np.zeros((g.size, v.shape[1]))
            np.add.at(unit_v, pos[pos >= 0], v[pos >= 0])
            parts.append(unit_v / max(np.abs(unit_v).max(), 1e-30))
        if not parts:
            result[g.id] = np.zeros(g.size)
            continue
        order = greedy_order(np.concatenate(parts, axis=1))
        scores = np.empty(g.size)
        scores[order] = np.arange(g.size)
        result[g.id] = scores
    return result
