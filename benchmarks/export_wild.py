#!/usr/bin/env python
"""Export the "wild" timm families of issue 20 (random init, eval mode) to ONNX for coverage.py.

    python benchmarks/export_wild.py --out /tmp/wild [--models convnext_atto,...] [--size 224]

`WILD` lists each family with the pattern it exercises: LayerNorm over channels (ConvNeXt),
Global Response Normalization (ConvNeXt-V2), ECA's Conv1d over the channel axis, split
attention (ResNeSt), selective kernel (SKNet) and CBAM's spatial map from channel reductions.
BatchNorm running statistics are randomised so BN is not an identity. The legacy TorchScript
exporter at opset 17 is used (LayerNormalization is a single op there); the output is then
pruned with ``benchmarks/coverage.py /tmp/wild`` (add ``--approximate`` for the approximate
rules).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

# name -> (timm model name, create_model keywords, pattern)
WILD = {
    "convnext_atto": ("convnext_atto", {}, "LayerNorm over channels (channels-last and LayerNorm2d)"),
    "convnext_tiny": ("convnext_tiny", {}, "LayerNorm over channels"),
    "convnextv2_atto": ("convnextv2_atto", {}, "LayerNorm over channels, GRN"),
    "ecaresnet26t": ("ecaresnet26t", {}, "ECA: Conv1d over the channel axis"),
    "resnest14d": ("resnest14d", {}, "split attention: Softmax over radix groups"),
    "skresnet18": ("skresnet18", {}, "selective kernel: Softmax over paths"),
    "cbam_resnet18": ("resnet18", {"block_args": {"attn_layer": "cbam"}}, "CBAM: ReduceMean/ReduceMax over channels"),
}


def build(name: str, seed: int = 0):
    """The random-init timm model `name` of `WILD`, in eval mode with non-trivial BN statistics."""
    import timm
    import torch

    arch, kwargs, _ = WILD[name]
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, **kwargs)
    g = torch.Generator().manual_seed(seed + 12345)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                n = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


def export(name: str, path: str, size: int) -> None:
    """Export `name` to `path` (input ``input`` N x 3 x size x size with a dynamic batch, opset 17)."""
    import torch

    model = build(name)
    x = torch.randn(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          do_constant_folding=True)


def main() -> int:
    """Export the chosen families; one line per model."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/wild")
    ap.add_argument("--models", help="comma-separated names of WILD (default: all)")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    names = args.models.split(",") if args.models else list(WILD)
    bad = [n for n in names if n not in WILD]
    if bad:
        print(f"unknown model(s): {', '.join(bad)}; known: {', '.join(WILD)}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    for name in names:
        path = os.path.join(args.out, f"{name}.onnx")
        export(name, path, args.size)
        print(f"{name:<18} {os.path.getsize(path) / 1e6:6.1f} MB  {WILD[name][2]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
