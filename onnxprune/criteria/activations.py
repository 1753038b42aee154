"""Activation criteria from one calibration pass (criteria.md §7): mean_act, apoz, entropy, hrank.

They read the statistics of the tensors the group's consumers read (after BN and activation),
normalise each tensor's per-channel score by its maximum and sum them into the group's units.
- mean_act: ``mean |A_c|``;
- apoz: ``1 - APoZ_c`` with APoZ the fraction of (near-)zero activations (Hu et al., 2016);
- entropy: entropy of the histogram (100 bins) of per-sample spatial means (Luo & Wu, 2017):
  a constant channel scores 0;
- hrank: average rank of the per-sample HxW maps (Lin et al., CVPR 2020).
"""

from __future__ import annotations

import numpy as np

from ..errors import OnnxPruneError
from .registry import ScoreContext, register
from .weights import sum_over_tensors


def _reduce(ctx: ScoreContext, name: str, per_channel) -> dict[int, np.ndarray]:
    if not ctx.stats:
        raise OnnxPruneError(f"criterion '{name}' needs calibration data: give --calib PATH (images, .npy/.npz)")

    def per_tensor(tensor):
        st = ctx.stats.get(tensor)
        return per_channel(st) if st is not None and st.count else None

    return sum_over_tensors(ctx, per_tensor)


def entropy_of(pooled: np.ndarray, bins: int = 100) -> np.ndarray:
    """Histogram entropy (nats) of each column of `pooled` ([samples, channels])."""
    out = np.zeros(pooled.shape[1])
    for c in range(pooled.shape[1]):
        col = pooled[:, c].astype(np.float64)
        col = col[np.isfinite(col)]
        if col.size < 2:
            continue
        lo, hi = float(col.min()), float(col.max())
        # a spread below float32 resolution is a constant channel (and would give numpy bins of zero width)
        if hi - lo <= 1e-6 * max(1.0, abs(lo), abs(hi)):
            continue
        counts, _ = np.histogram(col, bins=bins, range=(lo, hi))
        p = counts[counts > 0] / counts.sum()
        out[c] = float(-(p * np.log(p)).sum())
    return out


@register("mean_act", needs_data=True, stats=("abs",), cost="statistics")
def mean_act(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """Mean absolute activation."""
    return _reduce(ctx, "mean_act", lambda st: st.abssum / max(st.count, 1))


@register("apoz", needs_data=True, stats=("zeros",), cost="statistics")
def apoz(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """One minus the average percentage of zeros."""
    return _reduce(ctx, "apoz", lambda st: 1.0 - st.zeros / max(st.count, 1))


@register("entropy", needs_data=True, stats=("pooled",), cost="statistics")
def entropy(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """Entropy of the per-sample pooled activation."""
    return _reduce(ctx, "entropy", lambda st: entropy_of(st.pooled_values()))


@register("hrank", needs_data=True, ranks=True, cost="statistics")
def hrank(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """Average rank of the feature maps (flattened 2-D features count as rank <= 1)."""
    return _reduce(ctx, "hrank", lambda st: st.rank_sum / max(st.rank_samples, 1))
