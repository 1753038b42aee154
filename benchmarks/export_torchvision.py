#!/usr/bin/env python
"""Export randomly-initialised torchvision classifiers to ONNX.

For comparing onnxprune against Torch-Pruning on real architectures.  No
pretrained weights can be downloaded here, so every model is built with
``torch.manual_seed(0)`` and its BatchNorm running stats are randomised
(running_mean ~ N(0, 0.1), running_var ~ U(0.5, 1.5)) so BN is not identity.

Each model is exported with input ``input`` (N x 3 x 224 x 224, 299 for
inception_v3), output ``output``, dynamic batch dim, opset 17, using the
legacy TorchScript exporter (``dynamo=False``) and falling back to the
dynamo exporter if that fails (with torch 2.14.1 the legacy exporter works
for all 17 models; the dynamo one emits opset 18 even when asked for 17 and
fails on convnext_tiny with a dynamic batch).  The export is then run once with
onnxruntime at batch 2 (which also checks the dynamic batch dim) and
compared against the torch output.

Next to every ``NAME.onnx`` a ``NAME.json`` sidecar holds the torch MACs and
params (``torch_pruning.utils.count_ops_and_params``), the exporter used, op
counts, file size and the ORT max abs diff.  ``summary.json`` collects them.

Needs torch, torchvision, torch-pruning, onnx, onnxruntime (see
/opt/venv-tv), e.g.::

    /opt/venv-tv/bin/python benchmarks/export_torchvision.py --out /work/tv_models
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
import traceback
import warnings

import numpy as np
import torch
import torch.nn as nn
import torchvision
import torchvision.models as tvm

DEFAULT_OUT = "/work/tv_models"
OPSET = 17

# name -> (constructor kwargs, input spatial size)
MODELS: dict[str, tuple[dict, int]] = {
    "resnet18": ({}, 224),
    "resnet50": ({}, 224),
    "resnext50_32x4d": ({}, 224),
    "mobilenet_v2": ({}, 224),
    "mobilenet_v3_small": ({}, 224),
    "mobilenet_v3_large": ({}, 224),
    "efficientnet_b0": ({}, 224),
    "regnet_y_400mf": ({}, 224),
    "densenet121": ({}, 224),
    "googlenet": ({"aux_logits": False, "init_weights": True}, 224),
    # init_weights=True (torchvision's legacy default: trunc-normal std 0.1)
    # makes inception_v3's eval-mode logits explode to ~1e13; use PyTorch's
    # default layer init instead (logits ~0.1).
    "inception_v3": ({"aux_logits": False, "init_weights": False}, 299),
    "mnasnet0_5": ({}, 224),
    "squeezenet1_0": ({}, 224),
    "alexnet": ({}, 224),
    "vgg11_bn": ({}, 224),
    "convnext_tiny": ({}, 224),
    "shufflenet_v2_x0_5": ({}, 224),
}

NUM_CLASSES = 1000


# ---------------------------------------------------------------------------
# shared helpers (also imported by tp_reference.py)
# ---------------------------------------------------------------------------

def parse_models(arg: str | None) -> list[str]:
    if not arg:
        return list(MODELS)
    names = [m.strip() for m in arg.split(",") if m.strip()]
    bad = [m for m in names if m not in MODELS]
    if bad:
        raise SystemExit(f"unknown model(s): {bad}; known: {', '.join(MODELS)}")
    return names


def input_size(name: str) -> int:
    return MODELS[name][1]


def example_input(name: str, batch: int = 1, seed: int = 1) -> torch.Tensor:
    s = input_size(name)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, s, s, generator=g)


def build_model(name: str, seed: int = 0) -> nn.Module:
    """Random-init torchvision model in eval mode with non-trivial BN stats."""
    kwargs, _ = MODELS[name]
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = getattr(tvm, name)(weights=None, **kwargs)
    g = torch.Generator().manual_seed(seed + 12345)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                n = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    model.eval()
    return model


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The final classifier layer: Linear / Conv2d producing NUM_CLASSES.

    The last Linear for every model here except squeezenet, whose classifier
    is a 1x1 Conv2d with 1000 output channels.
    """
    out = [m for m in model.modules()
           if (isinstance(m, nn.Linear) and m.out_features == NUM_CLASSES)
           or (isinstance(m, nn.Conv2d) and m.out_channels == NUM_CLASSES)]
    if not out:
        raise RuntimeError("no classifier layer found")
    return out


