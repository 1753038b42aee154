#!/usr/bin/env python
"""Export the small test fixtures of tests/models_wild: timm's own attention and norm layers in tiny CNNs.

    python benchmarks/export_wild_fixtures.py --out tests/models_wild

Each model is a conv stem, one block made of timm layers, and a conv/pool/Gemm head, with random
weights (seed 0), exported by the legacy TorchScript exporter at opset 17 with a dynamic batch,
1x3x32x32 inputs. The blocks: `selective_kernel` (timm.layers.SelectiveKernel), `split_attention`
(SplitAttn, radix 2), `eca_cbam` (EcaModule then timm's CbamModule), `convnext_v2` (LayerNorm2d,
a channels-last LayerNorm, GRN as ConvNeXt-V2 spells it).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings


def _models():
    import torch
    import torch.nn as nn
    from timm.layers import EcaModule, LayerNorm2d, SelectiveKernel, SplitAttn
    from timm.layers.cbam import CbamModule
    from timm.layers.grn import GlobalResponseNorm

    class Net(nn.Module):
        def __init__(self, block, c=16):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
            self.block = block
            self.head = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten(), nn.Linear(c, 10))

        def forward(self, x):
            return self.head(self.block(self.stem(x)))

    class ConvNeXtV2Block(nn.Module):
        def __init__(self, c=16):
            super().__init__()
            self.norm2d = LayerNorm2d(c)
            self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
            self.norm = nn.LayerNorm(c)
            self.fc1, self.grn, self.fc2 = nn.Linear(c, 4 * c), GlobalResponseNorm(4 * c, channels_last=True), \
                nn.Linear(4 * c, c)

        def forward(self, x):
            x = self.norm2d(x)
            y = self.dw(x).permute(0, 2, 3, 1)
            y = self.fc2(self.grn(nn.functional.gelu(self.fc1(self.norm(y)))))
            return x + y.permute(0, 3, 1, 2)

    torch.manual_seed(0)
    return {
        "selective_kernel": Net(SelectiveKernel(16, 16)),
        "split_attention": Net(SplitAttn(16, 16, radix=2)),
        "eca_cbam": Net(nn.Sequential(EcaModule(16), CbamModule(16))),
        "convnext_v2": Net(ConvNeXtV2Block()),
    }


def main() -> int:
    """Export every fixture and check it against torch in onnxruntime."""
    import numpy as np
    import onnxruntime as ort
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/models_wild")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, model in _models().items():
        model.eval()
        with torch.no_grad():
            for p in model.parameters():   # non-trivial affine parameters (GRN's start at zero)
                if p.ndim <= 1:
                    p.add_(torch.randn_like(p) * 0.3)
        x = torch.randn(2, 3, 32, 32)
        path = os.path.join(args.out, f"{name}.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
        got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            diff = float(np.abs(got - model(x).numpy()).max())
        print(f"{name:<18} {os.path.getsize(path) / 1e3:6.1f} kB  max |onnxruntime - torch| {diff:.2e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
