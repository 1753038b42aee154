"""Filter variety (Hubens et al., criteria.md §2) and functional redundancy (Qin et al., §4).

Both look at what filters *do*: each unit gets a descriptor, its activation signature (the
maps average-pooled to 4x4 over up to 256 calibration images; filter weights when there is no
data), and units are compared by ``R_ij = |Pearson(d_i, d_j)|``.

- `--variety cluster` (default with `blend`): to remove k of C units, cluster them into C - k
  clusters (agglomerative, average linkage on 1 - R) and keep the best-scored unit of each:
  every functional cluster survives, singletons (rare filters) are never removed, the
  criterion only arbitrates among similar filters. `gate`: remove the lowest-scored unit among
  those with a near-duplicate (``max_j R_ij >= 0.7``) while there are any, else the lowest.
  `soft`: blend the score's rank with the rarity ``1 - max_j R_ij`` (weight 0.3).
- criterion `functional`: clusters at ``R >= 0.8`` (distance threshold 0.2); in each cluster the
  best unit by l1 is kept and the others are *functionally redundant* (ranked below every
  keeper). The redundant fraction of each group is reported.
- merge compensation (§9.2): a removed channel j with ``A_j ~ alpha A_i + beta0`` (least squares on
  the signatures, R^2 >= 0.9) for a kept channel i is folded into the consumer
  (``W_i += alpha W_j``, ``b += beta0 sum W_j``): exact for positively scaled duplicates.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..analysis.graph import GraphIndex

GATE_TAU = 0.7
SOFT_LAMBDA = 0.3
FUNCTIONAL_TAU = 0.8
MERGE_R2 = 0.9


def unit_descriptors(analysis, gid: int, stats: dict) -> np.ndarray:
    """[units, D] descriptors of a group: activation signatures, or filter weights without data."""
    from .weights import filters

    size = analysis.groups[gid].size
    parts = []
    for tensor in analysis.groups[gid].tensors:
        st = stats.get(tensor)
        sig = st.signatures() if st is not None else np.zeros((0, 0))
        if sig.size:
            parts.append(_to_units(analysis, gid, tensor, sig, size))
    if not parts:
        index = GraphIndex(analysis.model)
        for tensor in analysis.groups[gid].tensors:
            node = analysis.source_nodes.get(tensor)
            if node is not None:
                parts.append(_to_units(analysis, gid, tensor, filters(node, index).astype(np.float64), size))
    return np.concatenate(parts, axis=1) if parts else np.eye(size)


def _to_units(analysis, gid, tensor, per_channel, size):
    pos = analysis.positions(gid, tensor)
    out = np.zeros((size, per_channel.shape[1]))
    valid = pos >= 0
    np.add.at(out, pos[valid], per_channel[valid])
    return out


def similarity(desc: np.ndarray) -> np.ndarray:
    """|Pearson| between rows; constant rows are similar to each other (1) and to nothing else (0).

    Constant rows are channels that never change on the data (dead after a ReLU, saturated): all
    of them do the same thing, which mean compensation folds into the consumer's bias exactly.
    Scored as similar to nothing they were "rare filters" to the cluster wrapper, each kept in a
    cluster of its own while live channels went (PaddleOCR's recogniser has a group with 28 dead
    channels of 60)."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # one sample: "degrees of freedom <= 0"
        r = np.abs(np.corrcoef(desc))
    r = np.nan_to_num(r, nan=0.0, posinf=0.0)
    if desc.size:
        finite = np.abs(desc[np.isfinite(desc)])
        scale = max(float(finite.max(initial=0.0)), 1e-30)      # an inf elsewhere must not set it
        with np.errstate(invalid="ignore"):
            constant = np.ptp(desc, axis=1) <= 1e-7 * scale
        r[np.ix_(constant, ~constant)] = 0.0
        r[np.ix_(~constant, constant)] = 0.0
        r[np.ix_(constant, constant)] = 1.0
    np.fill_diagonal(r, 1.0)
    return r


def _clusters(sim: np.ndarray, n_clusters: int | None = None, threshold: float | None = None) -> np.ndarray:
    if len(sim) < 2:
        return np.zeros(len(sim), dtype=int)
    from sklearn.cluster import AgglomerativeClustering   # imported here: sklearn costs ~0.5 s to import

    model = AgglomerativeClustering(n_clusters=n_clusters, metric="precomputed", linkage="average",
                                    distance_threshold=threshold)
    return model.fit_predict(np.clip(1.0 - sim, 0.0, None))


def choose(mode: str, sim: np.ndarray, scores: np.ndarray, n_remove: int, blocked: np.ndarray) -> np.ndarray:
    """Positions to remove in a group under variety `mode` (cluster, gate, soft)."""
    size = len(scores)
    s = np.where(blocked, np.inf, scores)
    if n_remove <= 0:
        return np.zeros(0, dtype=int)
    if mode == "cluster":
        labels = _clusters(sim, n_clusters=size - n_remove)
        removed = []
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            keep = members[np.argmax(s[members])]
            removed.extend(int(m) for m in members if m != keep and not blocked[m])
        return np.array(sorted(removed, key=lambda m: s[m])[:n_remove], dtype=int)
    if mode == "gate":
        alive = ~np.zeros(size, dtype=bool)
        removed = []
        off = sim.copy()
        np.fill_diagonal(off, 0.0)
        for _ in range(n_remove):
            rho = np.where(alive[None, :], off, 0.0).max(axis=1)
            candidates = alive & ~blocked & (rho >= GATE_TAU)
            pool = candidates if candidates.any() else alive & ~blocked
            j = int(np.flatnonzero(pool)[np.argmin(s[pool])])
            alive[j] = False
            removed.append(j)
        return np.array(removed, dtype=int)
    if mode == "soft":
        from .blend import percentile_ranks

        off = sim.copy()
        np.fill_diagonal(off, 0.0)
        rarity = 1.0 - off.max(axis=1)
        r, q = percentile_ranks(scores), percentile_ranks(rarity)
        blended = np.where(blocked, np.inf, (1 - SOFT_LAMBDA) * r + SOFT_LAMBDA * q)
        return np.argsort(blended, kind="stable")[:n_remove]
    raise ValueError(mode)


def functional_clusters(sim: np.ndarray) -> np.ndarray:
    """Cluster labels at similarity >= 0.8 (Qin et al.'s functional groups)."""
    return _clusters(sim, threshold=1.0 - FUNCTIONAL_TAU)


def merges(stats: dict, kept: dict[str, np.ndarray]) -> dict[str, list[tuple[int, int, float, float]]]:
    """For each read tensor, removed channels that are near-affine copies of a kept one: (j, i, alpha, beta0)."""
    result = {}
    for tensor, keep in kept.items():
        st = stats.get(tensor)
        sig = st.signatures() if st is not None else np.zeros((0, 0))
        if not sig.size or len(keep) == 0:
            continue
        removed = np.setdiff1d(np.arange(sig.shape[0]), keep)
        sim = similarity(sig)
        found = []
        for j in removed:
            i = int(keep[np.argmax(sim[j, keep])])
            x, y = sig[i], sig[j]
            var = float(((x - x.mean()) ** 2).sum())
            if var <= 0:
                continue
            alpha = float(((x - x.mean()) * (y - y.mean())).sum() / var)
            beta = float(y.mean() - alpha * x.mean())
            resid = float(((y - alpha * x - beta) ** 2).sum())
            total = float(((y - y.mean()) ** 2).sum())
            if total > 0 and 1.0 - resid / total >= MERGE_R2:
                found.append((int(j), i, alpha, beta))
        if found:
            result[tensor] = found
    return result
