#!/usr/bin/env python
"""Torch-Pruning reference numbers for the torchvision benchmark models.

For each model (built exactly as in export_torchvision.py: random init,
seed 0, randomised BN stats) prune the PyTorch original with Torch-Pruning's
BasePruner (= MetaPruner) using MagnitudeImportance(p=1),
pruning_ratio=RATIO, global_pruning=False, round_to=None, ignoring the final
classifier layer, and record MACs / params before and after, the fraction of
MACs and params kept and the time taken.  A model on which Torch-Pruning
fails gets its error recorded instead.

    /opt/venv-tv/bin/python benchmarks/tp_reference.py --ratio 0.5 \\
        --json benchmarks/tp_reference_0.5.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_torchvision import (  # noqa: E402
    build_model, classifier_layers, count_macs_params, example_input, fmt_si,
    parse_models, print_table,
)


def conv_linear_widths(model: nn.Module) -> tuple[int, int]:
    """Total conv output channels and total Linear output features."""
    c = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    f = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    return c, f


def prune_one(name: str, ratio: float, export_dir: str | None) -> dict:
    import torch_pruning as tp

    rec: dict = {"model": name, "ratio": ratio}
    model = build_model(name)
    x = example_input(name, 1)
    with torch.no_grad():
        y0 = model(x)
    rec["macs_before"], rec["params_before"] = count_macs_params(model, x)
    rec["conv_channels_before"], rec["linear_features_before"] = conv_linear_widths(model)
    ignored = classifier_layers(model)
    rec["ignored_layers"] = [type(m).__name__ for m in ignored]

    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.BasePruner(
            model,
            example_inputs=x,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            global_pruning=False,
            ignored_layers=ignored,
            round_to=None,
        )
        t1 = time.time()
        pruner.step()
    t2 = time.time()
    rec["build_seconds"] = round(t1 - t0, 3)
    rec["step_seconds"] = round(t2 - t1, 3)
    rec["seconds"] = round(t2 - t0, 3)

    model.eval()
    with torch.no_grad():
        y1 = model(x)
    if y1.shape != y0.shape:
        raise RuntimeError(f"output shape changed {tuple(y0.shape)} -> {tuple(y1.shape)}")
    rec["macs_after"], rec["params_after"] = count_macs_params(model, x)
    rec["conv_channels_after"], rec["linear_features_after"] = conv_linear_widths(model)
    rec["macs_kept"] = rec["macs_after"] / rec["macs_before"]
    rec["params_kept"] = rec["params_after"] / rec["params_before"]

    if export_dir:
        from export_torchvision import _export_legacy

        os.makedirs(export_dir, exist_ok=True)
        path = os.path.join(export_dir, f"{name}.tp{ratio:g}.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _export_legacy(model, x, path)
        rec["pruned_onnx"] = path
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratio", type=float, default=0.5, help="per-layer channel pruning ratio")
    ap.add_argument("--models", default=None, help="comma-separated subset (default: all)")
    ap.add_argument("--json", default=None, help="write results here as {model: {...}}")
    ap.add_argument("--export-pruned", default=None, metavar="DIR",
                    help="also export each TP-pruned model to DIR/NAME.tpRATIO.onnx")
    args = ap.parse_args(argv)

    import torch_pruning as tp

    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
    print(f"torch {torch.__version__}  torch-pruning {tp.__version__}  ratio {args.ratio}",
          flush=True)
    results: dict = {}
    t_all = time.time()
    for name in parse_models(args.models):
        t0 = time.time()
        try:
            rec = prune_one(name, args.ratio, args.export_pruned)
            msg = f"macs_kept={rec['macs_kept']:.4f} params_kept={rec['params_kept']:.4f}"
        except Exception as e:  # noqa: BLE001
            rec = {"model": name, "ratio": args.ratio, "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc(limit=6)}
            msg = f"FAILED {rec['error'][:200]}"
        rec["total_seconds"] = round(time.time() - t0, 2)
        results[name] = rec
        print(f"[{name}] {msg}  ({rec['total_seconds']}s)", flush=True)

    meta = {"torch": torch.__version__, "torch_pruning": tp.__version__,
            "pruner": "BasePruner", "importance": "MagnitudeImportance(p=1)",
            "ratio": args.ratio, "global_pruning": False, "round_to": None,
            "ignored_layers": "final classifier (Linear/Conv2d with 1000 outputs)",
            "macs_counter": "torch_pruning.utils.count_ops_and_params"}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"_meta": meta, **results}, f, indent=1)

    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "-", "-", "-", "-", "-", "-", "-", "ERROR: " + r["error"][:70]])
            continue
        rows.append([name, fmt_si(r["macs_before"]), fmt_si(r["macs_after"]),
                     f"{r['macs_kept']:.4f}", fmt_si(r["params_before"]),
                     fmt_si(r["params_after"]), f"{r['params_kept']:.4f}",
                     f"{r['seconds']:.2f}", ""])
    print()
    print_table(["model", "MACs before", "MACs after", "macs_kept", "params before",
                 "params after", "params_kept", "TP s", "error"], rows)
    print(f"\ntotal {time.time() - t_all:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
