#!/usr/bin/env python
"""Torch-Pruning reference numbers for the "wild" timm families (benchmarks/export_wild.py's `WILD`).

Each model is built as export_wild.py builds it (random init, seed 0, randomised BN statistics)
and pruned with Torch-Pruning's BasePruner, MagnitudeImportance(p=1), the same per-layer
ratio, the classifier ignored, as benchmarks/tp_reference.py does for torchvision. A model it
fails on gets the error recorded. The JSON is what ``coverage.py --tp`` reads.

    python benchmarks/tp_wild.py --ratio 0.5 --json benchmarks/tp_wild_0.5.json   # needs torch-pruning
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_wild import WILD, build  # noqa: E402


def prune_one(name: str, ratio: float, size: int) -> dict:
    """Torch-Pruning's MACs and parameters kept on the PyTorch original of `name`."""
    import torch
    import torch_pruning as tp

    model = build(name)
    x = torch.randn(1, 3, size, size)
    macs0, params0 = tp.utils.count_ops_and_params(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.BasePruner(model, example_inputs=x, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=ratio, global_pruning=False,
                                      ignored_layers=[model.get_classifier()], round_to=None)
        pruner.step()
    with torch.no_grad():
        model(x)   # still runs
    macs1, params1 = tp.utils.count_ops_and_params(model, x)
    return {"model": name, "ratio": ratio, "macs_before": int(macs0), "macs_after": int(macs1),
            "macs_kept": macs1 / macs0, "params_kept": params1 / params0, "torch_pruning": tp.__version__}


def main() -> int:
    """Prune every chosen family; one line each, the JSON at the end."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--models", help="comma-separated names of WILD (default: all)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--json", help="write {model: {...}} here")
    args = ap.parse_args()
    names = args.models.split(",") if args.models else list(WILD)
    rows = {}
    for name in names:
        try:
            rows[name] = prune_one(name, args.ratio, args.size)
            print(f"{name:<18} MACs kept {rows[name]['macs_kept']:.3f}  params kept {rows[name]['params_kept']:.3f}",
                  flush=True)
        except Exception as exc:   # noqa: BLE001 - a failure of Torch-Pruning is a figure too
            rows[name] = {"model": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            print(f"{name:<18} fails ({rows[name]['error'][:100]})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
