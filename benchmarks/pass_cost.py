"""The per-pass costs docs/scale.md computes from: seconds per image pass, weights and activations.

    python benchmarks/pass_cost.py MODEL [--batch 32] [--threads 2] [--repeat 5]
                                         [--calib DATA --samples 64,128,256]

Prints the model's MACs, its file size, the bytes of all its intermediate tensors for one image
(an upper bound of onnxruntime's activation memory: it reuses buffers), and the median seconds
per image of plain onnxruntime inference at --batch on --threads intra-op threads (random
inputs, --repeat timed runs after one warm-up). With --calib, prunes with the default preset at
each sample count and prints the report's image passes per stage (`forward_passes`), to show
which stages grow with the calibration set.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np


def activation_bytes(prep) -> int:
    """Bytes of every tensor the graph computes, for one image (float32 where unknown)."""
    total = 0
    for name, shape in prep.analysis.shapes.items():
        if name in {i.name for i in prep.analysis.model.graph.initializer}:
            continue
        total += 4 * int(np.prod([1, *shape[1:]])) if shape else 4
    return total


def seconds_per_image(prep, batch: int, threads: int, repeat: int) -> float:
    """Median seconds per image of plain inference at `batch` on `threads` threads."""
    from onnxprune.runtime.sessions import random_feeds, session

    sess = session(prep.analysis.model, threads=threads)
    feeds = random_feeds(prep.analysis.model, {k: [batch, *v[1:]] for k, v in prep.input_shapes.items()}, batch)
    names = [o.name for o in prep.analysis.model.graph.output]
    sess.run(names, feeds)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        sess.run(names, feeds)
        times.append((time.perf_counter() - t) / batch)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--calib")
    ap.add_argument("--samples", default="64,128,256")
    args = ap.parse_args()

    import onnxprune
    from onnxprune.analysis.metrics import stats
    from onnxprune.pipeline import prepare

    prep = prepare(args.model)
    info = stats(prep.original, prep.analysis.shapes)
    print(f"{args.model}: {info.macs / 1e6:.1f} MMACs/image, {os.path.getsize(args.model) / 2**20:.1f} MiB, "
          f"intermediate tensors {activation_bytes(prep) / 2**20:.2f} MiB/image")
    per_image = seconds_per_image(prep, args.batch, args.threads, args.repeat)
    print(f"inference: {per_image * 1e3:.3f} ms/image (batch {args.batch}, {args.threads} threads, "
          f"median of {args.repeat})")
    if args.calib:
        for n in (int(s) for s in args.samples.split(",")):
            start = time.perf_counter()
            result = onnxprune.prune(args.model, ratio=0.5, calib=args.calib, calib_samples=n, verify=False)
            passes = result.report["forward_passes"]
            print(f"{n} samples: {time.perf_counter() - start:.1f} s, passes {passes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
