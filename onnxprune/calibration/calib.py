"""Calibration data: image folders, .npy/.npz arrays, or explicit random data, streamed in batches.

Images are loaded with Pillow one batch at a time: resized (shorter side to the model's size),
centre-cropped, converted to the model's channel count (1 -> "L", 3 -> "RGB") and layout
(NCHW or NHWC, read from the model's input shape), then normalised as
``(pixel * scale - mean) / std``. Arrays in .npy files are memory-mapped, so memory does not
grow with the number of samples. A fixed, seeded split keeps `holdout` of the samples apart for
accept/reject decisions (the held-out split).
"""

from __future__ import annotations

import copy

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from ..errors import OnnxPruneError
from ..analysis.graph import real_inputs

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class CalibConfig:
    """Where calibration samples come from and how they are prepared."""

    path: str
    samples: int = 512
    batch_size: int = 32
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0 / 255.0
    holdout: float = 0.25
    seed: int = 0


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, shape for one sample (no batch), dtype, layout and image geometry."""

    name: str
    sample_shape: tuple[int, ...]
    dtype: np.dtype
    layout: str          # "NCHW", "NHWC" or "other"
    channels: int
    height: int
    width: int
    batch: int = 0       # the model's fixed batch size, 0 when the batch dim is dynamic


def input_specs(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> list[InputSpec]:
    """Describe the model's real inputs with their concrete shapes."""
    specs = []
    for vi in real_inputs(model):
        shape = list(input_shapes[vi.name])
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        layout, c, h, w = "other", 0, 0, 0
        if len(shape) == 4:
            if shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4):
                layout, c, h, w = "NCHW", shape[1], shape[2], shape[3]
            elif shape[3] in (1, 3, 4):
                layout, c, h, w = "NHWC", shape[3], shape[1], shape[2]
            else:
                layout, c, h, w = "NCHW", shape[1], shape[2], shape[3]
        dims = vi.type.tensor_type.shape.dim
        batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else 0
        specs.append(InputSpec(vi.name, tuple(shape[1:]), dtype, layout, c, h, w, batch))
    return specs


