"""One streamed onnxruntime pass that accumulates per-channel statistics of chosen tensors.

The requested tensors are added as graph outputs; each batch updates running sums, so memory
depends on the number of channels, never on the number of samples (apart from one pooled value
per sample and channel, kept for the entropy histogram). Statistics are exact sums, so batch size
does not change them beyond float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .calib import CalibData
from ..analysis.graph import batch_axes, output_batch_axes
from ..runtime.sessions import session
from ..progress import iterate as stage_iterate

ZERO_EPS = 1e-6


ALL_STATS = frozenset({"sumsq", "abs", "zeros", "pooled"})
SIGNATURE_POOL = 4        # activation signatures: each map average-pooled to 4x4 ...
SIGNATURE_SAMPLES = 256   # ... over the first 256 samples (criteria.md §2)


def join_batches(parts: list[np.ndarray], axis: int = 0) -> np.ndarray:
    """One output's batches joined on its batch `axis` (1 for a time-major [T, N, K]); batches
    whose other dims differ (a data-dependent count on another axis: NonZero's [rank, K]) are
    joined flattened, values in order."""
    if len(parts) == 1:
        return parts[0]
    rest = [p.shape[:axis] + p.shape[axis + 1:] for p in parts]
    if all(p.ndim > axis for p in parts) and all(r == rest[0] for r in rest):
        return np.concatenate(parts, axis=axis)
    return np.concatenate([p.reshape(-1) for p in parts])


@dataclass
class ChannelStats:
    """Running per-channel statistics of one tensor (channels on `axis`).

    `sum` and `count` are always kept; `want` names the optional ones ("sumsq", "abs",
    "zeros", "pooled"), so a pass computes only what its criteria and recovery read.
    """

    axis: int
    want: frozenset = ALL_STATS
    batch_axis: int = 0                  # where the samples are (1 in a time-major [T, N, C])
    count: int = 0                       # elements per channel seen (samples * spatial)
    samples: int = 0
    sum: np.ndarray | None = None
    sumsq: np.ndarray | None = None
    abssum: np.ndarray | None = None
    zeros: np.ndarray | None = None
    pooled: list = field(default_factory=list)   # per-sample spatial means, for entropy
    rank_sum: np.ndarray | None = None
    rank_samples: int = 0
    signature: list = field(default_factory=list)  # per batch [n, C, P*P] pooled maps ("signature")
    signature_samples: int = 0

    def update(self, value: np.ndarray, rank_budget: int = 0) -> None:
        """Add one batch (any layout; channels on `self.axis`, samples on `self.batch_axis`)."""
        if self.batch_axis and self.batch_axis != self.axis:
            x = np.moveaxis(value, (self.batch_axis, self.axis), (0, 1))
        else:
            x = np.moveaxis(value, self.axis, 1)
        n, c = x.shape[0], x.shape[1]
        flat = x.reshape(n, c, -1)
        if flat.dtype != np.float32:
            flat = flat.astype(np.float32)
        if self.sum is None:
            self.sum, self.sumsq, self.abssum, self.zeros = (np.zeros(c) for _ in range(4))
            self.rank_sum = np.zeros(c)
        # float32 element-wise work, float64 accumulation: cheap next to the forward pass
        pooled = flat.sum(axis=2, dtype=np.float64)
        self.sum += pooled.sum(axis=0)
        if "sumsq" in self.want:
            # squared in float64: float32 squares overflow above 1.8e19 (seen on PaddleOCR's classifier)
            self.sumsq += np.einsum("ncs,ncs->c", flat, flat, dtype=np.float64)
        if "abs" in self.want or "zeros" in self.want:
            magnitude = np.abs(flat)
            if "abs" in self.want:
                self.abssum += magnitude.sum(axis=(0, 2), dtype=np.float64)
            if "zeros" in self.want:
                self.zeros += np.count_nonzero(magnitude <= ZERO_EPS, axis=(0, 2))
        self.count += n * flat.shape[2]
        self.samples += n
        if "pooled" in self.want:
            self.pooled.append((pooled / flat.shape[2]).astype(np.float32))
        if "signature" in self.want and self.signature_samples < SIGNATURE_SAMPLES:
            take = min(n, SIGNATURE_SAMPLES - self.signature_samples)
            self.signature.append(pool_map(x[:take]))
            self.signature_samples += take
        take = min(n, rank_samples_for(x.shape[2:], rank_budget) - self.rank_samples)
        if take > 0 and x.ndim == 4:
            mats = x[:take].astype(np.float64)
            self.rank_sum += np.linalg.matrix_rank(mats).sum(axis=0)
            self.rank_samples += take

    @property
    def mean(self) -> np.ndarray:
        """Per-channel mean."""
        return self.sum / max(self.count, 1)

    @property
    def var(self) -> np.ndarray:
        """Per-channel population variance."""
        return np.maximum(self.sumsq / max(self.count, 1) - self.mean ** 2, 0.0)

    def signatures(self) -> np.ndarray:
        """Per-channel activation signatures, shape [channels, samples * P * P]."""
        if not self.signature:
            return np.zeros((0, 0))
        sig = np.concatenate(self.signature)                      # [N, C, P*P]
        return sig.transpose(1, 0, 2).reshape(sig.shape[1], -1)

    def pooled_values(self) -> np.ndarray:
        """Per-sample spatial means, shape [samples, channels]."""
        return np.concatenate(self.pooled) if self.pooled else np.zeros((0, 0))


RANK_WORK = 128 * 28 ** 3   # HRank's budget per tensor, in units of H * W * min(H, W) per sample


def rank_samples_for(spatial, budget: int) -> int:
    """How many samples feed a tensor's HRank ranks: `budget`, fewer for large maps.

    A map's rank costs an SVD of O(H * W * min(H, W)); 128 samples of 112x112 maps would take
    minutes on 2 cores, so large maps use fewer samples (at least 8; HRank reports that the average
    rank is stable across small batches of images).
    """
    if budget <= 0 or len(spatial) != 2:
        return budget
    h, w = int(spatial[0]), int(spatial[1])
    return min(budget, max(8, RANK_WORK // max(h * w * min(h, w), 1)))


def pool_map(x: np.ndarray, p: int = SIGNATURE_POOL) -> np.ndarray:
    """Adaptive average pooling of [N, C, ...] maps to p x p (or the flattened map when smaller)."""
    n, c = x.shape[0], x.shape[1]
    if x.ndim != 4 or x.shape[2] < p or x.shape[3] < p:
        return x.reshape(n, c, -1).astype(np.float32)
    rows = np.array_split(np.arange(x.shape[2]), p)
    cols = np.array_split(np.arange(x.shape[3]), p)
    out = np.empty((n, c, p, p), dtype=np.float32)
    for i, r in enumerate(rows):
        band = x[:, :, r[0]:r[-1] + 1].mean(axis=2)
        for j, col in enumerate(cols):
            out[:, :, i, j] = band[:, :, col[0]:col[-1] + 1].mean(axis=2)
    return out.reshape(n, c, p * p)


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs tensors `names`."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for name in names:
        if name not in existing:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    return m


def collect(model: onnx.ModelProto, axes: dict[str, int], data: CalibData, split: str = "score",
            rank_samples: int = 0, label: str = "calibration pass",
            want: frozenset = ALL_STATS, also=None) -> dict[str, ChannelStats]:
    """Stream `data[split]` through `model` once and return statistics of the tensors in `axes`.

    Args:
        model: the model to run (not modified).
        axes: tensor name -> channel axis.
        data: calibration data.
        split: 'score', 'holdout' or 'all'.
        rank_samples: how many samples feed the HRank matrix ranks (0: none).
        want: optional statistics to keep (see ChannelStats); sums and counts always.
        also: optional (tensor names, callable(batch index, {name: value})): more tensors of the
            same pass handed to the callable batch by batch (the least-squares teacher's targets).
    """
    names = list(axes)
    extra = [n for n in (also[0] if also else ()) if n not in axes]
    sess = session(with_outputs(model, names + extra))
    batch = batch_axes(model, {spec.name: [1, *spec.sample_shape] for spec in data.specs})
    stats = {name: ChannelStats(axis, frozenset(want), batch.get(name, 0)) for name, axis in axes.items()}
    for k, feeds in enumerate(progress(data.batches(split), data.size(split), data.config.batch_size, label)):
        values = dict(zip(names + extra, sess.run(names + extra, feeds)))
        for name in names:
            stats[name].update(values[name], rank_samples)
        if also:
            also[1](k, {n: values[n] for n in also[0]})
    return stats


def outputs(model: onnx.ModelProto, data: CalibData, split: str = "holdout") -> list[np.ndarray]:
    """The model's graph outputs over `split`, concatenated along the batch axis."""
    sess = session(model)
    names = [o.name for o in model.graph.output]
    parts = [sess.run(names, feeds) for feeds in data.batches(split)]
    if len(parts) == 1:
        return list(parts[0])
    axes = output_batch_axes(model, {spec.name: [1, *spec.sample_shape] for spec in data.specs})
    return [join_batches([p[i] for p in parts], axes[i]) for i in range(len(names))]


def progress(batches, samples: int, batch_size: int, label: str):
    """Yield from `batches` with a progress bar on stderr labelled `label` (onnxprune/progress.py:
    off when stderr is not a terminal)."""
    yield from stage_iterate(batches, label, max(1, -(-samples // batch_size)))


