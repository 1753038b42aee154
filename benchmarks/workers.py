"""Seconds of the probe stages with --workers 1, --workers 2 and 2 local Ray actors, side by side.

    python benchmarks/workers.py [--model models/fmnist_resnet.onnx] [--calib calib_data/fmnist_calib.npz]
                                 [--samples 128] [--repeat 3] [--cpus 2]

Prunes the model with the default preset (sensitivity probes and the order check, the stages
that hand their independent passes to `onnxprune.runtime.pool`) in the three modes, alternately
(so that a change of load on the machine falls on all three), and prints per mode the median
seconds of the probe stages (the pool's maps: sensitivity probes, order-check candidates, the
second probe) and of the whole run, their ratios to --workers 1, and whether every run wrote the
same file. The process is pinned to the first --cpus cores, so onnxruntime has that many threads
in all (one process: all of them; n workers: cores/n each). Ray is started once (ray.init with
--cpus CPUs) before the runs; its actors are created by each run, as a real run does.
Targets: --workers 2 at least 1.6x faster than --workers 1 on the probe stages; Ray within 15%
of --workers 2.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time


def run(model: str, calib: str, samples: int, **kw) -> tuple[float, float, str]:
    """(probe-stage seconds, total seconds, sha256 of the pruned model) of one pruning run."""
    import onnxprune

    start = time.perf_counter()
    result = onnxprune.prune(model, ratio=0.5, calib=calib, calib_samples=samples, **kw)
    total = time.perf_counter() - start
    probes = sum(result.report["workers"]["seconds"].values())
    return probes, total, hashlib.sha256(result.model.SerializeToString()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/fmnist_resnet.onnx")
    ap.add_argument("--calib", default="calib_data/fmnist_calib.npz")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray mode")
    args = ap.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cpus])   # workers inherit it
    modes = {"workers 1": {}, "workers 2": {"workers": 2}}
    if not args.no_ray:
        try:
            import ray
        except ImportError:
            print("ray is not installed (pip install 'onnxprune[ray]'): the Ray mode is skipped", file=sys.stderr)
        else:
            ray.init(num_cpus=args.cpus, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
            modes["ray, 2 actors"] = {"ray": "auto", "workers": 2}
    runs = {name: [] for name in modes}
    for i in range(args.repeat):
        for name, kw in modes.items():
            runs[name].append(run(args.model, args.calib, args.samples, **kw))
            probes, total, _ = runs[name][-1]
            print(f"run {i + 1} {name}: probe stages {probes:.2f} s, total {total:.2f} s", file=sys.stderr, flush=True)
    base = statistics.median(p for p, _, _ in runs["workers 1"])
    base_total = statistics.median(t for _, t, _ in runs["workers 1"])
    digests = {d for r in runs.values() for _, _, d in r}
    print(f"{args.model}, {args.samples} calibration samples, default preset, {args.cpus} cores, "
          f"medians of {args.repeat} runs")
    print(f"{'mode':<16}{'probe stages s':>16}{'speed-up':>10}{'total s':>10}{'speed-up':>10}")
    for name, r in runs.items():
        probes = statistics.median(p for p, _, _ in r)
        total = statistics.median(t for _, t, _ in r)
        print(f"{name:<16}{probes:>16.2f}{base / probes:>9.2f}x{total:>10.2f}{base_total / total:>9.2f}x")
    print(f"same file in every run: {'yes' if len(digests) == 1 else f'NO ({len(digests)} different)'}")
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
