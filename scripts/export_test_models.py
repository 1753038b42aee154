#!/usr/bin/env python3
"""Export the small ONNX test models under tests/models/ (one-off fixture generator).

This script is NOT part of onnxprune and is not run by the tests or CI: it needs torch, which the
project does not depend on. It was run once, in a separate virtual environment::

    python3 -m venv /opt/venv-export
    /opt/venv-export/bin/pip install torch==2.13.0 numpy onnx onnxscript onnxruntime
    /opt/venv-export/bin/python scripts/export_test_models.py --out tests/models

Eight tiny plain-``torch.nn`` CNNs (no torchvision), each exported twice with the legacy
TorchScript exporter (``dynamo=False``), opset 17, batch axis dynamic:

* ``<name>.onnx``: BatchNorm statistics/affine parameters and conv biases randomised, so that
  every parameter tensor is distinct and BN folding produces non-trivial conv biases;
* ``<name>_definit.onnx``: PyTorch default initialisation (BN weight 1, bias 0, mean 0, var 1).
  The exporter deduplicates identical initializers, so e.g. the all-zero folded conv biases of
  equal length become ONE initializer shared by several Conv nodes.

Both variants are built from the same seed (``torch.manual_seed(0)`` before construction), are in
``eval()`` mode, and are checked with ``onnx.checker`` and against onnxruntime (batch 1 and 2).
Re-running produces byte-identical files with the same torch version.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

OPSET = 17
TOL = 1e-4


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------

def conv_bn(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: type | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> optional activation."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# 1. ResNet ----------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetStyle(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.layer3 = BasicBlock(32, 32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# 2. MobileNetV3 -----------------------------------------------------------------------------

class SqueezeExcite(nn.Module):
    def __init__(self, c: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.scale = nn.Hardsigmoid()

    def forward(self, x):
        s = self.scale(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return x * s


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, exp: int, cout: int, k: int, se: bool, act: type, stride: int):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(conv_bn(cin, exp, 1, act=act))
        layers.append(conv_bn(exp, exp, k, stride, groups=exp, act=act))  # depthwise
        if se:
            layers.append(SqueezeExcite(exp, max(8, exp // 4)))
        layers.append(conv_bn(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        out = self.block(x)
        return out + x if self.use_res else out


class MobileNetV3Style(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16, 3, 2, act=nn.Hardswish),                      # 16x16
            InvertedResidual(16, 16, 16, 3, True, nn.ReLU, 1),           # no expand conv, residual
            InvertedResidual(16, 48, 24, 5, True, nn.ReLU, 2),           # 8x8
            InvertedResidual(24, 64, 24, 3, False, nn.Hardswish, 1),     # residual
            conv_bn(24, 48, 1, act=nn.Hardswish),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(48, 64), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# 3. DenseNet --------------------------------------------------------------------------------

class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 on the concatenation of all previous features."""

    def __init__(self, cin: int, growth: int, bn_size: int = 2):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.Module):
    def __init__(self, n: int, cin: int, growth: int):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(n))

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNetStyle(nn.Module):
    def __init__(self, num_classes: int = 10, growth: int = 8):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.block1 = DenseBlock(3, 16, growth)                           # 16 -> 40
        self.transition = nn.Sequential(
            nn.BatchNorm2d(40), nn.ReLU(), nn.Conv2d(40, 20, 1, bias=False), nn.AvgPool2d(2, 2))
        self.block2 = DenseBlock(2, 20, growth)                           # 20 -> 36
        self.norm = nn.BatchNorm2d(36)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(36, num_classes)

    def forward(self, x):
        x = self.block2(self.transition(self.block1(self.stem(x))))
        x = self.pool(self.relu(self.norm(x)))
        return self.fc(torch.flatten(x, 1))


# 4. Inception -------------------------------------------------------------------------------

