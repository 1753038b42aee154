"""Cost of the streamed calibration pass relative to plain inference over the same samples.

    python benchmarks/calib_cost.py MODEL [--samples 128] [--batch 32] [--repeat 3]

Runs, alternately, (a) plain onnxruntime inference and (b) onnxprune's statistics pass
(`activations.collect` on every tensor the criteria read, with the statistics `apoz` needs) over the same random samples, and
prints the medians and their ratio (target: <= 1.5).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from onnxprune.calibration import activations
    from onnxprune.calibration.calib import CalibConfig, CalibData, input_specs
    from onnxprune.pipeline import prepare
    from onnxprune.runtime.sessions import session

    prep = prepare(args.model)
    an = prep.analysis
    data = CalibData(CalibConfig("random", args.samples, args.batch, holdout=0.0),
                     input_specs(prep.original, prep.input_shapes))
    tensors = an.read_tensors()
    plain_sess = session(an.model)
    plain, stats = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        for feeds in data.batches("all"):
            plain_sess.run(None, feeds)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        activations.collect(an.model, tensors, data, "all", want=frozenset({"zeros"}))  # e.g. apoz
        stats.append(time.perf_counter() - t)
    p, s = statistics.median(plain), statistics.median(stats)
    print(f"{args.model}: {args.samples} samples, batch {args.batch}, {len(tensors)} tensors measured")
    print(f"plain inference {p:.2f} s   statistics pass {s:.2f} s   ratio {s / p:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
