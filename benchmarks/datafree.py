"""Data-free pruning of the bundled Fashion-MNIST ResNet: test accuracy before and after the data-free repair.

    python benchmarks/datafree.py [--fashion-dir /usr/share/datasets/fashion-mnist] [--subset]

Runs the commands users meet first, without any calibration data, with the data-free repair off
(`--no-recover`, what they got before it) and on (the default), and scores each result on all
10,000 official test images (Debian's dataset-fashion-mnist: `apt-get install dataset-fashion-mnist`,
or `--fashion-dir` with the extracted t10k files), `--subset` on calib_data/fmnist_test.npz (the
first 2,000). Also prints the fidelity check (cosine and top-1 agreement on random inputs,
collapsed or not) of each result, what the collapse thresholds were measured on.
"""

from __future__ import annotations

import gzip
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from onnxprune import pipeline  # noqa: E402
from onnxprune.runtime.sessions import session  # noqa: E402

MODEL = os.path.join(ROOT, "models", "fmnist_resnet.onnx")
RUNS = [("--criterion blend --ratio 0.5", dict(criterion="blend", ratio=0.5)),
        ("--target-macs 0.5", dict(target_macs=0.5)),
        ("--preset fast --ratio 0.3", dict(preset="fast", ratio=0.3)),
        ("--ratio 0.3", dict(ratio=0.3)),
        ("--ratio 0.2", dict(ratio=0.2)),
        ("--ratio 0.1", dict(ratio=0.1)),
        ("--ratio 0.7", dict(ratio=0.7))]


def test_set() -> tuple[np.ndarray, np.ndarray]:
    if "--subset" in sys.argv:
        t = np.load(os.path.join(ROOT, "calib_data", "fmnist_test.npz"))
        return t["input"], t["labels"]
    folder = sys.argv[sys.argv.index("--fashion-dir") + 1] if "--fashion-dir" in sys.argv \
        else "/usr/share/datasets/fashion-mnist"
    with gzip.open(os.path.join(folder, "t10k-images-idx3-ubyte.gz")) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(os.path.join(folder, "t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return ((pixels.astype(np.float32) / 255 - 0.2860) / 0.3530).astype(np.float32), labels


def accuracy(model, x, y) -> float:
    return float((session(model).run(None, {"input": x})[0].argmax(1) == y).mean())


def main() -> None:
    x, y = test_set()
    print(f"original: {accuracy(MODEL, x, y):.2%} on {len(y)} test images", flush=True)
    print("| command (no data) | before (`--no-recover`) | after (data-free repair) | MACs kept | fidelity after "
          "(cos, agree/chance) | seconds |")
    print("|---|---|---|---|---|---|")
    for flags, kw in RUNS:
        before = pipeline.prune(MODEL, recover=False, **kw)
        t = time.perf_counter()
        after = pipeline.prune(MODEL, **kw)
        seconds = time.perf_counter() - t
        fb, fa = before.report["fidelity"]["outputs"]["logits"], after.report["fidelity"]["outputs"]["logits"]

        def fid(e):
            return (f"{e['cosine']:.2f}, {e['top1_agreement']:.2f}/{e['chance']:.2f}"
                    + (" collapsed" if e["collapsed"] else ""))

        print(f"| `{flags}` | {accuracy(before.model, x, y):.2%} ({fid(fb)}) | {accuracy(after.model, x, y):.2%} "
              f"| {after.report['macs_kept']:.3f} | {fid(fa)} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