class InceptionA(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.b1 = conv_bn(cin, 8, 1)
        self.b3 = nn.Sequential(conv_bn(cin, 8, 1), conv_bn(8, 12, 3))
        self.b5 = nn.Sequential(conv_bn(cin, 4, 1), conv_bn(4, 6, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, 6, 1))

    def forward(self, x):  # -> 8 + 12 + 6 + 6 = 32
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class InceptionSplit(nn.Module):
    """Like InceptionA, plus a branch whose 1x1 conv output is split 4/8 into two different convs."""

    def __init__(self, cin: int):
        super().__init__()
        self.b1 = conv_bn(cin, 8, 1)
        self.bs_reduce = conv_bn(cin, 12, 1)
        self.bs_a = conv_bn(4, 6, 3)            # first 4 channels
        self.bs_b = conv_bn(8, 10, 1)           # last 8 channels
        self.b5 = nn.Sequential(conv_bn(cin, 4, 1), conv_bn(4, 6, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, 8, 1))

    def forward(self, x):  # -> 8 + 6 + 10 + 6 + 8 = 38
        a, b = torch.split(self.bs_reduce(x), [4, 8], dim=1)
        return torch.cat([self.b1(x), self.bs_a(a), self.bs_b(b), self.b5(x), self.bp(x)], 1)


class InceptionStyle(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.inc1 = InceptionA(16)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.inc2 = InceptionSplit(32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(38, num_classes)

    def forward(self, x):
        x = self.inc2(self.pool1(self.inc1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# 5. U-Net -----------------------------------------------------------------------------------

def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, cout), conv_bn(cout, cout))


class UNetStyle(nn.Module):
    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.enc1 = double_conv(3, 8)                       # 64x64
        self.enc2 = double_conv(8, 16)                      # 32x32
        self.bottleneck = double_conv(16, 32)               # 16x16
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(32, 16, 2, stride=2)  # 16 -> 32x32
        self.dec2 = double_conv(16 + 16, 16)
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)  # 32 -> 64x64
        self.dec1 = double_conv(16 + 8, 8)
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottleneck(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


# 6. YOLO (v8-like C2f / SPPF) ---------------------------------------------------------------

def conv_silu(cin: int, cout: int, k: int = 1, s: int = 1) -> nn.Sequential:
    return conv_bn(cin, cout, k, s, act=nn.SiLU)


class Bottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1 = conv_silu(c, c, 3)
        self.cv2 = conv_silu(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """conv -> split in two halves -> bottlenecks on the second half -> concat(halves, outputs) -> conv.

    Uses ``split((c, c), 1)`` like ultralytics' export path: ``chunk(2, 1)`` would export as
    Shape/Gather/Div/Slice (see ShuffleUnit), not as one Split node.
    """

    def __init__(self, cin: int, cout: int, n: int = 1):
        super().__init__()
        self.c = cout // 2
        self.cv1 = conv_silu(cin, 2 * self.c)
        self.cv2 = conv_silu((2 + n) * self.c, cout)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        c = cin // 2
        self.cv1 = conv_silu(cin, c)
        self.cv2 = conv_silu(4 * c, cout)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))


class YoloStyle(nn.Module):
    def __init__(self, num_classes: int = 2, anchors: int = 3):
        super().__init__()
        no = anchors * (5 + num_classes)                                 # 21
        self.stem = conv_silu(3, 8, 3, 2)                                # 32x32
        self.down1 = conv_silu(8, 16, 3, 2)                              # 16x16
        self.c2f1 = C2f(16, 16, n=2)
        self.down2 = conv_silu(16, 32, 3, 2)                             # 8x8
        self.c2f2 = C2f(32, 32, n=1)
        self.sppf = SPPF(32, 32)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.c2f_head = C2f(32 + 16, 16, n=1)
        self.detect_p5 = nn.Conv2d(32, no, 1)
        self.detect_p4 = nn.Conv2d(16, no, 1)

    def forward(self, x):
        p4 = self.c2f1(self.down1(self.stem(x)))
        p5 = self.sppf(self.c2f2(self.down2(p4)))
        h4 = self.c2f_head(torch.cat([self.up(p5), p4], 1))
        return self.detect_p5(p5), self.detect_p4(h4)


# 7. ShuffleNetV2 ----------------------------------------------------------------------------

def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, -1, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        branch = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                conv_bn(cin, cin, 3, stride, groups=cin, act=None), conv_bn(cin, branch, 1))
        else:
            assert cin == cout
        b2_in = cin if stride > 1 else branch
        self.branch2 = nn.Sequential(
            conv_bn(b2_in, branch, 1),
            conv_bn(branch, branch, 3, stride, groups=branch, act=None),
            conv_bn(branch, branch, 1))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetStyle(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)                     # 16x16
        self.stage = nn.Sequential(ShuffleUnit(16, 32, 2),   # 8x8
                                   ShuffleUnit(32, 32, 1),
                                   ShuffleUnit(32, 32, 1))
        self.conv5 = conv_bn(32, 64, 1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.conv5(self.stage(self.stem(x)))
        return self.fc(x.mean([2, 3]))  # global pool as ReduceMean, as torchvision does


# 8. VGG -------------------------------------------------------------------------------------

class VGGStyle(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16), conv_bn(16, 16), nn.MaxPool2d(2),    # 16x16
            conv_bn(16, 32), conv_bn(32, 32), nn.MaxPool2d(2),   # 8x8
            conv_bn(32, 32), nn.MaxPool2d(2))                    # 4x4
        self.classifier = nn.Sequential(nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))  # no global pool: 16 features/channel


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------

