"""The default pipeline against single criteria at a MAC target, on the bundled Fashion-MNIST model.

    python benchmarks/defaults.py               # criteria rows
    python benchmarks/defaults.py --allocators  # blend with every allocator instead
    python benchmarks/defaults.py --single      # single criteria, uniform vs sensitivity allocation
    python benchmarks/defaults.py --thorough    # also the default blend under --preset thorough
    python benchmarks/defaults.py --full-test   # score on all 10k test images (needs apt's dataset-fashion-mnist)

`order check` names the order the default preset's check chose (off: the uniform blend, forced);
`variety` the chooser in effect ("(default)": not given, so the check may have turned it off).

Prints test accuracy (2000 bundled test images) for l1 with and without recovery, thinet, blend
with uniform allocation, and the default pipeline (blend + sensitivity + variety), all at
`--target-macs 0.5` with the bundled calibration set. Figures, not assertions.
"""
import os
import sys
import time

import numpy as np
import onnx

import onnxprune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from quality import accuracy  # noqa: E402

MODEL = os.path.join(ROOT, "models", "fmnist_resnet.onnx")
CALIB = os.path.join(ROOT, "calib_data", "fmnist_calib.npz")
FULL_TEST = "/usr/share/datasets/fashion-mnist"   # Debian's dataset-fashion-mnist (apt install)


def full_test_split() -> tuple[np.ndarray, np.ndarray]:
    """All 10,000 official test images, preprocessed like calib_data/fmnist_test.npz (its first 2,000)."""
    import gzip

    with gzip.open(os.path.join(FULL_TEST, "t10k-images-idx3-ubyte.gz")) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(os.path.join(FULL_TEST, "t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return ((pixels.astype(np.float32) / 255 - 0.2860) / 0.3530).astype(np.float32), labels


if "--full-test" in sys.argv:
    x, y = full_test_split()
    bundled = np.load(os.path.join(ROOT, "calib_data", "fmnist_test.npz"))
    assert np.allclose(x[:2000], bundled["input"], atol=1e-6) and (y[:2000] == bundled["labels"]).all()
else:
    test = np.load(os.path.join(ROOT, "calib_data", "fmnist_test.npz"))
    x, y = test["input"], test["labels"]
print("original", accuracy(onnx.load(MODEL), x, y, "input"), flush=True)
# (criterion, allocator, variety, recovery, order check); None = the default (a defaulted variety
# is the order check's to question; "cluster" given is kept)
CONFIGS = [("l1", "uniform", "off", False), ("l1", "uniform", "off", True), ("thinet", "uniform", "off", True),
           ("blend", "uniform", "off", True), ("blend", "sensitivity", None, True),
           ("blend", "sensitivity", "cluster", True), ("blend", "sensitivity", None, True, False),
           ("blend", "sensitivity", None, False)]
if "--allocators" in sys.argv:
    CONFIGS = [("blend", alloc, "cluster", True)
               for alloc in ("uniform", "global", "sensitivity", "utilization", "redundancy")]
if "--single" in sys.argv:   # single criteria, uniform ratios against sensitivity allocation
    CONFIGS = [(crit, alloc, "off", True) for crit in ("l1", "fpgm", "mean_act", "apoz", "entropy", "hrank", "thinet")
               for alloc in ("uniform", "sensitivity")]
PRESETS = ["default"] + (["thorough"] if "--thorough" in sys.argv else [])
for preset in PRESETS:
    for crit, alloc, var, rec, *check in CONFIGS if preset == "default" else [("blend", "sensitivity", None, True)]:
        t0 = time.time()
        check = check[0] if check else None
        r = onnxprune.prune(MODEL, criterion=crit, target_macs=0.5, calib=CALIB, allocate=alloc, variety=var,
                            recover=rec, preset=preset, order_check=check)
        chosen = (r.report["allocation"].get("order_check") or {}).get("chosen")
        var = r.report["allocation"].get("variety", var) + ("" if var else " (default)")
        print(f"{crit:<7} {alloc:<12} variety={var:<26} recover={rec!s:<5} preset={preset:<8} "
              f"order check={'off' if check is False else chosen or '-':<8} "
              f"MACs kept {r.report['macs_kept']:.3f}  test acc {accuracy(r.model, x, y, 'input'):.4f}  "
              f"steps {[s['step'] for s in r.report['recovery'] if s.get('kept')]}  {time.time() - t0:.0f}s", flush=True)