def count_macs_params(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    import torch_pruning as tp

    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, x)
    return int(macs), int(params)


def fmt_si(v: float) -> str:
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= div:
            return f"{v / div:.3f}{suf}"
    return f"{v:.0f}"


def print_table(headers: list[str], rows: list[list[str]], file=sys.stdout) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = " | ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    print(line, file=file)
    print("-+-".join("-" * w for w in widths), file=file)
    for r in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)), file=file)


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------

def _export_legacy(model, x, path):
    torch.onnx.export(
        model, (x,), path,
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        do_constant_folding=True,
    )


def _export_dynamo(model, x, path):
    batch = torch.export.Dim("batch", min=1, max=1024)
    prog = torch.onnx.export(
        model, (x,), None,
        dynamo=True,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=({0: batch},),
        optimize=True,
        external_data=False,
    )
    prog.save(path, external_data=False)


def export_one(model, x, path, exporter: str) -> tuple[str, str | None]:
    """Export; returns (exporter actually used, legacy error if it fell back)."""
    if exporter in ("auto", "legacy"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _export_legacy(model, x, path)
            return "legacy", None
        except Exception as e:  # noqa: BLE001
            if exporter == "legacy":
                raise
            legacy_err = f"{type(e).__name__}: {e}"
    else:
        legacy_err = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _export_dynamo(model, x, path)
    return "dynamo", legacy_err


def op_counts(model_proto) -> collections.Counter:
    c = collections.Counter()

    def walk(graph):
        for n in graph.node:
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}:{n.op_type}"
            c[key] += 1
            for a in n.attribute:
                if a.g is not None and a.g.node:
                    walk(a.g)
                for g in a.graphs:
                    walk(g)

    walk(model_proto.graph)
    for f in model_proto.functions:
        for n in f.node:
            c[f"fn:{n.op_type}"] += 1
    return c


