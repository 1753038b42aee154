"""Agreement with the original on real images: a pretrained YOLOv8n detector from a PyPI package.

    pip install nudenet scikit-image      # benchmark-only; nudenet's model is AGPL-3.0: read from
                                          # the installed package, never copied into this repo
    python benchmarks/yolo.py [--runs default,l1,whole] [--seeds 0] [--json out.json]

Model: `320n.onnx` of the installed `nudenet` package (a YOLOv8n with 18 classes; input
[1, 3, 320, 320] RGB / 255, padded to a square; output [1, 22, 2100]: 4 box coordinates in
pixels and 18 Sigmoid class scores per anchor, concatenated on axis 1).

Images: mosaics of the faces in `skimage.data.lfw_subset()` (100 faces and 100 non-faces, 25 x 25
grey, upscaled into tiles of 64-160 pixels) and skimage photos, padded and resized as nudenet
does. Calibration: 96 inputs from faces 0-59, non-faces 100-159 and the CALIB_PHOTOS; evaluation:
24 mosaics from faces 60-99 and non-faces 160-199 and the EVAL_PHOTOS at full size: the two sets
share no pixels.

Metrics against the original on the evaluation inputs: detections as nudenet makes them (best
class score >= 0.25, then non-maximum suppression at IoU 0.45, per class here), matched one to one
by class and IoU >= 0.5: recall (the original's detections the pruned model finds), precision
and F1; and the relative squared error of the box part ([:, 0:4]) and of the score part
([:, 4:22]) of the raw output.

Runs, all at `target_macs=0.5` with calibration and recovery: `default` (onnxprune's default
preset), `l1` (uniform ratios, recovery), `mean_act` (+ sensitivity allocation), and `whole` (the
default preset with every loss reading the output as one tensor, as onnxprune did before it read
Concat outputs part by part). Figures, not assertions.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np

CALIB_PHOTOS = ["coffee", "chelsea", "coins", "clock", "brick", "horse", "moon", "page", "text",
                "immunohistochemistry", "hubble_deep_field", "logo", "colorwheel", "gravel", "grass", "cell"]
EVAL_PHOTOS = ["astronaut", "camera", "rocket", "retina"]
RUNS = {"default": {"criterion": "blend", "preset": "default"},
        "l1": {"criterion": "l1", "allocate": "uniform"},
        "mean_act": {"criterion": "mean_act", "allocate": "sensitivity"},
        "whole": {"criterion": "blend", "preset": "default"}}
SIZE = 320
SCORE, NMS_IOU, MATCH_IOU = 0.25, 0.45, 0.5


def model_path(given: str | None) -> str:
    """`given`, else 320n.onnx inside the installed nudenet package (not imported: it needs cv2)."""
    if given:
        return given
    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("benchmarks/yolo.py reads the YOLOv8n of the nudenet package: pip install nudenet "
                 "(or give --model PATH)")
    return os.path.join(list(spec.submodule_search_locations)[0], "320n.onnx")


def _data():
    try:
        import skimage.data
        import skimage.transform
    except ImportError:
        sys.exit("benchmarks/yolo.py needs scikit-image: pip install scikit-image")
    return skimage.data, skimage.transform


def to_input(img: np.ndarray) -> np.ndarray:
    """nudenet's preprocessing: RGB in [0, 1], padded right/bottom to a square, resized to 320."""
    _, tf = _data()
    img = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    img = img[..., :3]
    side = max(img.shape[:2])
    padded = np.zeros((side, side, 3), np.float32)
    padded[:img.shape[0], :img.shape[1]] = img
    return tf.resize(padded, (SIZE, SIZE), anti_aliasing=True).astype(np.float32).transpose(2, 0, 1)


def mosaic(tiles: np.ndarray, rng) -> np.ndarray:
    """A 320 x 320 grey mosaic of `tiles` (25 x 25, upscaled to one random tile size), flipped at random."""
    _, tf = _data()
    size = int(rng.choice([64, 80, 107, 160]))
    k = SIZE // size
    img = np.full((SIZE, SIZE), 0.5, np.float32)
    for i, t in enumerate(tiles[rng.permutation(len(tiles))[:k * k]]):
        r, c = divmod(i, k)
        img[r * size:(r + 1) * size, c * size:(c + 1) * size] = tf.resize(t[:, ::-1] if rng.random() < 0.5 else t,
                                                                           (size, size))
    return np.stack([img] * 3)


def photo(name: str) -> np.ndarray:
    data, _ = _data()
    img = getattr(data, name)()
    return (img.astype(np.uint8) * 255 if img.dtype == bool else img)


def image_sets(rng) -> tuple[np.ndarray, np.ndarray]:
    """(calibration [96, 3, 320, 320], evaluation [24 + len(EVAL_PHOTOS), 3, 320, 320])."""
    data, _ = _data()
    lfw = data.lfw_subset()
    faces, others = lfw[:100], lfw[100:]
    calib_tiles = np.concatenate([faces[:60], others[:40], faces[:60]])    # two faces to one non-face
    eval_tiles = np.concatenate([faces[60:], others[60:80], faces[60:]])
    calib = [mosaic(calib_tiles, rng) for _ in range(64)]
    photos = [photo(n) for n in CALIB_PHOTOS]
    while len(calib) < 96:            # random square crops of the calibration photos, flipped at random
        img = photos[rng.integers(len(photos))]
        h, w = img.shape[:2]
        s = int(rng.uniform(0.5, 1.0) * min(h, w))
        y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        crop = img[y:y + s, x:x + s]
        calib.append(to_input(crop[:, ::-1] if rng.random() < 0.5 else crop))
    evals = [mosaic(eval_tiles, rng) for _ in range(24)] + [to_input(photo(n)) for n in EVAL_PHOTOS]
    # shuffled: onnxprune holds out the last quarter of an .npz, which must hold faces too
    return np.stack(calib)[rng.permutation(len(calib))].astype(np.float32), np.stack(evals).astype(np.float32)


