"""Blending criteria, CCFC-style (He et al., criteria.md §5): condense the pool, then blend.

1. Every criterion of the pool scores every prunable group; scores become percentile ranks
   ``r = (rank - 1) / (C - 1)`` (ties averaged) within the group.
2. Criteria clustering: per group, the Spearman matrix of the criteria (Pearson of their ranks),
   agglomerative clustering (average linkage) on ``1 - rho`` with threshold ``1 - 0.9``; the
   co-association ``Q_ab`` (fraction of groups where a and b share a cluster) is clustered again
   with threshold 0.5. Each final cluster is represented by its medoid (highest mean rho to its
   mates, averaged over groups; ties go to the cheaper criterion, i.e. earlier in the pool).
3. Blending: ``S = sum_k alpha_k r_k`` over the representatives, alpha uniform (a weighted Borda
   count) or searched by an evolutionary algorithm (preset "thorough": population 16, 15
   generations, elitism 2, tournament 3, convex crossover, Gaussian mutation projected on the
   simplex). Its fitness is minus the held-out loss of the network pruned with the blended order
   at the planned per-group counts, measured with channel masks (no recovery; the spec's
   variant re-estimates BN first).
"""

from __future__ import annotations

import numpy as np

from ..analysis.ops import is_batchnorm
from .registry import REGISTRY, ScoreContext, register

RHO_MIN = 0.9
COASSOC = 0.5


def percentile_ranks(scores: np.ndarray) -> np.ndarray:
    """Within-group percentile ranks in [0, 1], ties averaged (higher score -> higher rank)."""
    from scipy.stats import rankdata   # imported here: scipy.stats costs ~0.4 s to import

    if len(scores) < 2:
        return np.ones(len(scores))
    return (rankdata(scores, method="average") - 1.0) / (len(scores) - 1.0)


DEFAULT_POOL = ("activation", "thinet")   # the data-driven families blended by the default preset


def pool(ctx: ScoreContext) -> list[str]:
    """The criteria blended for this model: data-free ones, plus activation ones with calibration data."""
    names = ["l1", "l2", "fpgm"]
    if any(is_batchnorm(n) for n in ctx.analysis.model.graph.node):
        names.append("bn_scale")
    extra = ctx.options.get("blend_pool", DEFAULT_POOL)      # what the preset adds (config.PRESETS)
    if ctx.stats and "activation" in extra:
        names += ["mean_act", "apoz", "entropy", "hrank"]
    if ctx.data is not None and "thinet" in extra:
        names.append("thinet")   # the best single criterion on our benchmark; costs one pass over 64 images
    if ctx.data is not None and "ensemble" in extra:
        names.append("ensemble")
    return names


def _cluster(distance: np.ndarray, threshold: float) -> np.ndarray:
    if len(distance) < 2:
        return np.zeros(len(distance), dtype=int)
    from sklearn.cluster import AgglomerativeClustering   # imported here: sklearn costs ~0.5 s to import

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


@register("blend", stats=("abs", "zeros", "pooled", "signature"), ranks=True, cost="statistics")
def blend(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """Blend of the condensed criteria pool (uniform weights; searched with preset 'thorough')."""
    names = pool(ctx)
    scores = {n: REGISTRY[n](ctx) for n in names}
    ranks = {n: {gid: percentile_ranks(s) for gid, s in scores[n].items()} for n in names}
    summary = condense(ranks, names)
    weights = {n: 1.0 / len(summary["representatives"]) for n in summary["representatives"]}
    fitness = ctx.options.get("blend_fitness")          # preset "thorough": search the weights
    if fitness is not None:
        reps = summary["representatives"]
        weights, history = evolve(reps, lambda w: fitness(blended(ranks, w)), np.random.default_rng(ctx.seed))
        summary["search"] = {"best_fitness_per_generation": history, "evaluations": 16 * 16}
    summary["weights"] = {n: round(float(w), 4) for n, w in weights.items()}
    ctx.extras["blend"] = summary
    ctx.extras["ranks"] = ranks
    return blended(ranks, weights)


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, len(v) + 1) > (css - 1))[0][-1]
    theta = (css[rho] - 1) / (rho + 1.0)
    return np.maximum(v - theta, 0.0)


def evolve(names: list[str], fitness, rng, population: int = 16, generations: int = 15, elite: int = 2,
           tournament: int = 3, sigma: float = 0.15) -> tuple[dict[str, float], list]:
    """Evolutionary search of blend weights on the simplex (criteria.md §5), maximising `fitness`.

    The first population holds every one-hot vertex and the uniform blend, and the best
    individuals always survive, so the result is never worse than the best single criterion.
    Returns the best weights and the best fitness per generation.
    """
    k = len(names)
    pop = [np.eye(k)[i] for i in range(k)] + [np.full(k, 1.0 / k)]
    while len(pop) < population:
        pop.append(rng.dirichlet(np.ones(k)))
    scored = [(float(fitness(dict(zip(names, a)))), a) for a in pop]
    history = []
    for gen in range(generations):
        scored.sort(key=lambda t: -t[0])
        history.append(round(scored[0][0], 6))
        children = [a for _, a in scored[:elite]]
        while len(children) < population:
            parents = []
            for _ in range(2):
                picks = rng.choice(len(scored), size=min(tournament, len(scored)), replace=False)
                parents.append(scored[min(picks)][1])                     # scored is sorted: lowest index wins
            t = rng.random()
            child = project_simplex(t * parents[0] + (1 - t) * parents[1]
                                    + rng.normal(0, sigma * 0.9 ** gen, k))
            children.append(child)
        scored = scored[:elite] + [(float(fitness(dict(zip(names, a)))), a) for a in children[elite:]]
    scored.sort(key=lambda t: -t[0])
    history.append(round(scored[0][0], 6))
    best = scored[0][1]
    return {n: float(w) for n, w in zip(names, best)}, history
