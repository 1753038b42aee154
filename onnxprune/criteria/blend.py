"""Blending criteria, CCFC-style (He et al., criteria.md §5): condense the pool, then blend.

1. Every criterion of the pool scores every prunable group; scores become percentile ranks
   ``r = (rank - 1) / (C - 1)`` (ties averaged) within the group.
2. Criteria clustering: per group, the Spearman matrix of the criteria (Pearson of their ranks),
   agglomerative clustering (average linkage) on ``1 - rho`` with threshold ``1 - 0.9``; the
   co-association ``Q_ab`` (fraction of groups where a and b share a cluster) is clustered again
   with threshold 0.5. Each final cluster is represented by its medoid (highest mean rho to its
   mates, averaged over groups; ties go to the cheaper criterion, i.e. earlier in the pool).
3. Blending: ``S = sum_k alpha_k r_k`` over the representatives, alpha uniform (a weighted Borda
   count) or searched by an evolutionary algorithm (`blend_search`, preset "thorough").
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.cluster import AgglomerativeClustering

from . import REGISTRY, ScoreContext, register

RHO_MIN = 0.9
COASSOC = 0.5


def percentile_ranks(scores: np.ndarray) -> np.ndarray:
    """Within-group percentile ranks in [0, 1], ties averaged (higher score -> higher rank)."""
    if len(scores) < 2:
        return np.ones(len(scores))
    return (rankdata(scores, method="average") - 1.0) / (len(scores) - 1.0)


def pool(ctx: ScoreContext) -> list[str]:
    """The criteria blended for this model: data-free ones, plus activation ones with calibration data."""
    names = ["l1", "l2", "fpgm"]
    if any(n.op_type == "BatchNormalization" for n in ctx.analysis.model.graph.node):
        names.append("bn_scale")
    if ctx.stats:
        names += ["mean_act", "apoz", "entropy", "hrank"]
    if ctx.data is not None and ctx.options.get("preset") == "thorough":
        names.append("ensemble")
    return names


def _cluster(distance: np.ndarray, threshold: float) -> np.ndarray:
    if len(distance) < 2:
        return np.zeros(len(distance), dtype=int)
    model = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="average",
                                    distance_threshold=threshold)
    return model.fit_predict(np.clip(distance, 0.0, None))


def condense(ranks: dict[str, dict[int, np.ndarray]], names: list[str]) -> dict:
    """Stage 1: cluster the criteria by rank correlation across groups; pick representatives."""
    gids = [g for g in ranks[names[0]] if len(ranks[names[0]][g]) > 2]
    k = len(names)
    rho_sum, together = np.zeros((k, k)), np.zeros((k, k))
    for gid in gids:
        mat = np.array([ranks[n][gid] for n in names])
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = np.nan_to_num(np.corrcoef(mat), nan=0.0)
        np.fill_diagonal(rho, 1.0)
        rho_sum += rho
        labels = _cluster(1.0 - rho, 1.0 - RHO_MIN)
        together += labels[:, None] == labels[None, :]
    count = max(len(gids), 1)
    rho_mean, coassoc = rho_sum / count, together / count
    if not gids:
        rho_mean, coassoc = np.eye(k), np.eye(k)
    final = _cluster(1.0 - coassoc, COASSOC)
    clusters, reps = [], []
    for label in sorted(set(final), key=lambda lab: int(np.flatnonzero(final == lab)[0])):
        members = np.flatnonzero(final == label)
        mates = rho_mean[np.ix_(members, members)].mean(axis=1)
        rep = members[int(np.argmax(np.round(mates, 9)))]      # argmax keeps the first (cheapest) on ties
        clusters.append([names[i] for i in members])
        reps.append(names[rep])
    return {"pool": names, "correlation": np.round(rho_mean, 4).tolist(), "coassociation": np.round(coassoc, 4).tolist(),
            "clusters": clusters, "representatives": reps, "groups_used": len(gids)}


def blended(ranks: dict[str, dict[int, np.ndarray]], weights: dict[str, float]) -> dict[int, np.ndarray]:
    """``S = sum_k alpha_k r_k`` per group."""
    total = sum(weights.values()) or 1.0
    first = next(iter(weights))
    return {gid: sum(w * ranks[n][gid] for n, w in weights.items()) / total for gid in ranks[first]}


@register("blend")
def blend(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """Blend of the condensed criteria pool (uniform weights; searched with preset 'thorough')."""
    names = pool(ctx)
    scores = {n: REGISTRY[n](ctx) for n in names}
    ranks = {n: {gid: percentile_ranks(s) for gid, s in scores[n].items()} for n in names}
    summary = condense(ranks, names)
    weights = {n: 1.0 / len(summary["representatives"]) for n in summary["representatives"]}
    search = ctx.options.get("blend_search")
    if search is not None:
        weights, history = search(ranks, weights)
        summary["search"] = history
    summary["weights"] = {n: round(float(w), 4) for n, w in weights.items()}
    ctx.extras["blend"] = summary
    ctx.extras["ranks"] = ranks
    return blended(ranks, weights)