# name -> (constructor, input shape, output names)
MODELS = {
    "resnet_style": (ResNetStyle, (1, 3, 32, 32), ["output"]),
    "mobilenetv3_style": (MobileNetV3Style, (1, 3, 32, 32), ["output"]),
    "densenet_style": (DenseNetStyle, (1, 3, 32, 32), ["output"]),
    "inception_style": (InceptionStyle, (1, 3, 32, 32), ["output"]),
    "unet_style": (UNetStyle, (1, 3, 64, 64), ["output"]),
    "yolo_style": (YoloStyle, (1, 3, 64, 64), ["output", "output2"]),
    "shufflenet_style": (ShuffleNetStyle, (1, 3, 32, 32), ["output"]),
    "vgg_style": (VGGStyle, (1, 3, 32, 32), ["output"]),
}


@torch.no_grad()
def randomise(model: nn.Module) -> None:
    """Non-trivial BN statistics/affine parameters and conv biases (uses the global torch RNG)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.2)
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
            m.bias.normal_(0.0, 0.2)


def build(name: str, randomised: bool) -> nn.Module:
    ctor = MODELS[name][0]
    torch.manual_seed(0)
    model = ctor()
    if randomised:
        randomise(model)
    return model.eval()


def export(model: nn.Module, shape: tuple, outputs: list[str], path: str) -> None:
    dynamic = {"input": {0: "N"}}
    dynamic.update({o: {0: "N"} for o in outputs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter DeprecationWarning
        torch.onnx.export(model, (torch.zeros(shape),), path, dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=outputs, dynamic_axes=dynamic,
                          do_constant_folding=True)


def verify(model: nn.Module, shape: tuple, path: str) -> float:
    """onnx.checker + onnxruntime vs torch at batch 1 and 2; returns the max abs difference."""
    onnx.checker.check_model(onnx.load(path), full_check=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for batch in (1, 2):
        x = torch.randn((batch,) + tuple(shape[1:]), generator=gen)
        with torch.no_grad():
            ref = model(x)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = sess.run(None, {"input": x.numpy()})
        assert len(got) == len(ref), path
        for r, g in zip(ref, got):
            assert r.shape == g.shape, (path, r.shape, g.shape)
            worst = max(worst, float(np.abs(r.numpy() - g).max()))
    if worst >= TOL:
        raise AssertionError(f"{path}: onnxruntime differs from torch by {worst:.3g}")
    return worst


def describe(path: str) -> dict:
    """Op-type counts, initializer sharing and Constant-node payloads of an exported file.

    An initializer is *shared* when more than one node input reads it, either directly or through
    the Identity nodes the exporter's initializer deduplication inserts (counted as their readers).
    """
    m = onnx.load(path)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    alias = {}  # Identity output -> initializer it copies
    for n in g.node:
        if n.op_type == "Identity" and n.input[0] in inits:
            alias[n.output[0]] = n.input[0]
    users: collections.Counter = collections.Counter()
    for n in g.node:
        if n.op_type == "Identity" and n.output[0] in alias:
            continue
        for name in n.input:
            name = alias.get(name, name)
            if name in inits:
                users[name] += 1
    shared = sorted(n for n, c in users.items() if c > 1)
    consts = [n for n in g.node if n.op_type == "Constant"]
    const_elems = [int(np.prod(a.t.dims)) if a.t.dims else 1
                   for n in consts for a in n.attribute if a.name == "value"]
    return {
        "size": os.path.getsize(path),
        "ops": collections.Counter(n.op_type for n in g.node),
        "n_init": len(inits),
        "n_alias": len(alias),
        "shared": shared,
        "shared_uses": {n: users[n] for n in shared},
        "n_const": len(consts),
        "max_const": max(const_elems, default=0),
        "sha": hashlib.sha256(open(path, "rb").read()).hexdigest()[:12],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/models", help="output folder (default tests/models)")
    ap.add_argument("--only", nargs="*", help="export only these models")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    rows = []
    for name, (_, shape, outputs) in MODELS.items():
        if args.only and name not in args.only:
            continue
        for suffix, randomised in (("", True), ("_definit", False)):
            model = build(name, randomised)
            path = os.path.join(args.out, f"{name}{suffix}.onnx")
            export(model, shape, outputs, path)
            diff = verify(model, shape, path)
            rows.append((os.path.basename(path), diff, describe(path)))

    total = 0
    for fname, diff, d in rows:
        total += d["size"]
        ops = ", ".join(f"{k}:{v}" for k, v in sorted(d["ops"].items()))
        shared = ", ".join(f"{n}x{c}" for n, c in d["shared_uses"].items()) or "-"
        print(f"{fname:30s} {d['size'] / 1024:7.1f} KB  maxdiff {diff:.1e}  sha {d['sha']}")
        print(f"    inits {d['n_init']}, Identity aliases of inits {d['n_alias']}, Constant nodes {d['n_const']} (largest {d['max_const']} elems)")
        print(f"    shared inits {len(d['shared'])}: {shared}")
        print(f"    ops: {ops}")
    print(f"total {total / 1024:.1f} KB in {len(rows)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
