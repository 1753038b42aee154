"""Speed benchmark: does removing MACs remove latency? Original vs pruned models on the CPU provider.

    python benchmarks/speed.py [MODEL.onnx ...] [--folder /work/tv_models --names resnet18,resnet50,mobilenet_v2]
                               [--ratios 0.3,0.5,0.7] [--round-to 1,8] [--threads 1,2] [--batches 1,8]
                               [--warmup 2] [--repeat 15] [--json rows.json]

Every model (default: tests/models/resnet_style.onnx, plus the models of --folder) is pruned with
`onnxprune.prune(path, criterion="l1", ratio=r, round_to=k)` for each ratio and round_to, then the
original and all its pruned versions are timed side by side in one `onnxprune.runtime.bench.bench` call
per thread count (runs alternate between the models, so machine drift hits all alike). Printed per
pruned model and (threads, batch): median latency, speedup over the original, and efficiency =
speedup / (1 / MACs kept). Figures, not assertions: put them in docs/results.md with the machine named.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = os.path.join(HERE, "..", "tests", "models", "resnet_style.onnx")


def _list(value: str, cast):
    return tuple(cast(v) for v in value.split(",") if v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help=f"ONNX models [default: {os.path.relpath(DEFAULT_MODEL)}]")
    ap.add_argument("--folder", help="also every *.onnx in this folder (filtered by --names)")
    ap.add_argument("--names", help="comma-separated model names (file stems) to take from --folder")
    ap.add_argument("--ratios", default="0.3,0.5,0.7")
    ap.add_argument("--round-to", default="1,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--json", help="write the rows as JSON")
    args = ap.parse_args()

    import onnxprune
    from onnxprune.runtime.bench import BenchConfig, bench
    from onnxprune.errors import OnnxPruneError

    paths = list(args.models) or [DEFAULT_MODEL]
    if args.folder:
        names = set(_list(args.names, str)) if args.names else None
        paths += [p for p in sorted(glob.glob(os.path.join(args.folder, "*.onnx")))
                  if names is None or os.path.basename(p)[:-5] in names]
    ratios, round_tos = _list(args.ratios, float), _list(args.round_to, int)
    threads, batches = _list(args.threads, int), _list(args.batches, int)
    combos = [(t, b) for t in threads for b in batches]
    print(f"# {len(paths)} models, ratios {ratios}, round_to {round_tos}, threads {threads}, batches {batches}, "
          f"{args.warmup} warm-up + {args.repeat} timed runs each", file=sys.stderr)
    print("| model | ratio | round_to | MACs kept | " + " | ".join(f"{t}t b{b}" for t, b in combos) + " |")
    print("|---|---|---|---|" + "---|" * len(combos))
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            name = os.path.basename(path)[:-5]
            variants = [("original", None, None, path)]
            for r in ratios:
                for k in round_tos:
                    out = os.path.join(tmp, f"{name}_r{r}_k{k}.onnx")
                    try:
                        onnxprune.save(onnxprune.prune(path, criterion="l1", ratio=r, round_to=k).model, out)
                    except OnnxPruneError as exc:
                        print(f"{name} ratio {r} round_to {k}: {exc}", file=sys.stderr)
                        continue
                    variants.append((f"r{r} k{k}", r, k, out))
            cells: dict[tuple, dict] = {}
            for t in threads:
                result = bench([v[3] for v in variants], BenchConfig(batches=batches, threads=t, warmup=args.warmup,
                                                                     repeat=args.repeat),
                               labels=[v[0] for v in variants])
                for timing in result.timings:
                    cells[(timing.model, t, timing.batch)] = timing
            for label, r, k, _ in variants:
                row = {"model": name, "ratio": r, "round_to": k, "cells": {}}
                for t, b in combos:
                    timing = cells[(label, t, b)]
                    row["macs_kept"] = timing.mac_ratio
                    row["cells"][f"{t}t_b{b}"] = {"median_ms": timing.median_ms, "speedup": timing.speedup,
                                                  "efficiency": timing.efficiency}
                rows.append(row)
                print(_line(row, combos), flush=True)
    print(f"# {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def _line(row: dict, combos) -> str:
    cells = []
    for t, b in combos:
        c = row["cells"][f"{t}t_b{b}"]
        if row["ratio"] is None:
            cells.append(f"{c['median_ms']:.1f} ms")
        else:
            cells.append(f"{c['median_ms']:.1f} ms, {c['speedup']:.2f}x, eff {c['efficiency']:.2f}")
    ratio = "-" if row["ratio"] is None else f"{row['ratio']:.1f}"
    k = "-" if row["round_to"] is None else str(row["round_to"])
    return f"| {row['model']} | {ratio} | {k} | {row['macs_kept']:.3f} | " + " | ".join(cells) + " |"


if __name__ == "__main__":
    sys.exit(main())
