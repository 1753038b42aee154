"""Compensation maths: what a consumer's weights and bias absorb when some of its input channels
are removed (criteria.md §9).

- mean compensation (§9.1): a removed channel is replaced by its calibration mean, which moves
  into the consumer's bias: ``b'_o += sum_{c removed} m_c * sum_{kh,kw} W_{o,c}``;
- merge compensation (§9.2): a removed near-copy ``a_j ~ alpha a_i + beta`` is folded into the kept
  channel's weights, ``W_i += alpha W_j``, and the bias, ``b += beta sum W_j``;
- a `LinearMerge` (`recovery.datafree.linear_merges`) replaces removed channels by
  ``B @ a[keep] + bias`` the same way, per kernel tap.

The op rules (`analysis.ops`) decide where each applies and slice what is left; the arithmetic is
here, as pure functions of arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinearMerge:
    """Removed channels `removed` of a tensor replaced by ``B @ a[keep] + bias`` in its consumers
    (B [len(removed), len(keep)]; `onnxprune.recovery.datafree.linear_merges`)."""

    removed: np.ndarray
    keep: np.ndarray
    B: np.ndarray
    bias: np.ndarray


def merge_into_filters(w: np.ndarray, found, dtype) -> tuple[np.ndarray, np.ndarray, set]:
    """Fold merges into Conv filters ``w`` [O, C, kH, kW] (ungrouped): returns the new filters (in
    `dtype`), the bias change per output channel, and the input channels merged away."""
    w = w.astype(np.float64, copy=True)
    if isinstance(found, LinearMerge):
        wr = w[:, found.removed]
        delta = np.einsum("orkl,r->o", wr, found.bias)
        w[:, found.keep] += np.einsum("orkl,rs->oskl", wr, found.B)
        return w.astype(dtype), delta, set(found.removed.tolist())
    delta = np.zeros(w.shape[0])
    for j, i, alpha, beta in found:
        delta += beta * w[:, j].reshape(w.shape[0], -1).sum(axis=1)
        w[:, i] += alpha * w[:, j]
    return w.astype(dtype), delta, {j for j, _, _, _ in found}


def filter_mean_delta(w: np.ndarray, groups: int, keep_in: np.ndarray, means: np.ndarray, skip=frozenset()):
    """The bias change of a Conv (filters ``w``, `groups`) whose input channels outside `keep_in`
    (and `skip`, merged already) are replaced by their `means`; None for a depthwise-like conv,
    whose input channels go with their outputs.

    Exact for constant channels away from zero-padded borders."""
    c_in = w.shape[1] * groups
    k_in = c_in // groups
    if groups > 1 and k_in == 1:
        return None
    removed = np.setdiff1d(np.arange(c_in), np.concatenate([keep_in, np.array(sorted(skip), dtype=np.int64)]))
    per_tap = w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2).astype(np.float64)  # [O, k_in]
    if groups == 1:
        return per_tap[:, removed] @ means[removed]
    local = removed[removed < k_in]
    group_of = np.arange(w.shape[0]) // (w.shape[0] // groups)
    m = means[(group_of[:, None] * k_in) + local[None, :]]                          # [O, removed]
    return (per_tap[:, local] * m).sum(axis=1)


def merge_into_matrix(b: np.ndarray, in_axis: int, found, alpha: float, beta: float, dtype) -> tuple:
    """Fold merges into a Gemm's B (input features on `in_axis`), ``Y = alpha A B + beta C``:
    returns the new B (in `dtype`), the change of C, and the input features merged away."""
    skip = set()
    b = np.moveaxis(b.astype(np.float64, copy=True), in_axis, 0)
    if isinstance(found, LinearMerge):
        # a_R = B a_S + bias: B_S += B' B_R, C += alpha/beta * bias B_R
        delta = found.bias @ b[found.removed] * alpha / beta
        b[found.keep] += found.B.T @ b[found.removed]
        skip.update(found.removed.tolist())
    else:
        # B_i += a B_j, C += alpha/beta * b0 * B_j
        delta = np.zeros(b.shape[1])
        for j, i, a, b0 in found:
            delta += b0 * b[j] * alpha / beta
            b[i] += a * b[j]
            skip.add(j)
    return np.moveaxis(b, 0, in_axis).astype(dtype), delta, skip


def matrix_mean_delta(b: np.ndarray, in_axis: int, keep_in: np.ndarray, means: np.ndarray, skip, alpha: float,
                      beta: float) -> np.ndarray:
    """The change of a Gemm's C when input features outside `keep_in` (and `skip`) are replaced by
    their `means`: ``C += alpha/beta * sum_{k removed} m_k B[k, :]``."""
    removed = np.setdiff1d(np.arange(b.shape[in_axis]), np.concatenate([keep_in, np.array(sorted(skip), dtype=np.int64)]))
    rows = np.take(b, removed, axis=in_axis).astype(np.float64)
    return (means[removed] @ rows if in_axis == 0 else rows @ means[removed]) * alpha / beta
