"""Coverage benchmark: prune every model in a folder and print valid / MACs kept / params kept / seconds.

    python benchmarks/coverage.py DIR [--ratio 0.5] [--criterion l1] [--tp benchmarks/tp_reference_0.5.json]
                                      [--approximate]

The "wild" families of issue 20 (ConvNeXt, ConvNeXt-V2, ECA, ResNeSt, SKNet, CBAM) are exported by
benchmarks/export_wild.py (`WILD` there); --approximate prunes through the ops whose result changes
with the channel count and adds the rewrite's cosine against the masked original ("approx").

With a Torch-Pruning reference JSON (benchmarks/tp_reference.py, same ratio, PyTorch originals),
the table also shows Torch-Pruning's MACs kept and our ratio to it (target: <= 1.1).
Figures, not assertions: run it, read it, put it in docs/results.md with the machine named.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--tp", help="Torch-Pruning reference JSON {model: {macs_kept: ...}}")
    ap.add_argument("--json", help="write the rows as JSON")
    ap.add_argument("--approximate", action="store_true", help="prune approximately through channel statistics")
    args = ap.parse_args()

    import onnxprune
    from onnxprune.errors import OnnxPruneError

    tp = json.load(open(args.tp)) if args.tp else {}
    rows = []
    for path in sorted(glob.glob(os.path.join(args.folder, "*.onnx"))):
        name = os.path.basename(path)[:-5]
        t = time.perf_counter()
        row = {"model": name}
        try:
            result = onnxprune.prune(path, criterion=args.criterion, ratio=args.ratio, approximate=args.approximate)
            rep = result.report
            approx = rep.get("approximate")
            if approx and approx["outputs"]:
                row.update(approx_groups=len(approx["groups"]), approx_faithful=approx["faithful"],
                           approx_cosine=min(o["cosine"] for o in approx["outputs"].values()))
            row.update(valid=rep["verification"]["valid"], macs_kept=rep["macs_kept"], params_kept=rep["params_kept"],
                       groups=len(rep["groups"]), pruned_groups=sum(1 for g in rep["groups"] if g["kept"] < g["size"]),
                       top1_agree=_top1(rep), prune_seconds=sum(v for k, v in rep["seconds"].items() if k != "verify"))
        except OnnxPruneError as exc:
            row.update(valid=False, error=str(exc))
        except Exception as exc:  # a bug: report it, keep going
            row.update(valid=False, error=f"{type(exc).__name__}: {exc}")
        row["seconds"] = time.perf_counter() - t
        ref = tp.get(name, {})
        if "macs_kept" in ref and "macs_kept" in row:
            row["tp_macs_kept"] = ref["macs_kept"]
            row["vs_tp"] = row["macs_kept"] / ref["macs_kept"]
        rows.append(row)
        print(_line(row), flush=True)
    print(f"\n{sum(r['valid'] for r in rows)}/{len(rows)} valid", file=sys.stderr)
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)
    return 0


def _top1(rep):
    outs = (rep.get("verification") or {}).get("outputs", {})
    vals = [o["top1_agreement"] for o in outs.values() if "top1_agreement" in o]
    return vals[0] if vals else None


def _line(r):
    if "macs_kept" not in r:
        return f"{r['model']:<24} FAILED  {r.get('error', '')[:120]}"
    tp = f"  TP {r['tp_macs_kept']:.3f}  ratio {r['vs_tp']:.2f}" if "tp_macs_kept" in r else ""
    if "approx_cosine" in r:
        tp += f"  approx {r['approx_groups']} groups cosine {r['approx_cosine']:.4f}" + ("" if r["approx_faithful"] else " NOT faithful")
    return (f"{r['model']:<24} valid={r['valid']!s:<5} MACs kept {r['macs_kept']:.3f}  params kept "
            f"{r['params_kept']:.3f}  groups {r['pruned_groups']}/{r['groups']}  prune {r['prune_seconds']:.1f}s "
            f"total {r['seconds']:.1f}s{tp}")


if __name__ == "__main__":
    sys.exit(main())
