"""Image passes of the default pipeline, stage by stage, with the accuracy they buy.

    python benchmarks/passes.py                       # --ratio 0.5 on the bundled model and images
    python benchmarks/passes.py --target-macs 0.5     # at a MAC budget instead
    python benchmarks/passes.py --seeds 0,1,2         # one row per seed

Prunes the bundled Fashion-MNIST ResNet with its 512 calibration images (default preset) and
prints the report's `forward_passes` (image passes through the whole network, per stage; suffix
runs counted by their share of the MACs), the seconds, the order the order check chose, the
held-out accuracy (the 128 held-out calibration images) and the test accuracy: on the full 10k
test set when Debian's dataset-fashion-mnist is installed (/usr/share/datasets/fashion-mnist),
else on the 2000 bundled test images. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from finetune import FMNIST, idx_images, idx_labels  # noqa: E402
from quality import accuracy  # noqa: E402

MODEL = os.path.join(ROOT, "models", "fmnist_resnet.onnx")
CALIB = os.path.join(ROOT, "calib_data", "fmnist_calib.npz")


def test_set() -> tuple[np.ndarray, np.ndarray, str]:
    """(inputs, labels, name): the 10k Fashion-MNIST test set if installed, else the bundled 2000."""
    if os.path.exists(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")):
        return idx_images("t10k-images-idx3-ubyte.gz"), idx_labels("t10k-labels-idx1-ubyte.gz"), "10k"
    test = np.load(os.path.join(ROOT, "calib_data", "fmnist_test.npz"))
    return test["input"], test["labels"], "2000 bundled"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--target-macs", type=float, default=None)
    ap.add_argument("--seeds", default="0")
    args = ap.parse_args()

    import onnx

    import onnxprune

    x, y, name = test_set()
    print(f"original: test accuracy {accuracy(onnx.load(MODEL), x, y, 'input'):.4f} ({name})", flush=True)
    budget = {"target_macs": args.target_macs} if args.target_macs is not None else {"ratio": args.ratio}
    for seed in (int(s) for s in args.seeds.split(",")):
        t = time.perf_counter()
        result = onnxprune.prune(MODEL, calib=CALIB, seed=seed, **budget)
        seconds = time.perf_counter() - t
        report = result.report
        check = report["allocation"].get("order_check") or {}
        held = report["holdout"]["logits"]
        print(f"seed {seed}: MACs kept {report['macs_kept']:.3f}, {seconds:.0f} s, order check chose "
              f"{check.get('chosen', '-')}, held-out accuracy {held['accuracy']:.4f}, test accuracy "
              f"{accuracy(result.model, x, y, 'input'):.4f} ({name})", flush=True)
        passes = report["forward_passes"]
        print("  forward passes: " + ", ".join(f"{k} {v:g}" for k, v in passes.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