def ort_check(path: str, model: nn.Module, x: torch.Tensor) -> dict:
    """Run once with ORT and compare with torch; also report output scale.

    out_rowdiff_rel = max|y[0]-y[1]| / max|y| measures how much the
    random-init logits depend on the input at all (often very little).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(os.environ.get("ORT_THREADS", "2"))
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    (y_ort,) = sess.run(["output"], {"input": x.numpy()})
    with torch.no_grad():
        y_t = model(x).numpy()
    if y_ort.shape != y_t.shape:
        raise RuntimeError(f"shape mismatch ort {y_ort.shape} vs torch {y_t.shape}")
    diff = float(np.max(np.abs(y_ort - y_t)))
    amax = float(np.max(np.abs(y_t)))
    r = {"ort_max_abs_diff": diff, "ort_max_rel_diff": diff / amax if amax else None,
         "torch_out_absmax": amax}
    if y_t.shape[0] > 1:
        r["out_rowdiff_rel"] = float(np.max(np.abs(y_t[0] - y_t[1]))) / amax if amax else None
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"output dir (default {DEFAULT_OUT})")
    ap.add_argument("--models", default=None, help="comma-separated subset (default: all)")
    ap.add_argument("--exporter", choices=["auto", "legacy", "dynamo"], default="auto",
                    help="auto = legacy TorchScript exporter, dynamo on failure")
    ap.add_argument("--check-batch", type=int, default=2,
                    help="batch size of the ORT check (≠1 exercises the dynamic batch dim)")
    ap.add_argument("--skip-existing", action="store_true",
                    help="skip models whose .onnx and .json already exist")
    args = ap.parse_args(argv)

    import onnx

    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
    os.makedirs(args.out, exist_ok=True)
    names = parse_models(args.models)
    print(f"torch {torch.__version__}  torchvision {torchvision.__version__}  "
          f"onnx {onnx.__version__}  opset {OPSET}  -> {args.out}", flush=True)

    results = {}
    t_all = time.time()
    for name in names:
        path = os.path.join(args.out, f"{name}.onnx")
        side = os.path.join(args.out, f"{name}.json")
        if args.skip_existing and os.path.exists(path) and os.path.exists(side):
            with open(side) as f:
                results[name] = json.load(f)
            print(f"[{name}] exists, skipped", flush=True)
            continue
        rec: dict = {"model": name, "input_shape": [1, 3, input_size(name), input_size(name)],
                     "onnx": os.path.basename(path), "opset": OPSET,
                     "torch": torch.__version__, "torchvision": torchvision.__version__}
        t0 = time.time()
        try:
            model = build_model(name)
            x1 = example_input(name, 1)
            rec["torch_macs"], rec["torch_params"] = count_macs_params(model, x1)
            t1 = time.time()
            rec["exporter"], legacy_err = export_one(model, x1, path, args.exporter)
            if legacy_err:
                rec["legacy_error"] = legacy_err
            rec["export_seconds"] = round(time.time() - t1, 2)
            mp = onnx.load(path)
            onnx.checker.check_model(path)
            rec["file_bytes"] = os.path.getsize(path)
            oc = op_counts(mp)
            rec["num_nodes"] = sum(oc.values())
            rec["op_counts"] = dict(sorted(oc.items(), key=lambda kv: (-kv[1], kv[0])))
            rec["opset_imports"] = {o.domain or "ai.onnx": o.version for o in mp.opset_import}
            # the dynamo fallback may not manage to down-convert to OPSET
            rec["opset"] = rec["opset_imports"].get("ai.onnx", OPSET)
            rec["export_ok"] = True
            xb = example_input(name, args.check_batch, seed=2)
            rec["ort_check_batch"] = args.check_batch
            rec.update(ort_check(path, model, xb))
        except Exception as e:  # noqa: BLE001
            rec.setdefault("export_ok", False)
            rec["error"] = f"{type(e).__name__}: {e}"
            rec["traceback"] = traceback.format_exc(limit=5)
        rec["seconds"] = round(time.time() - t0, 2)
        with open(side, "w") as f:
            json.dump(rec, f, indent=1)
        results[name] = rec
        status = (f"ok exporter={rec.get('exporter')} diff={rec.get('ort_max_abs_diff')}"
                  if "error" not in rec else f"FAILED {rec['error'][:200]}")
        print(f"[{name}] {status}  ({rec['seconds']}s)", flush=True)

    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({k: {kk: vv for kk, vv in v.items() if kk != "traceback"}
                   for k, v in results.items()}, f, indent=1)

    rows = []
    for name, r in results.items():
        oc = r.get("op_counts", {})
        top = " ".join(f"{k}:{v}" for k, v in list(oc.items())[:6])
        if len(oc) > 6:
            top += f" +{len(oc) - 6} types"
        rows.append([
            name,
            r.get("exporter", "-"),
            str(r.get("num_nodes", "-")),
            top or "-",
            f"{r['file_bytes'] / 2**20:.1f}" if "file_bytes" in r else "-",
            fmt_si(r["torch_macs"]) if "torch_macs" in r else "-",
            fmt_si(r["torch_params"]) if "torch_params" in r else "-",
            "yes" if r.get("export_ok") else "NO",
            f"{r['ort_max_abs_diff']:.2e}" if "ort_max_abs_diff" in r else r.get("error", "-")[:60],
            f"{r['ort_max_rel_diff']:.1e}" if r.get("ort_max_rel_diff") is not None else "-",
            f"{r['torch_out_absmax']:.2e}" if "torch_out_absmax" in r else "-",
            f"{r['out_rowdiff_rel']:.1e}" if r.get("out_rowdiff_rel") is not None else "-",
        ])
    print()
    print_table(["model", "exporter", "nodes", "ops (top 6)", "MiB", "MACs", "params",
                 "export ok", "ORT max|diff|", "rel", "max|y|", "rowdiff/max|y|"], rows)
    print(f"\ntotal {time.time() - t_all:.1f}s")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