def run_model(model, x: np.ndarray) -> np.ndarray:
    from onnxprune.runtime.sessions import session

    sess = session(model)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [n, 4] and b [m, 4] given as (cx, cy, w, h): [n, m]."""
    a0, a1 = a[:, None, :2] - a[:, None, 2:] / 2, a[:, None, :2] + a[:, None, 2:] / 2
    b0, b1 = b[None, :, :2] - b[None, :, 2:] / 2, b[None, :, :2] + b[None, :, 2:] / 2
    inter = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None).prod(-1)
    return inter / (a[:, None, 2:].prod(-1) + b[None, :, 2:].prod(-1) - inter + 1e-9)


def detections(out: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image: (boxes [k, 4] cx cy w h, classes [k]) after the score threshold and per-class NMS."""
    result = []
    for o in out:
        scores = o[4:].max(0)
        keep = np.where(scores >= SCORE)[0]
        keep = keep[np.argsort(-scores[keep])]
        boxes, classes = o[:4, keep].T, o[4:, keep].argmax(0)
        chosen = []
        for i in range(len(keep)):
            if all(classes[j] != classes[i] or iou(boxes[i:i + 1], boxes[j:j + 1])[0, 0] < NMS_IOU for j in chosen):
                chosen.append(i)
        result.append((boxes[chosen], classes[chosen]))
    return result


def agreement(ref: list, new: list) -> dict:
    """Recall, precision and F1 of `new`'s detections against `ref`'s (one-to-one, same class, IoU >= 0.5)."""
    matched = n_ref = n_new = 0
    for (rb, rc), (nb, nc) in zip(ref, new):
        n_ref, n_new = n_ref + len(rb), n_new + len(nb)
        if not len(rb) or not len(nb):
            continue
        m = iou(rb, nb) * (rc[:, None] == nc[None, :])
        used = set()
        for i in np.argsort(-m.max(1)):
            j = next((j for j in np.argsort(-m[i]) if m[i, j] >= MATCH_IOU and j not in used), None)
            if j is not None:
                used.add(j)
                matched += 1
    recall, precision = matched / max(n_ref, 1), matched / max(n_new, 1)
    return {"recall": recall, "precision": precision, "f1": 2 * recall * precision / max(recall + precision, 1e-9),
            "detections": n_new}


def rel_error(ref: np.ndarray, out: np.ndarray) -> float:
    return float(((out.astype(np.float64) - ref) ** 2).sum() / max((ref.astype(np.float64) ** 2).sum(), 1e-30))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a YOLOv8-style .onnx (default: nudenet's 320n.onnx)")
    ap.add_argument("--runs", default="default,l1,mean_act,whole")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--target", type=float, default=0.5, help="fraction of MACs removed (target_macs)")
    ap.add_argument("--finetune", action="store_true", help="every run also fine-tunes (--finetune; the [finetune] extra)")
    ap.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs with --finetune")
    ap.add_argument("--json")
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import onnxprune
    from onnxprune.verification import evaluate

    path = model_path(args.model)
    calib_x, eval_x = image_sets(np.random.default_rng(0))
    cache = os.path.join(os.path.expanduser("~"), ".cache", "onnxprune-benchmarks")
    os.makedirs(cache, exist_ok=True)
    calib = os.path.join(cache, "yolo_calib.npz")
    np.savez(calib, images=calib_x)
    ref = run_model(path, eval_x)
    ref_dets = detections(ref)
    print(f"{os.path.basename(path)}: {len(calib_x)} calibration inputs, {len(eval_x)} evaluation inputs; "
          f"the original makes {sum(len(b) for b, _ in ref_dets)} detections on them", flush=True)
    print(f"{'run':<10}{'seed':>5}{'MACs kept':>10}{'recall':>8}{'precision':>10}{'F1':>7}{'dets':>6}"
          f"{'box err':>9}{'score err':>10}{'s':>6}  held-out rows", flush=True)
    results = []
    for name in args.runs.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            parts = evaluate.output_parts
            if name == "whole":     # every loss reads the output as one tensor (before part-by-part)
                evaluate.output_parts = lambda model, shapes: {}
            t = time.perf_counter()
            try:
                result = onnxprune.prune(path, target_macs=args.target, calib=calib, seed=seed,
                                         input_shape={"images": [1, 3, SIZE, SIZE]}, **RUNS[name],
                                         **({"finetune": True, "epochs": args.epochs} if args.finetune else {}))
            finally:
                evaluate.output_parts = parts
            seconds = time.perf_counter() - t
            out = run_model(result.model, eval_x)
            row = {"run": name, "seed": seed, "macs_kept": result.report["macs_kept"], **agreement(ref_dets, detections(out)),
                   "box_error": rel_error(ref[:, :4], out[:, :4]), "score_error": rel_error(ref[:, 4:], out[:, 4:]),
                   "seconds": seconds, "holdout": result.report.get("holdout"),
                   "order_check": (result.report.get("allocation") or {}).get("order_check")}
            results.append(row)
            held = ", ".join(f"{k} {v.get('rel_sq_error', 0):.3g}" for k, v in (row["holdout"] or {}).items())
            print(f"{name:<10}{seed:>5}{row['macs_kept']:>10.3f}{row['recall']:>8.3f}{row['precision']:>10.3f}"
                  f"{row['f1']:>7.3f}{row['detections']:>6}{row['box_error']:>9.4f}{row['score_error']:>10.4f}"
                  f"{seconds:>6.0f}  {held}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
