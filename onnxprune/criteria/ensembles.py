"""Linear filter ensembles (Sandor et al., criteria.md §3): loss-based importance from random masks.

For a group with C units, sample M masks ``z ~ Bernoulli(q)^C`` (blocked units stay 1), measure
the fidelity loss ``y_t = L(z_t)`` of each masked network on one fixed batch (the same images
for every mask), fit ``y ~ w0 + sum_i w_i z_i`` by ridge least squares and use ``I_i = -w_i``:
a unit whose presence lowers the loss is important. With independent Bernoulli(q) masks the
population coefficient is ``E[L | z_i=1] - E[L | z_i=0]``, minus the q-weighted Banzhaf value of
unit i in the game ``v = -L`` (the link to SNPFI's interaction view, §6).

The same samples give the group's *utilization strength* ``U = 1 - R^2`` of the additive fit on
held-out masks: the share of the loss variance that single units do not explain (§6.2).
"""

from __future__ import annotations

import numpy as np

from ..errors import OnnxPruneError
from ..verification.evaluate import Reference
from ..runtime.masking import MaskRunner, outputs_of, probes, suffix_states
from .registry import ScoreContext, register

BATCH = 64


def fit_additive(z: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> tuple[np.ndarray, float]:
    """Ridge fit ``y ~ w0 + z w`` (intercept not penalised). Returns (w0 and w stacked, lambda)."""
    design = np.hstack([np.ones((len(z), 1)), z.astype(np.float64)])
    gram = design.T @ design
    lam = ridge * float(np.trace(gram[1:, 1:])) / max(z.shape[1], 1)
    penalty = np.eye(gram.shape[0]) * lam
    penalty[0, 0] = 0.0
    return np.linalg.solve(gram + penalty, design.T @ y), lam


def r_squared(z: np.ndarray, y: np.ndarray, coef: np.ndarray) -> float:
    """R^2 of the additive model `coef` on (z, y)."""
    pred = coef[0] + z @ coef[1:]
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / total if total > 0 else 1.0


def sample_masks(rng, size: int, count: int, keep_prob: float, blocked: np.ndarray) -> np.ndarray:
    """`count` Bernoulli(keep_prob) masks over `size` units; blocked units always kept."""
    z = (rng.random((count, size)) < keep_prob).astype(np.float64)
    z[:, blocked] = 1.0
    return z


def group_game(ctx: ScoreContext, gid: int, runner: MaskRunner, feeds, reference, labels,
               masks: int, keep_prob: float, rng) -> dict:
    """Sample the group's mask game: coefficients, importances and utilization strength."""
    z = game_masks(ctx.analysis, gid, masks, keep_prob, rng)
    return fit_game(ctx.analysis, gid, z, runner.losses(feeds, [{gid: row} for row in z], reference, labels), masks)


def game_masks(an, gid: int, masks: int, keep_prob: float, rng) -> np.ndarray:
    """The game's random masks of group `gid`: `masks` to fit on, then max(16, masks // 4) to test."""
    return sample_masks(rng, an.groups[gid].size, masks + max(16, masks // 4), keep_prob,
                        an.unit_blocked[an.group_units[gid]])


def group_games(an, gids, feeds, reference, mask_count, keep_prob: float, rng, what: str) -> tuple[dict, int]:
    """Every group's game (`group_game`), the groups' losses run by the pool (--workers, --ray);
    the masks are drawn here, group after group, so that `rng` gives the serial run's.
    `mask_count(gid)` is the number of masks to fit on. Returns ({gid: game}, sample rows run)."""
    drawn = {}

    def tasks():
        for gid, start, state in suffix_states(an, gids, feeds):
            drawn[gid] = game_masks(an, gid, mask_count(gid), keep_prob, rng)
            yield gid, start, state, [{gid: row} for row in drawn[gid]]

    games, samples = {}, 0
    for gid, y, rows in probes(tasks(), (an, reference, None), what):
        games[gid] = fit_game(an, gid, drawn.pop(gid), y, mask_count(gid))
        samples += rows
    return games, samples


def fit_game(an, gid: int, z: np.ndarray, y: np.ndarray, n_fit: int) -> dict:
    """Importances and utilization from the losses `y` of masks `z` (the first `n_fit` fitted, the rest held out)."""
    size = an.groups[gid].size
    blocked = an.unit_blocked[an.group_units[gid]]
    n_test = len(z) - n_fit
    coef, _ = fit_additive(z[:n_fit], y[:n_fit])
    free = ~blocked
    importance = np.zeros(size)
    importance[free] = -coef[1:][free]
    importance[blocked] = importance[free].max() + 1 if free.any() else 0.0
    held_r2 = r_squared(z[n_fit:], y[n_fit:], coef)
    return {"importance": importance, "coef": coef, "utilization": float(np.clip(1.0 - held_r2, 0.0, 1.0)),
            "masks": n_fit + n_test}


@register("ensemble", needs_data=True, cost="forward passes")
def ensemble(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """Importance from a linear model of the loss over random channel masks (needs calibration data).

    `ctx.options["ensemble_mode"]`: "group" (default; each group's game on its suffix sub-model)
    or "joint" (one game over every unit of every group, criteria.md §3: importances in shared
    loss units, comparable across groups, so `--allocate global` uses them unnormalised).
    """
    if ctx.data is None:
        raise OnnxPruneError("criterion 'ensemble' needs calibration data: give --calib PATH")
    an = ctx.analysis
    gids = [g.id for g in an.groups if g.prunable]
    feeds = first_batch(ctx.data, BATCH)
    reference = Reference.of(an, outputs_of(an.model, feeds))
    rng = np.random.default_rng(ctx.seed)
    mode = ctx.options.get("ensemble_mode") or "group"
    if mode == "joint":
        return _joint(ctx, gids, feeds, reference, rng)
    if mode != "group":
        raise OnnxPruneError(f"unknown ensemble mode '{mode}'; choose group or joint")
    keep_prob = 1.0 - float(np.clip(ctx.options.get("ratio", 0.5), 0.1, 0.5))
    games, samples = group_games(an, gids, feeds, reference, lambda gid: int(
        ctx.options.get("ensemble_masks") or max(256, 4 * an.groups[gid].size)), keep_prob, rng, "ensemble games")
    result = {gid: game["importance"] for gid, game in games.items()}
    ctx.extras["ensemble"] = {"mode": "group", "utilization": {gid: g["utilization"] for gid, g in games.items()},
                              "masks": int(sum(g["masks"] for g in games.values())),
                              "forward_samples": samples}
    return result


JOINT_DROP = 0.05        # joint mode: each unit is dropped with this probability ...
JOINT_MAX_UNITS = 8192   # ... and the regression has one variable per unit (its Gram matrix is units^2)


def _joint(ctx: ScoreContext, gids: list[int], feeds, reference, rng) -> dict[int, np.ndarray]:
    """Joint mode: Bernoulli(1 - JOINT_DROP) masks over all units at once, one additive fit."""
    an = ctx.analysis
    sizes = [an.groups[gid].size for gid in gids]
    total = int(sum(sizes))
    if total > JOINT_MAX_UNITS:
        raise OnnxPruneError(f"ensemble joint mode: {total} units exceed {JOINT_MAX_UNITS} "
                             f"(the fit needs {total}^2 Gram entries); use the per-group mode")
    blocked = np.concatenate([an.unit_blocked[an.group_units[gid]] for gid in gids])
    count = int(ctx.options.get("ensemble_masks") or max(256, 2 * total))
    n_test = max(16, count // 4)
    z = sample_masks(rng, total, count + n_test, 1.0 - JOINT_DROP, blocked)
    bounds = np.cumsum([0, *sizes])
    runner = MaskRunner(an, gids)
    masks = [{gid: row[bounds[k]:bounds[k + 1]] for k, gid in enumerate(gids)} for row in z]
    y = runner.losses(feeds, masks, reference)
    coef, _ = fit_additive(z[:count], y[:count])
    importance = -coef[1:]
    free = ~blocked
    if free.any():
        importance[blocked] = importance[free].max() + 1
    result = {gid: importance[bounds[k]:bounds[k + 1]] for k, gid in enumerate(gids)}
    ctx.extras["ensemble"] = {"mode": "joint", "masks": count + n_test, "forward_samples": runner.samples,
                              "r2_held_out": round(r_squared(z[count:], y[count:], coef), 4),
                              "shared_scale": True}
    return result


def first_batch(data, size: int) -> dict[str, np.ndarray]:
    parts = []
    for feeds in data.batches("score"):
        parts.append(feeds)
        if sum(len(next(iter(p.values()))) for p in parts) >= size:
            break
    return {k: np.concatenate([p[k] for p in parts])[:size] for k in parts[0]}