class CalibData:
    """A calibration set: `batches(split)` streams {input name: array} (and labels when known)."""

    score_limit: int | None = None    # set on a view (with_score_limit): 'score' ends here

    def __init__(self, config: CalibConfig, specs: list[InputSpec]):
        self.config = config
        self.specs = specs
        self.labels: np.ndarray | None = None
        self.notes: list[str] = []
        # results computed once from this calibration set and reused by later stages (the least
        # squares teacher, recovery.reconstruct.Teacher); views (with_score_limit) share it
        self.shared: dict = {}
        path = config.path
        if path == "random":
            self.notes.append("calibration on random data: scores and recovery from random inputs are weak; "
                              "give real samples for real results")
            self.kind, self.count = "random", config.samples
        elif not os.path.exists(path):
            raise OnnxPruneError(f"calibration data {path}: not found")
        elif os.path.isdir(path):
            self.kind = "images"
            self.files = sorted(str(p) for p in Path(path).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not self.files:
                raise OnnxPruneError(f"calibration folder {path}: no images (jpg/png/bmp) found")
            image_inputs = [s for s in specs if s.layout in ("NCHW", "NHWC")]
            if len(specs) != 1 or not image_inputs:
                raise OnnxPruneError("an image folder can calibrate only a model with one image input; "
                                     "give a .npz with one array per input instead")
            self.count = min(len(self.files), config.samples)
            # in a seeded random order: the held-out split is the last part, and a sorted listing of
            # one sub-folder per class would hold out the last classes only
            subset = self._subset(self.files)
            self.files = [subset[i] for i in np.random.default_rng(config.seed).permutation(len(subset))]
            # one sub-folder per class gives labels (sorted class names -> 0, 1, ...)
            parents = [Path(f).parent for f in self.files]
            if all(p.parent == Path(path) for p in parents) and len(set(parents)) > 1:
                classes = sorted({p.name for p in parents})
                self.labels = np.array([classes.index(p.name) for p in parents], dtype=np.int64)
        elif path.endswith(".npy"):
            if len(specs) != 1:
                raise OnnxPruneError(f"{path}: a .npy holds one array but the model has {len(specs)} inputs; use .npz")
            self.kind = "arrays"
            self.arrays = {specs[0].name: np.load(path, mmap_mode="r")}
            self._check_arrays(path)
        elif path.endswith(".npz"):
            self.kind = "arrays"
            try:
                data = np.load(path)
                names = set(data.files)
            except Exception as exc:
                raise OnnxPruneError(f"{path}: cannot read ({exc})") from None
            missing = [s.name for s in specs if s.name not in names]
            if missing and len(specs) == 1 and len([n for n in names if n != "labels"]) == 1:
                key = next(n for n in names if n != "labels")
                self.arrays = {specs[0].name: data[key]}
            elif missing:
                raise OnnxPruneError(f"{path}: no array for model input(s) {', '.join(missing)} "
                                     f"(found {', '.join(sorted(names))})")
            else:
                self.arrays = {s.name: data[s.name] for s in specs}
            if "labels" in names:
                self.labels = np.asarray(data["labels"]).astype(np.int64)
            self._check_arrays(path)
        else:
            raise OnnxPruneError(f"calibration data {path}: expected an image folder, .npy, .npz or 'random'")
        # a fixed batch dim (exported with batch 1, say): stream exactly that many samples per run
        self.static_batch = max((s.batch for s in specs), default=0)
        b = max(1, self.static_batch)
        if self.count < b:
            raise OnnxPruneError(f"{path}: too few samples ({self.count}): the model's batch is fixed to {b}")
        self.count -= self.count % b
        n_hold = b * int(round(self.count * config.holdout / b)) if self.count > b else 0
        self.split_at = self.count - n_hold
        if self.labels is not None and n_hold:
            held = set(self.labels[self.split_at:self.count].tolist())
            classes = held | set(self.labels[:self.split_at].tolist())
            if len(held) < len(classes) / 2:     # every decision is taken on the held-out split
                self.notes.append(f"the held-out split (the last {n_hold} samples) holds {len(held)} of the "
                                  f"{len(classes)} classes: the data looks sorted by class; shuffle it")

    def _subset(self, items):
        if len(items) <= self.config.samples:
            return items
        rng = np.random.default_rng(self.config.seed)
        return [items[i] for i in sorted(rng.choice(len(items), self.config.samples, replace=False))]

    def _check_arrays(self, path):
        counts = set()
        for spec in self.specs:
            arr = self.arrays[spec.name]
            if tuple(arr.shape[1:]) != spec.sample_shape:
                raise OnnxPruneError(f"{path}: array for input '{spec.name}' has samples of shape "
                                     f"{tuple(arr.shape[1:])}, the model expects {spec.sample_shape}")
            if arr.dtype.kind != spec.dtype.kind:
                raise OnnxPruneError(f"{path}: array for input '{spec.name}' is {arr.dtype}, the model expects {spec.dtype}")
            counts.add(arr.shape[0])
        if len(counts) != 1:
            raise OnnxPruneError(f"{path}: inputs have different sample counts {sorted(counts)}")
        total = counts.pop()
        if total == 0:
            raise OnnxPruneError(f"{path}: no samples")
        if self.labels is not None and len(self.labels) != total:
            raise OnnxPruneError(f"{path}: {len(self.labels)} labels for {total} samples")
        self.count = min(total, self.config.samples)

    def split_range(self, split: str) -> tuple[int, int]:
        """Sample index range of 'score' (the first part), 'holdout' (the rest) or 'all'."""
        score_end = self.split_at if self.score_limit is None else min(self.split_at, self.score_limit)
        return {"score": (0, score_end), "holdout": (self.split_at, self.count), "all": (0, self.count)}[split]

    def __getstate__(self) -> dict:
        """What a worker process is sent (runtime.pool): a memory-mapped .npy goes as its path and is
        mapped again there, not copied into the message."""
        state = dict(self.__dict__)
        if self.kind == "arrays" and isinstance(next(iter(self.arrays.values())), np.memmap):
            state["arrays"] = {name: None for name in self.arrays}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.kind == "arrays" and any(v is None for v in self.arrays.values()):
            self.arrays = {name: np.load(self.config.path, mmap_mode="r") for name in self.arrays}

    def with_score_limit(self, samples: int) -> "CalibData":
        """A view of the same data whose 'score' split is its first `samples` samples (a whole
        number of fixed batches); 'holdout' is unchanged."""
        view = copy.copy(self)
        b = max(1, self.static_batch)
        view.score_limit = max(b, samples - samples % b)
        return view

    @property
    def feed_batch(self) -> int:
        """The size of the feeds `batches` yields by default (a model's fixed batch dim, else the config's)."""
        return self.static_batch or self.config.batch_size

    def unlimited(self) -> "CalibData":
        """The data without a view's score limit (itself when it has none)."""
        if self.score_limit is None:
            return self
        whole = copy.copy(self)
        whole.score_limit = None
        return whole

    def size(self, split: str = "all") -> int:
        """Number of samples in `split`."""
        lo, hi = self.split_range(split)
        return hi - lo

    def split_labels(self, split: str) -> np.ndarray | None:
        """Labels of `split`, when the data has them."""
        if self.labels is None:
            return None
        lo, hi = self.split_range(split)
        return self.labels[lo:hi]

    def batches(self, split: str = "all", batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Stream feeds of at most `batch_size` samples over `split`. Without `batch_size`, a model
        with a fixed batch dim gets feeds of exactly that size (an explicit size is for MaskRunner,
        which splits its feeds itself)."""
        bs = batch_size or self.feed_batch
        lo, hi = self.split_range(split)
        for start in range(lo, hi, bs):
            stop = min(start + bs, hi)
            yield self._load(start, stop)

    def samples(self, indices) -> dict[str, np.ndarray]:
        """Feeds for the samples at `indices` (any order, e.g. a shuffled batch of the 'score'
        split); only those samples are read."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.kind == "arrays":
            order = np.argsort(indices, kind="stable")   # sorted reads from a memory map, then back in order
            back = np.empty_like(order)
            back[order] = np.arange(len(order))
            return {s.name: np.ascontiguousarray(self.arrays[s.name][indices[order]][back]).astype(s.dtype, copy=False)
                    for s in self.specs}
        if self.kind == "random":
            rows = [self._load(int(i), int(i) + 1) for i in indices]
            return {s.name: np.concatenate([r[s.name] for r in rows]) for s in self.specs}
        spec = self.specs[0]
        return {spec.name: np.stack([load_image(self.files[i], spec, self.config) for i in indices])}

    def _load(self, start: int, stop: int) -> dict[str, np.ndarray]:
        if self.kind == "arrays":
            return {s.name: np.ascontiguousarray(self.arrays[s.name][start:stop]).astype(s.dtype, copy=False)
                    for s in self.specs}
        if self.kind == "random":
            feeds = {}
            for i, s in enumerate(self.specs):
                rng = np.random.default_rng([self.config.seed, start, i])
                feeds[s.name] = rng.standard_normal((stop - start, *s.sample_shape)).astype(s.dtype) \
                    if s.dtype.kind == "f" else rng.integers(0, 4, (stop - start, *s.sample_shape)).astype(s.dtype)
            return feeds
        spec = self.specs[0]
        return {spec.name: np.stack([load_image(f, spec, self.config) for f in self.files[start:stop]])}


def load_image(path: str, spec: InputSpec, config: CalibConfig) -> np.ndarray:
    """One image prepared for `spec`: resize shorter side, centre-crop, channels, layout, normalise."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("L" if spec.channels == 1 else "RGB")
            w, h = img.size
            s = max(spec.width / w, spec.height / h)
            img = img.resize((max(spec.width, round(w * s)), max(spec.height, round(h * s))), Image.BILINEAR)
            w, h = img.size
            left, top = (w - spec.width) // 2, (h - spec.height) // 2
            img = img.crop((left, top, left + spec.width, top + spec.height))
            arr = np.asarray(img, dtype=np.float32)
    except Exception as exc:
        raise OnnxPruneError(f"cannot read image {path}: {type(exc).__name__}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if spec.channels not in (1, 3):
        raise OnnxPruneError(f"input '{spec.name}' has {spec.channels} channels; images give 1 or 3")
    mean = np.asarray(config.mean, np.float32).reshape(1, 1, -1)
    std = np.asarray(config.std, np.float32).reshape(1, 1, -1)
    arr = (arr * config.scale - mean) / std
    if spec.layout == "NCHW":
        arr = arr.transpose(2, 0, 1)
    return arr.astype(spec.dtype)
