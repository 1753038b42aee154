"""The default pipeline against single criteria at a MAC target, on the bundled Fashion-MNIST model.

    python benchmarks/defaults.py               # criteria rows
    python benchmarks/defaults.py --allocators  # blend with every allocator instead

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
test = np.load(os.path.join(ROOT, "calib_data", "fmnist_test.npz"))
x, y = test["input"], test["labels"]
print("original", accuracy(onnx.load(MODEL), x, y, "input"), flush=True)
CONFIGS = [("l1", "uniform", "off", False), ("l1", "uniform", "off", True), ("thinet", "uniform", "off", True),
           ("blend", "uniform", "off", True), ("blend", "sensitivity", "cluster", True),
           ("blend", "sensitivity", "cluster", False)]
if "--allocators" in sys.argv:
    CONFIGS = [("blend", alloc, "cluster", True)
               for alloc in ("uniform", "global", "sensitivity", "utilization", "redundancy")]
for crit, alloc, var, rec in CONFIGS:
    t0 = time.time()
    r = onnxprune.prune(MODEL, criterion=crit, target_macs=0.5, calib=CALIB, allocate=alloc, variety=var, recover=rec)
    print(f"{crit:<7} {alloc:<12} variety={var:<8} recover={rec!s:<5} MACs kept {r.report['macs_kept']:.3f}  "
          f"test acc {accuracy(r.model, x, y, 'input'):.4f}  "
          f"steps {[s['step'] for s in r.report['recovery'] if s.get('kept')]}  {time.time() - t0:.0f}s", flush=True)
