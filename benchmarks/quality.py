"""Quality benchmark: test accuracy vs MACs kept per criterion, with and without recovery.

    python benchmarks/quality.py [--model models/fmnist_resnet.onnx] [--calib calib_data/fmnist_calib.npz]
                                 [--test calib_data/fmnist_test.npz] [--ratios 0.3,0.5] [--json out.json]

Figures, not assertions (no fine-tuning anywhere). Ratio r removes r of the channels of every
prunable group, so MACs kept are about (1-r)^2: r = 0.3 removes about half of the MACs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRITERIA = ["l1", "l2", "fpgm", "bn_scale", "random", "mean_act", "apoz", "entropy", "hrank", "thinet", "ensemble",
            "blend"]


def accuracy(model, test_inputs, labels, input_name) -> float:
    from onnxprune.runtime.sessions import session

    sess = session(model)
    preds = []
    for i in range(0, len(test_inputs), 256):
        preds.append(sess.run(None, {input_name: test_inputs[i:i + 256]})[0].argmax(1))
    return float((np.concatenate(preds) == labels).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "fmnist_resnet.onnx"))
    ap.add_argument("--calib", default=os.path.join(ROOT, "calib_data", "fmnist_calib.npz"))
    ap.add_argument("--test", default=os.path.join(ROOT, "calib_data", "fmnist_test.npz"))
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--criteria", default=",".join(CRITERIA))
    ap.add_argument("--allocate", default="uniform", help="uniform, global or sensitivity")
    ap.add_argument("--json")
    args = ap.parse_args()

    import onnx

    import onnxprune

    test = np.load(args.test)
    input_name = onnx.load(args.model).graph.input[0].name
    x, y = test[input_name] if input_name in test.files else test["input"], test["labels"]
    base = accuracy(onnx.load(args.model), x, y, input_name)
    print(f"original test accuracy {base:.4f} on {len(y)} images ({os.path.basename(args.model)})")
    rows = []
    header = f"{'criterion':<10} {'ratio':>5} {'MACs kept':>9} {'acc (no rec)':>12} {'acc (recover)':>13} {'drop no/with':>14} {'kept steps':<40} {'s':>5}"
    print(header)
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for crit in args.criteria.split(","):
            row = {"criterion": crit, "ratio": ratio, "allocate": args.allocate}
            t = time.perf_counter()
            for rec in (False, True):
                result = onnxprune.prune(args.model, criterion=crit, ratio=ratio, calib=args.calib, recover=rec, seed=0,
                                         allocate=args.allocate)
                acc = accuracy(result.model, x, y, input_name)
                key = "recover" if rec else "plain"
                row[f"acc_{key}"] = acc
                row["macs_kept"] = result.report["macs_kept"]
                if rec:
                    row["steps"] = [s["step"] for s in result.report["recovery"] if s.get("kept")]
            row["seconds"] = time.perf_counter() - t
            rows.append(row)
            print(f"{crit + ('+' + args.allocate[:4] if args.allocate != 'uniform' else ''):<10} {ratio:>5.2f} {row['macs_kept']:>9.3f} {row['acc_plain']:>12.4f} {row['acc_recover']:>13.4f} "
                  f"{base - row['acc_plain']:>6.3f}/{base - row['acc_recover']:<7.3f} {','.join(row['steps']):<40} {row['seconds']:>5.1f}",
                  flush=True)
    if args.json:
        json.dump({"original_accuracy": base, "rows": rows}, open(args.json, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
