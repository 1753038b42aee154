"""Agreement with the original on real images: pretrained PaddleOCR models from a PyPI wheel.

    pip install scikit-image          # benchmark-only dependency (skimage.data photos)
    python benchmarks/pretrained.py [--models cls,det,rec] [--wheel rapidocr_onnxruntime-1.4.4-py3-none-any.whl]
                                    [--cache DIR] [--runs blend,l1,...] [--seeds 0,1,2] [--json out.json]
    python benchmarks/pretrained.py --markdown out.json      # the PaddleOCR tables (docs/results.md)

Models: the PaddleOCR text-direction classifier (cls, 0 vs 180 degrees), text detector (det, DBNet)
and recogniser (rec, CTC) inside the `rapidocr-onnxruntime` 1.4.4 wheel (Apache-2.0). The .onnx
files are read out of the wheel (a zip; it is not installed) into a cache folder at run time and
never committed; without `--wheel` the wheel is fetched with `pip download --no-deps`.

Images: `skimage.data.page()` (a photographed book page) and `skimage.data.text()` (handwritten
formulas) hold text; other skimage photos are text-free. Calibration crops come from the LEFT half
of both text photos (augmented: random line/crop, scale, contrast, mirror; for cls also rotated by
180 degrees at random) plus text-free photos; evaluation crops come from the RIGHT half of both
text photos and from photos not used for calibration, so the two sets share no pixels.
Preprocessing is PaddleOCR's (rapidocr's `resize_norm_img` / `DetPreProcess`): (x/255 - 0.5)/0.5,
text crops resized to height 48 and padded on the right.

Metrics against the original model on the evaluation set:
  cls  top-1 agreement, accuracy on the known orientation (every crop upright = '0' and rotated by
       180 degrees = '180'); the original is right on 97% of the page crops but at chance on the
       handwritten ones, so accuracy is also given on the page crops alone
  det  IoU of the probability maps binarised at 0.3 (PaddleOCR's `thresh`), pooled over images
       (sum of intersections / sum of unions), and the mean over images where either model marks
       text (a false alarm on a text-free photo counts 0)
  rec  CTC-greedy decoded strings equal to the original's, character error rate against the
       original's strings, per-frame argmax agreement (40 frames, blank frames over the padding
       included); on crops of the printed page only

Runs, every one at `target_macs=0.5` with calibration and recovery: each criterion of
`onnxprune.criteria.names()` with uniform allocation (`blend`: its defaults, sensitivity +
variety + order check, i.e. `preset="default"`), `blend no-order-check` (the default without
the order check), `blend` with the uniform/utilization/redundancy allocators, `preset="fast"` and
`preset="thorough"` (ensemble + searched weights: a mask game, so cls only); each with the prune
seeds of `--seeds`: metrics are averaged over seeds. A seed changes the random choices only
(`random`, thinet's image sample, variety's clustering, verification inputs), not the
calibration set: onnxprune takes the first rows of a .npz, so deterministic criteria give the
same result for every seed. Calibration samples: 512 of 640 crops for cls, 64 of 160 inputs for det
and rec (a 320-wide sample costs 50-70 ms on 2 cores). `ensemble`,
`interactions` and `--allocate utilization` score random channel masks on a batch of scoring
samples: 8 here instead of onnxprune's 64 (`--mask-samples`), and only on cls (`--mask-models`):
on det and rec they would take hours. Parameters kept are counted on both models after
normalisation (these exports keep their weights in Constant nodes). Figures, not assertions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
import zipfile

import numpy as np

WHEEL = "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
MODELS = {
    "cls": {"file": "ch_ppocr_mobile_v2.0_cls_infer.onnx", "shape": [1, 3, 48, 192]},
    "det": {"file": "ch_PP-OCRv4_det_infer.onnx", "shape": [1, 3, 320, 320]},
    "rec": {"file": "ch_PP-OCRv4_rec_infer.onnx", "shape": [1, 3, 48, 320]},
}
# Calibration samples per model (scoring + 25% held out). det and rec cost 50-70 ms per 320-wide
# sample on 2 cores, so they get fewer.
CALIB_SAMPLES = {"cls": 512, "det": 64, "rec": 64}
# ensemble, interactions and the utilization allocator (which reads the interactions game) run
# about 4-5 random channel masks per channel (cls: 10,800 / 6,754 masks; det 23,240 / 18,884; rec
# 25,120 / 24,660), each on a batch of scoring samples (64 in onnxprune). The benchmark lowers
# that batch to MASK_SAMPLES, leaving calibration statistics and recovery on all samples; on det
# and rec they stay out even so (hours on 2 cores), unless --mask-models names them.
MASK_RUNS = ("ensemble", "interactions", "blend+utilization", "preset thorough")
MASK_SAMPLES = 8
MASK_MODELS = "cls"
DATA_SEED = 0     # the crops and their augmentation; --seeds varies the pruning only

# Text lines of skimage.data.page() (191 x 384), read off the row profile of dark pixels:
# title, five body lines, the code line.
PAGE_LINES = [(12, 34), (48, 64), (66, 83), (85, 101), (102, 119), (119, 136), (168, 191)]


# --------------------------------------------------------------------------------------------
# models


def model_paths(wheel: str | None, cache: str) -> tuple[dict[str, str], dict]:
    """Extract the three .onnx files from the wheel into `cache` (once); their paths and provenance."""
    os.makedirs(cache, exist_ok=True)
    if wheel is None:
        wheel = os.path.join(cache, WHEEL)
        if not os.path.exists(wheel):
            print(f"fetching {WHEEL} with pip download (no install) ...", flush=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", cache,
                            "rapidocr-onnxruntime==1.4.4"], check=True)
    paths, info = {}, {"wheel": os.path.basename(wheel)}
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read("rapidocr_onnxruntime-1.4.4.dist-info/METADATA").decode()
        info["license"] = next((line.split(":", 1)[1].strip() for line in meta.splitlines()
                                if line.startswith("License:")), "unknown")
        for key, spec in MODELS.items():
            out = os.path.join(cache, spec["file"])
            if not os.path.exists(out):
                with open(out + ".tmp", "wb") as f:
                    f.write(zf.read("rapidocr_onnxruntime/models/" + spec["file"]))
                os.replace(out + ".tmp", out)
            paths[key] = out
            with open(out, "rb") as f:
                info[key] = {"file": spec["file"], "sha256": hashlib.sha256(f.read()).hexdigest()}
    return paths, info


# --------------------------------------------------------------------------------------------
# images


def _skimage():
    try:
        import skimage.data
    except ImportError:
        sys.exit("benchmarks/pretrained.py needs scikit-image for its photos (a benchmark-only dependency):\n"
                 "    pip install scikit-image")
    return skimage.data


def rgb(a: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 from a grey, RGB or RGBA skimage photo."""
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3]).astype(np.uint8)


def resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


def norm_text_crop(img: np.ndarray, width: int) -> np.ndarray:
    """PaddleOCR's resize_norm_img: height 48, width by aspect (at most `width`), (x/255-0.5)/0.5,
    zero padding on the right; CHW float32."""
    h, w = img.shape[:2]
    rw = min(width, int(math.ceil(48 * w / float(h))))
    out = np.zeros((3, 48, width), np.float32)
    out[:, :, :rw] = (resize(img, 48, rw).astype(np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out


def norm_det(img: np.ndarray, short: int) -> np.ndarray:
    """PaddleOCR's DetPreProcess (limit_type min): shorter side to `short`, both sides multiples of 32."""
    h, w = img.shape[:2]
    r = short / min(h, w)
    nh, nw = max(32, int(round(h * r / 32)) * 32), max(32, int(round(w * r / 32)) * 32)
    return ((resize(img, nh, nw).astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]


def ink(img: np.ndarray) -> float:
    """Fraction of pixels darker than their neighbourhood (text strokes)."""
    from scipy import ndimage

    g = img.astype(np.float32).mean(2) if img.ndim == 3 else img.astype(np.float32)
    return float((g < ndimage.uniform_filter(g, 31) - 20).mean())


def text_photos():
    """(page, text) as uint8 RGB, and the x where their evaluation (right) half starts."""
    data = _skimage()
    page, text = rgb(data.page()), rgb(data.text())
    return page, text, page.shape[1] // 2, text.shape[1] // 2


CALIB_PHOTOS = ["camera", "coins", "chelsea", "coffee", "clock", "brick", "horse", "moon",
                "immunohistochemistry", "hubble_deep_field", "logo", "colorwheel", "gravel", "grass", "cell"]
EVAL_PHOTOS = ["astronaut", "rocket", "retina", "microaneurysms"]


def eval_text_crops(widths=(48, 72, 96, 144, 192), stride=None) -> tuple[list[np.ndarray], list[str]]:
    """Text crops from the right halves of page() and text(), no augmentation, with their source."""
    page, text, px, tx = text_photos()
    crops, src = [], []
    for y0, y1 in PAGE_LINES:
        for w in widths:
            for x in range(px, page.shape[1] - w + 1, stride or max(24, w // 2)):
                c = page[max(0, y0 - 3):y1 + 3, x:x + w]
                if ink(c) > 0.04:
                    crops.append(c)
                    src.append("page")
    for h, w in ((40, 96), (56, 160), (72, 224)):
        for y in range(0, text.shape[0] - h + 1, h // 2):
            for x in range(tx, text.shape[1] - w + 1, w // 2):
                c = text[y:y + h, x:x + w]
                if ink(c) > 0.04:
                    crops.append(c)
                    src.append("text")
    return crops, src


def calib_text_crops(n: int, rng, text_free: float = 0.1) -> list[np.ndarray]:
    """`n` augmented crops from the left halves of page() and text() (and a few text-free photos)."""
    data = _skimage()
    page, text, px, tx = text_photos()
    plain = [rgb(getattr(data, name)()) for name in CALIB_PHOTOS]
    crops = []
    while len(crops) < n:
        kind = rng.random()
        if kind < text_free:
            img = plain[rng.integers(len(plain))]
            h = int(rng.integers(24, min(96, img.shape[0])))
            w = int(min(img.shape[1], h * rng.uniform(1.5, 8)))
            y, x = rng.integers(0, img.shape[0] - h + 1), rng.integers(0, img.shape[1] - w + 1)
            c = img[y:y + h, x:x + w]
        elif kind < 0.7:
            y0, y1 = PAGE_LINES[rng.integers(len(PAGE_LINES))]
            pad0, pad1 = rng.integers(0, 7, size=2)
            w = int(rng.integers(40, px + 1))
            x = int(rng.integers(0, px - w + 1))
            c = page[max(0, y0 - pad0):y1 + pad1, x:x + w]
        else:
            h = int(rng.integers(32, 80))
            w = int(min(tx, h * rng.uniform(1.5, 5)))
            y, x = rng.integers(0, text.shape[0] - h + 1), rng.integers(0, tx - w + 1)
            c = text[y:y + h, x:x + w]
            if ink(c) < 0.03:
                continue
        c = augment(c, rng)
        crops.append(c)
    return crops


def augment(c: np.ndarray, rng) -> np.ndarray:
    """Scale (down and back up: blur), contrast/brightness, mirror (p 0.2)."""
    h, w = c.shape[:2]
    s = rng.uniform(0.5, 1.0)
    if s < 0.95:
        c = resize(resize(c, max(8, int(h * s)), max(8, int(w * s))), h, w)
    c = np.clip((c.astype(np.float32) - 128) * rng.uniform(0.7, 1.3) + 128 + rng.uniform(-30, 30), 0, 255)
    c = c.astype(np.uint8)
    if rng.random() < 0.2:
        c = c[:, ::-1]
    return np.ascontiguousarray(c)


def det_calib(n: int, rng) -> np.ndarray:
    """`n` 320x320 inputs: random scaled crops of the calibration halves / photos, flipped at random."""
    data = _skimage()
    page, text, px, tx = text_photos()
    sources = [page[:, :px], text[:, :tx]] * 4 + [rgb(getattr(data, name)()) for name in CALIB_PHOTOS]
    out = np.zeros((n, 3, 320, 320), np.float32)
    for i in range(n):
        img = sources[rng.integers(len(sources))]
        h, w = img.shape[:2]
        side = int(rng.uniform(0.5, 1.0) * min(h, w))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        c = img[y:y + side, x:x + side]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        out[i] = norm_det(np.ascontiguousarray(c), 320)[0]
    return out


def det_eval() -> tuple[list[np.ndarray], list[str]]:
    """Evaluation inputs at their own sizes: right halves of page()/text() at two scales, and photos."""
    data = _skimage()
    page, text, px, tx = text_photos()
    inputs, names = [], []
    for name, img in (("page right half", page[:, px:]), ("text right half", text[:, tx:])):
        for short in (320, 480):
            inputs.append(norm_det(img, short))
            names.append(f"{name} @{short}")
    for name in EVAL_PHOTOS:
        inputs.append(norm_det(rgb(getattr(data, name)()), 320))
        names.append(name)
    return inputs, names


# --------------------------------------------------------------------------------------------
# tasks: calibration set, evaluation set, metrics


def run_model(model, feeds_list: list[np.ndarray], batch: int = 64) -> list[np.ndarray]:
    """The first output for each array of `feeds_list` (split in batches)."""
    from onnxprune.runtime.sessions import session

    sess = session(model)
    name = sess.get_inputs()[0].name
    outs = []
    for x in feeds_list:
        outs.append(np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]))
    return outs


class ClsTask:
    name = "cls"

    def __init__(self, rng):
        crops = calib_text_crops(640, rng)
        x = np.stack([norm_text_crop(c[::-1, ::-1] if rng.random() < 0.5 else c, 192) for c in crops])
        self.calib = x
        crops, src = eval_text_crops()
        up = np.stack([norm_text_crop(c, 192) for c in crops])
        down = np.stack([norm_text_crop(np.ascontiguousarray(c[::-1, ::-1]), 192) for c in crops])
        self.x = np.concatenate([up, down])
        self.labels = np.array([0] * len(up) + [1] * len(down))
        self.src = np.array(src + src)
        self.describe = (f"{len(self.calib)} calibration crops; {len(self.x)} evaluation crops "
                         f"({(self.src == 'page').sum()} page, {(self.src == 'text').sum()} text; each upright "
                         f"and rotated by 180 degrees)")

    def reference(self, model):
        self.ref = run_model(model, [self.x])[0]
        pred = self.ref.argmax(1)
        acc = {"accuracy": float((pred == self.labels).mean())}
        for s in ("page", "text"):
            acc[f"accuracy_{s}"] = float((pred[self.src == s] == self.labels[self.src == s]).mean())
        return acc

    def metrics(self, model):
        out = run_model(model, [self.x])[0]
        pred, ref, page = out.argmax(1), self.ref.argmax(1), self.src == "page"
        return {"collapsed": len(np.unique(pred)) == 1, "agreement": float((pred == ref).mean()),
                "accuracy": float((pred == self.labels).mean()),
                "accuracy_page": float((pred[page] == self.labels[page]).mean())}

    columns = [("agreement", "top-1 agree"), ("accuracy", "accuracy"), ("accuracy_page", "acc (page)")]


class DetTask:
    name = "det"
    threshold = 0.3

    def __init__(self, rng):
        self.calib = det_calib(160, rng)
        self.x, self.names = det_eval()
        self.describe = (f"{len(self.calib)} calibration inputs (320x320); {len(self.x)} evaluation images: "
                         + ", ".join(self.names))

    def reference(self, model):
        self.ref = [o > self.threshold for o in run_model(model, self.x)]
        return {"text_pixels": {n: round(float(r.mean()), 4) for n, r in zip(self.names, self.ref)}}

    def metrics(self, model):
        outs = [o > self.threshold for o in run_model(model, self.x)]
        inter = [float((a & b).sum()) for a, b in zip(outs, self.ref)]
        union = [float((a | b).sum()) for a, b in zip(outs, self.ref)]
        per = [i / u for i, u in zip(inter, union) if u > 0]
        return {"iou": sum(inter) / max(sum(union), 1.0), "iou_mean": float(np.mean(per)) if per else 1.0,
                "iou_page": _pooled(inter, union, self.names, "page"),
                "iou_text": _pooled(inter, union, self.names, "text")}

    columns = [("iou", "IoU pooled"), ("iou_mean", "IoU mean"), ("iou_page", "IoU page"), ("iou_text", "IoU text")]


def _pooled(inter, union, names, prefix):
    idx = [i for i, n in enumerate(names) if n.startswith(prefix)]
    return sum(inter[i] for i in idx) / max(sum(union[i] for i in idx), 1.0)


class RecTask:
    name = "rec"

    def __init__(self, rng, model_path: str):
        import onnx

        crops = calib_text_crops(160, rng, text_free=0.05)
        self.calib = np.stack([norm_text_crop(c, 320) for c in crops])
        # word-sized crops of the printed page only: on the handwritten formulas of text() the
        # original reads no words, so agreeing with it there says little
        crops, src = eval_text_crops(widths=(96, 128, 160, 192), stride=16)
        self.x = np.stack([norm_text_crop(c, 320) for c, s in zip(crops, src) if s == "page"])
        meta = {p.key: p.value for p in onnx.load(model_path, load_external_data=False).metadata_props}
        self.chars = ["blank"] + meta["character"].splitlines() + [" "]
        self.describe = f"{len(self.calib)} calibration crops; {len(self.x)} evaluation crops (page)"

    def decode(self, probs: np.ndarray) -> list[str]:
        out = []
        for row in probs.argmax(2):
            keep = [c for i, c in enumerate(row) if c != 0 and (i == 0 or c != row[i - 1])]
            out.append("".join(self.chars[c] for c in keep))
        return out

    def reference(self, model):
        self.ref = run_model(model, [self.x], batch=16)[0]
        self.ref_text = self.decode(self.ref)
        return {"examples": self.ref_text[::max(1, len(self.ref_text) // 8)][:8],
                "empty_strings": sum(not t for t in self.ref_text)}

    def metrics(self, model):
        out = run_model(model, [self.x], batch=16)[0]
        text = self.decode(out)
        dist = sum(_edit(a, b) for a, b in zip(text, self.ref_text))
        return {"string_agreement": float(np.mean([a == b for a, b in zip(text, self.ref_text)])),
                "cer": dist / max(1, sum(len(b) for b in self.ref_text)),
                "frame_agreement": float((out.argmax(2) == self.ref.argmax(2)).mean())}

    columns = [("cer", "CER vs orig"), ("string_agreement", "strings equal"), ("frame_agreement", "frame agree")]


def _edit(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


# --------------------------------------------------------------------------------------------
# runs


def limit_mask_batch(samples: int) -> None:
    """Score the mask games of `ensemble`/`interactions` on `samples` calibration samples instead of
    64 (onnxprune.criteria.ensembles.BATCH and the batch the interactions game takes)."""
    from onnxprune.criteria import ensembles, interactions

    first = ensembles.first_batch
    ensembles.BATCH = samples
    interactions.first_batch = lambda data, size: first(data, min(size, samples))


def run_list(only: list[str] | None) -> list[tuple[str, dict]]:
    """(label, prune keywords) for every run; `blend` with its defaults is `preset="default"`."""
    from onnxprune import criteria

    runs = []
    for name in criteria.names():
        if name == "blend":
            runs.append(("blend (sensitivity) = preset default", {"criterion": "blend", "preset": "default"}))
        else:   # uniform ratios: the criteria's order alone (with --calib the default is now sensitivity)
            runs.append((name, {"criterion": name, "allocate": "uniform"}))
    for alloc in ("uniform", "utilization", "redundancy"):
        runs.append((f"blend+{alloc}", {"criterion": "blend", "allocate": alloc}))
    # the default without the order check: the uniform blend
    runs.append(("blend no-order-check", {"criterion": "blend", "preset": "default", "order_check": False}))
    runs.append(("preset fast", {"criterion": "blend", "preset": "fast"}))
    runs.append(("preset thorough", {"criterion": "blend", "preset": "thorough"}))   # + ensemble, searched weights
    if only:
        known = {r[0] for r in runs}
        # any other CRITERION+ALLOCATOR[+VARIETY] label, e.g. mean_act+sensitivity or blend+sensitivity+off
        extra = [(label, {"criterion": parts[0], "allocate": parts[1], **({"variety": parts[2]} if len(parts) > 2 else {})})
                 for label, parts in ((label, label.split("+")) for label in only)
                 if len(parts) > 1 and label not in known and parts[0] in criteria.names()]
        # a label, or the first word of one with spaces ("preset" runs both presets); "blend" is
        # the default preset's run only, not every blend row
        runs = [r for r in runs if r[0] in only or (" " in r[0] and r[0].split(" ")[0] in only
                                                     and r[0].split(" ")[0] != "blend")
                or (r[0].startswith("blend (") and "blend" in only)] + extra
    return runs


def one_run(onnxprune, path, key, task, calib, samples, seed, target, kwargs, base_params) -> dict:
    """Prune once and measure; failures are recorded, not raised."""
    from onnxprune.analysis import fold, graph, metrics

    out = {"seed": seed}
    t = time.perf_counter()
    try:
        result = onnxprune.prune(path, target_macs=target, calib=calib, calib_samples=samples, seed=seed,
                                 input_shape={"x": MODELS[key]["shape"]}, **kwargs)
    except Exception as exc:   # noqa: BLE001 - a benchmark reports failures and goes on
        out.update(error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t)
        return out
    out["seconds"] = time.perf_counter() - t
    rep = result.report
    out.update(macs_kept=rep["macs_kept"],
               params_kept=metrics.count_params(fold.normalise(result.model)) / base_params,
               valid=bool(rep["verification"] and rep["verification"].get("valid")),
               recovery=[s["step"] for s in rep["recovery"] if s.get("kept")], notes=rep.get("notes"),
               holdout=rep.get("holdout"), order_check=(rep.get("allocation") or {}).get("order_check"))
    try:
        out.update(task.metrics(result.model))
    except Exception as exc:   # noqa: BLE001
        out["error"] = f"evaluation: {type(exc).__name__}: {exc}"
    return out


TITLES = {"cls": ["top-1 agreement", "accuracy", "accuracy (page)"],
          "det": ["IoU pooled", "IoU mean per image", "IoU page", "IoU text()"],
          "rec": ["CER vs original", "strings equal", "frame agreement"]}
KEYS = {"cls": ["agreement", "accuracy", "accuracy_page"], "det": ["iou", "iou_mean", "iou_page", "iou_text"],
        "rec": ["cer", "string_agreement", "frame_agreement"]}


def markdown(results: dict) -> str:
    """The PaddleOCR tables (docs/results.md) from a --json file."""
    out = []
    for key, model in results["models"].items():
        keys, titles = KEYS[key], TITLES[key]
        many = len(results["seeds"]) > 1
        out.append(f"{key} ({model['file']}, input {','.join(map(str, model['input_shape']))})\n")
        out.append("| run | MACs kept | params kept | " + f"{titles[0]}{' (min-max)' if many else ''} | "
                   + " | ".join(titles[1:]) + " | s |")
        out.append("|---" * (len(titles) + 4) + "|")
        for row in model["rows"]:
            if "skipped" in row or "error" in row:
                why = "not run (mask games: hours on 2 cores)" if "skipped" in row else "fails: " + row["error"][:60]
                out.append(f"| {row['run']} | {why} |" + " |" * (len(titles) + 2))
                continue
            first = f"{row[keys[0]]:.3f}"
            if many:
                lo, hi = row[keys[0] + "_range"]
                first += f" ({lo:.2f}-{hi:.2f})"
            note = f" (one class: {row['collapsed']}/{len(row['seeds'])})" if row.get("collapsed") else ""
            out.append(f"| {row['run']} | {row['macs_kept']:.3f} | {row['params_kept']:.3f} | {first}{note} | "
                       + " | ".join(f"{row[k]:.3f}" for k in keys[1:]) + f" | {row['seconds']:.0f} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="cls,det,rec")
    ap.add_argument("--wheel", help=f"path to {WHEEL} (default: pip download into the cache)")
    ap.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "onnxprune-benchmarks"))
    ap.add_argument("--runs", help="comma-separated run labels (criterion names, blend+ALLOC, preset, or any "
                                   "CRITERION+ALLOC[+VARIETY]); default all")
    ap.add_argument("--calib-samples", type=int, help="override the per-model calibration sample counts")
    ap.add_argument("--mask-samples", type=int, default=MASK_SAMPLES,
                    help="scoring samples for the mask games of ensemble/interactions/utilization (onnxprune: 64)")
    ap.add_argument("--mask-models", default=MASK_MODELS,
                    help="models on which the mask-game runs (%s) are run at all" % ", ".join(MASK_RUNS))
    ap.add_argument("--seeds", default="0,1,2",
                    help="prune seeds (random criteria, thinet's sample, variety, verification inputs; not the "
                         "calibration set); metrics are "
                         "averaged, the first column shows min-max")
    ap.add_argument("--target", type=float, default=0.5, help="fraction of MACs removed (target_macs)")
    ap.add_argument("--finetune", action="store_true", help="every run also fine-tunes (--finetune; the [finetune] extra)")
    ap.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs with --finetune")
    ap.add_argument("--json")
    ap.add_argument("--markdown", metavar="JSON", help="print the markdown tables of a --json file and exit")
    args = ap.parse_args()
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown(json.load(f)))
        return 0
    _skimage()

    import onnx
    import onnxruntime

    import onnxprune
    from onnxprune.analysis import fold, graph, metrics

    onnxruntime.set_default_logger_severity(3)
    limit_mask_batch(args.mask_samples)

    paths, provenance = model_paths(args.wheel, args.cache)
    print(f"models from {provenance['wheel']} (licence in its metadata: {provenance['license']}), "
          f"cache {args.cache}", flush=True)
    seeds = [int(x) for x in args.seeds.split(",")]
    results = {"provenance": provenance, "target_macs": args.target, "seeds": seeds,
               "onnxprune": os.path.dirname(onnxprune.__file__),
               "mask_samples": args.mask_samples, "models": {}}
    print(f"onnxprune from {os.path.dirname(onnxprune.__file__)}; ensemble/interactions/utilization mask games "
          f"on {args.mask_samples} scoring samples (onnxprune's default: 64)", flush=True)
    for key in args.models.split(","):
        rng = np.random.default_rng(DATA_SEED)
        task = {"cls": ClsTask, "det": DetTask}[key](rng) if key != "rec" else RecTask(rng, paths[key])
        order = rng.permutation(len(task.calib))       # the held-out split is the tail: mix it
        calib = os.path.join(args.cache, f"{key}_calib.npz")
        np.savez(calib, x=task.calib[order])
        original = onnx.load(paths[key])
        ref = task.reference(original)
        # these exports keep their weights in Constant nodes, which the report's parameter count
        # does not see (it gives params_kept 1.0): count both models after normalisation instead
        base_params = metrics.count_params(fold.normalise(original))
        samples = args.calib_samples or CALIB_SAMPLES[key]
        print(f"\n== {key}: {MODELS[key]['file']}, input {MODELS[key]['shape']}; {task.describe}", flush=True)
        print(f"original: {json.dumps(ref, ensure_ascii=False)}", flush=True)
        titles = [task.columns[0][1] + (" (min-max)" if len(seeds) > 1 else "")] + [t for _, t in task.columns[1:]]
        header = (f"{'run':<38} {'MACs kept':>9} {'params kept':>11} {titles[0]:>20} "
                  + " ".join(f"{t:>13}" for t in titles[1:])
                  + f" {'calib':>5} {'s':>6}  recovery kept (seed {seeds[0]})")
        print(header, flush=True)
        rows = []
        for label, kwargs in run_list(args.runs.split(",") if args.runs else None):
            if args.finetune:
                label, kwargs = f"{label} + finetune", {**kwargs, "finetune": True, "epochs": args.epochs}
            row = {"run": label, **kwargs, "calib_samples": samples}
            if label in MASK_RUNS:
                if key not in args.mask_models.split(","):
                    row["skipped"] = (f"not run: mask games on {args.mask_samples} samples would take hours "
                                      f"on 2 cores (--mask-models {key} to run it)")
                    rows.append(row)
                    print(f"{label:<38} {row['skipped']}", flush=True)
                    continue
                row["mask_samples"] = args.mask_samples
            row["seeds"] = [one_run(onnxprune, paths[key], key, task, calib, samples, seed, args.target, kwargs,
                                    base_params) for seed in seeds]
            good = [r for r in row["seeds"] if "error" not in r]
            if not good:
                row["error"] = row["seeds"][0]["error"]
                rows.append(row)
                print(f"{label:<38} FAILED {row['error'][:200]}", flush=True)
                continue
            for k in ["macs_kept", "params_kept", "seconds"] + [k for k, _ in task.columns]:
                vals = [r[k] for r in good]
                row[k] = float(np.mean(vals))
                row[k + "_range"] = [float(min(vals)), float(max(vals))]
            row["valid"] = all(r["valid"] for r in good)
            row["collapsed"] = sum(bool(r.get("collapsed")) for r in good)
            row["recovery"] = good[0]["recovery"]
            errors = [f"seed {r['seed']}: {r['error']}" for r in row["seeds"] if "error" in r]
            rows.append(row)
            head = task.columns[0][0]
            cells = [f"{row[head]:.3f}" + (f" ({row[head + '_range'][0]:.2f}-{row[head + '_range'][1]:.2f})"
                                            if len(good) > 1 else "")]
            cells += [f"{row[k]:.3f}" for k, _ in task.columns[1:]]
            print(f"{label:<38} {row['macs_kept']:>9.3f} {row['params_kept']:>11.3f} {cells[0]:>20} "
                  + " ".join(f"{c:>13}" for c in cells[1:]) + f" {samples:>5} {row['seconds']:>6.1f}  "
                  + ",".join(row["recovery"]) + ("" if row["valid"] else "  INVALID")
                  + (f"  collapsed to one class in {row['collapsed']}/{len(good)}" if row["collapsed"] else "")
                  + (f"  {'; '.join(errors)}" if errors else ""), flush=True)
        results["models"][key] = {"file": MODELS[key]["file"], "input_shape": MODELS[key]["shape"],
                                  "data": task.describe, "original": ref, "rows": rows}
        if args.json:      # after every model, so a long run leaves what it finished
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
