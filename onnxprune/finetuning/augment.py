"""Augmentation of image inputs for fine-tuning (the teacher sees the same augmented batch).

`mix`: every input blended with another of the batch, ``lam * x_i + (1 - lam) * x_j`` with lam
uniform in [0, 1] (mixup; with a teacher that sees the same blend it is "function matching",
Beyer et al. 2022, which lets distillation learn from few images without over-fitting them);
`shift`: every image translated by up to SHIFT_FRACTION of its height and width (edge pixels
repeated into the gap), `crop`: a random crop of CROP_AREA of the area or more, resized back
(bilinear), `flip`: mirrored left-right with probability 1/2 (opt-in: text and digits are not
mirror-invariant). Only 4-D image inputs (NCHW or NHWC) are augmented; other inputs pass as they are.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

AUGMENTATIONS = ("shift", "crop", "flip", "mix")
DEFAULT_AUGMENT = ("shift",)
SHIFT_FRACTION = 0.1
CROP_AREA = 0.8


def parse_augment(value: str | tuple | list | None) -> tuple[str, ...]:
    """'none', 'default' or a comma list of AUGMENTATIONS -> a tuple of names."""
    if value is None:
        return DEFAULT_AUGMENT
    names = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if names in (["none"], []):
        return ()
    result = []
    for name in names:
        if name == "default":
            result.extend(DEFAULT_AUGMENT)
        elif name in AUGMENTATIONS:
            result.append(name)
        else:
            raise UsageError(f"unknown augmentation '{name}'; choose none, default or a list of "
                                 f"{', '.join(AUGMENTATIONS)}")
    return tuple(dict.fromkeys(result))


def augment(feeds: dict[str, np.ndarray], specs, names: tuple[str, ...], rng: np.random.Generator) -> dict:
    """`feeds` with the augmentations `names` applied to every image input (a new dict)."""
    if not names:
        return feeds
    result = dict(feeds)
    if "mix" in names:
        n = len(next(iter(feeds.values())))
        partner, lam = rng.permutation(n), rng.uniform(0.0, 1.0, n)
        for spec in specs:
            x = feeds[spec.name]
            if x.dtype.kind == "f":
                w = lam.reshape((n,) + (1,) * (x.ndim - 1)).astype(x.dtype)
                result[spec.name] = w * x + (1 - w) * x[partner]
    for spec in specs:
        x = result[spec.name]
        if spec.layout not in ("NCHW", "NHWC") or x.ndim != 4 or x.dtype.kind != "f" or min(spec.height, spec.width) < 8:
            continue
        nchw = x if spec.layout == "NCHW" else x.transpose(0, 3, 1, 2)
        nchw = np.stack([_one(img, names, rng) for img in nchw])
        result[spec.name] = np.ascontiguousarray(nchw if spec.layout == "NCHW" else nchw.transpose(0, 2, 3, 1))
    return result


def _one(img: np.ndarray, names, rng) -> np.ndarray:
    _, h, w = img.shape
    if "crop" in names:
        area = rng.uniform(CROP_AREA, 1.0)
        ch, cw = max(2, int(round(h * np.sqrt(area)))), max(2, int(round(w * np.sqrt(area))))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        img = _resize(img[:, top:top + ch, left:left + cw], h, w)
    if "shift" in names:
        dy = int(rng.integers(-int(h * SHIFT_FRACTION), int(h * SHIFT_FRACTION) + 1))
        dx = int(rng.integers(-int(w * SHIFT_FRACTION), int(w * SHIFT_FRACTION) + 1))
        pad = ((0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)))
        img = np.pad(img, pad, mode="edge")[:, max(-dy, 0):max(-dy, 0) + h, max(-dx, 0):max(-dx, 0) + w]
    if "flip" in names and rng.random() < 0.5:
        img = img[:, :, ::-1]
    return img.astype(np.float32 if img.dtype == np.float64 else img.dtype, copy=False)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of [C, h0, w0] to [C, h, w] (align_corners=False, as torch and Pillow)."""
    _, h0, w0 = img.shape
    ys = np.clip((np.arange(h) + 0.5) * h0 / h - 0.5, 0, h0 - 1)
    xs = np.clip((np.arange(w) + 0.5) * w0 / w - 0.5, 0, w0 - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h0 - 1), np.minimum(x0 + 1, w0 - 1)
    fy, fx = (ys - y0)[None, :, None], (xs - x0)[None, None, :]
    top = img[:, y0][:, :, x0] * (1 - fx) + img[:, y0][:, :, x1] * fx
    bottom = img[:, y1][:, :, x0] * (1 - fx) + img[:, y1][:, :, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(img.dtype)
