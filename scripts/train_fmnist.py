#!/usr/bin/env python3
"""Train onnxprune's bundled demo model: a small ResNet on Fashion-MNIST, exported to ONNX.

Not part of the onnxprune package and not run by its tests; it only documents (and reproduces) how
``models/fmnist_resnet.onnx`` and the ``calib_data/`` subsets were made.

Needs (outside the project's own dependencies)::

    apt-get install -y dataset-fashion-mnist      # idx .gz files under /usr/share/datasets/fashion-mnist
    python3 -m venv /opt/venv-train
    /opt/venv-train/bin/pip install torch==2.13.0 numpy onnx onnxruntime pillow

Usage::

    /opt/venv-train/bin/python scripts/train_fmnist.py --epochs 4 --out-dir models --calib-dir calib_data

With ``--from-ckpt STATE_DICT.pt`` it skips training and only exports and rewrites the data subsets.

Preprocessing is *not* part of the ONNX graph. The model input ``input`` [N,1,28,28] float32 is::

    x = (pixels_uint8 / 255 - MEAN) / STD      with MEAN = 0.2860, STD = 0.3530

and the output ``logits`` [N,10] are raw class scores (argmax = predicted class).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import struct
import sys
import time
from pathlib import Path

import numpy as np

MEAN = 0.2860
STD = 0.3530
CLASS_NAMES = [
    "tshirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"


# ----------------------------------------------------------------------------------------- data
def read_idx(path: Path) -> np.ndarray:
    """Read an (optionally gzipped) idx1/idx3 ubyte file into a uint8 array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return arr.reshape(shape).copy()


def find_file(data_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (data_dir / name).exists():
            return data_dir / name
    raise FileNotFoundError(f"{stem}[.gz] not found in {data_dir}")


def load_fmnist(data_dir: Path):
    xtr = read_idx(find_file(data_dir, "train-images-idx3-ubyte"))
    ytr = read_idx(find_file(data_dir, "train-labels-idx1-ubyte"))
    xte = read_idx(find_file(data_dir, "t10k-images-idx3-ubyte"))
    yte = read_idx(find_file(data_dir, "t10k-labels-idx1-ubyte"))
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28)
    return xtr, ytr.astype(np.int64), xte, yte.astype(np.int64)


def normalise(u8: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] -> float32 [N,1,28,28] model input."""
    x = u8.astype(np.float32) / 255.0
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return x[:, None, :, :].astype(np.float32)


def balanced_subset(labels: np.ndarray, total: int, seed: int) -> np.ndarray:
    """Indices of `total` samples spread as evenly as possible over the classes, seeded.

    Each class gets total // 10 samples; the remaining total % 10 go one each to the lowest-numbered
    classes. The result is shuffled (seeded) so any prefix is class-mixed.
    """
    rng = np.random.default_rng(seed)
    ncls = int(labels.max()) + 1
    per, extra = divmod(total, ncls)
    chosen = []
    for c in range(ncls):
        idx = np.flatnonzero(labels == c)
        k = per + (1 if c < extra else 0)
        chosen.append(rng.choice(idx, size=k, replace=False))
    out = np.concatenate(chosen)
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------------------------------- model
def build_model(stage3_blocks: int = 1):
    import torch.nn as nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu1 = nn.ReLU()
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu2 = nn.ReLU()
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu1(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu2(out + identity)

    class FmnistResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
            self.stage1 = nn.Sequential(BasicBlock(32, 32, 1), BasicBlock(32, 32, 1))
            self.stage2 = nn.Sequential(BasicBlock(32, 64, 2), BasicBlock(64, 64, 1))
            self.stage3 = nn.Sequential(BasicBlock(64, 128, 2),
                                        *[BasicBlock(128, 128, 1) for _ in range(stage3_blocks - 1)])
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.flatten = nn.Flatten()
            self.fc = nn.Linear(128, 10)

        def forward(self, x):
            x = self.stage3(self.stage2(self.stage1(self.stem(x))))
            return self.fc(self.flatten(self.pool(x)))

    return FmnistResNet()


def count_macs(model, torch) -> int:
    """Multiply-accumulates of Conv2d/Linear layers for one 1x28x28 input."""
    import torch.nn as nn
    total = [0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            total[0] += out.numel() * (mod.in_channels // mod.groups) * kh * kw
        elif isinstance(mod, nn.Linear):
            total[0] += out.numel() * mod.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    model.train(was_training)
    for h in hs:
        h.remove()
    return total[0]


# ------------------------------------------------------------------------------------- training
def augment(xb, gen, torch):
    """Random crop (zero-pad 2 on the raw-pixel image) + horizontal flip; xb is float [B,1,28,28] in [0,1]."""
    import torch.nn.functional as F
    b = xb.shape[0]
    padded = F.pad(xb, (2, 2, 2, 2))  # pad with black (raw 0) before normalising
    dy = torch.randint(0, 5, (b,), generator=gen)
    dx = torch.randint(0, 5, (b,), generator=gen)
    ar = torch.arange(28)
    rows = (dy[:, None] + ar[None, :])  # [B,28]
    cols = (dx[:, None] + ar[None, :])
    bi = torch.arange(b)[:, None, None]
    out = padded[:, 0][bi, rows[:, :, None], cols[:, None, :]].unsqueeze(1)
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def evaluate_torch(model, x, y, torch, bs=1000):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), bs):
            correct += int((model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum())
    return correct / len(x)


def train(args, xtr_u8, ytr, xte_u8, yte, torch):
    import torch.nn.functional as F
    model = build_model(args.stage3_blocks)
    gen = torch.Generator().manual_seed(args.seed)
    xtr = torch.from_numpy(xtr_u8).float().div_(255.0).unsqueeze(1)  # raw [0,1]; normalised after aug
    ytr_t = torch.from_numpy(ytr)
    xte = torch.from_numpy(normalise(xte_u8))
    yte_t = torch.from_numpy(yte)
    if args.train_subset:
        xtr, ytr_t = xtr[:args.train_subset], ytr_t[:args.train_subset]
    n = len(xtr)
    steps_per_epoch = (n + args.batch_size - 1) // args.batch_size
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
        pct_start=0.25, div_factor=10.0, final_div_factor=100.0)
    history = []
    t_start = time.time()
    for ep in range(args.epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct = 0.0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * args.batch_size:(s + 1) * args.batch_size]
            xb = augment(xtr[idx], gen, torch)
            xb = (xb - MEAN) / STD
            yb = ytr_t[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            if args.log_every and (s + 1) % args.log_every == 0:
                print(f"  ep {ep + 1} step {s + 1}/{steps_per_epoch} loss {float(loss.detach()):.4f} "
                      f"({time.time() - t0:.0f}s)", flush=True)
        train_time = time.time() - t0
        test_acc = None
        if (ep + 1) % args.eval_every == 0 or ep + 1 == args.epochs:
            test_acc = evaluate_torch(model, xte, yte_t, torch)
        rec = dict(epoch=ep + 1, train_loss=loss_sum / n, train_acc=correct / n, test_acc=test_acc,
                   epoch_train_s=round(train_time, 1), elapsed_s=round(time.time() - t_start, 1))
        history.append(rec)
        print(json.dumps(rec), flush=True)
    total = time.time() - t_start
    return model, history, total


# --------------------------------------------------------------------------------------- export
def export_onnx(model, path: Path, torch):
    model.eval()
    dummy = torch.zeros(2, 1, 28, 28)
    kwargs = dict(
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        opset_version=13,
        # The legacy exporter fuses Conv+BatchNormalization (eval-mode peephole pass) only as part of
        # constant folding; with folding off the BN nodes stay separate, which is what a pruning demo
        # wants (BN scales are a pruning criterion). Eval mode: BN uses the running statistics.
        do_constant_folding=False,
        training=torch.onnx.TrainingMode.EVAL,
    )
    try:
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, **kwargs)
    except TypeError:  # torch without the dynamo switch
        torch.onnx.export(model, (dummy,), str(path), **kwargs)
    undedup_initializers(path)


def undedup_initializers(path: Path):
    """Replace ``Identity(initializer)`` nodes by a private copy of the initializer.

    The exporter de-duplicates parameters with identical values and feeds the duplicates through
    Identity nodes. In this architecture that always hits the two BN biases before each projection
    shortcut's Add (they receive identical gradients from zero init), so without this step those
    BatchNormalization nodes would take their bias from an Identity output instead of an initializer.
    """
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    keep = []
    for node in m.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            arr = numpy_helper.to_array(inits[node.input[0]]).copy()
            m.graph.initializer.append(numpy_helper.from_array(arr, name=node.output[0]))
            continue
        keep.append(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))


def check_onnx(path: Path, x: np.ndarray, torch_model, torch):
    import onnx
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    counts = {}
    for node in m.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    for node in m.graph.node:
        if node.op_type == "BatchNormalization":
            assert len(node.output) == 1, "BatchNormalization exported in training mode"
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(["logits"], {"input": x[:64]})[0]
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(x[:64])).numpy()
    maxdiff = float(np.abs(out - ref).max())
    return counts, maxdiff, m.opset_import[0].version


def ort_accuracy(path: Path, x: np.ndarray, y: np.ndarray, bs: int = 500, threads: int = 1) -> float:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    correct = 0
    for i in range(0, len(x), bs):
        logits = sess.run(["logits"], {"input": x[i:i + bs]})[0]
        correct += int((logits.argmax(1) == y[i:i + bs]).sum())
    return correct / len(x)


# ---------------------------------------------------------------------------------------- calib
def write_calib(calib_dir: Path, xtr_u8, ytr, xte_u8, yte, seed: int, n_calib: int, n_test: int):
    from PIL import Image
    calib_dir.mkdir(parents=True, exist_ok=True)
    img_dir = calib_dir / "fmnist"
    img_dir.mkdir(exist_ok=True)
    for old in img_dir.glob("*.png"):
        old.unlink()
    idx = balanced_subset(ytr, n_calib, seed)
    imgs, labels = xtr_u8[idx], ytr[idx]
    width = max(4, len(str(n_calib - 1)))
    for i, (img, lab) in enumerate(zip(imgs, labels)):
        Image.fromarray(img, mode="L").save(img_dir / f"{i:0{width}d}_{CLASS_NAMES[lab]}.png", optimize=True)
    np.savez_compressed(calib_dir / "fmnist_calib.npz", input=normalise(imgs), labels=labels.astype(np.int64))
    # test subset: the first n_test images of the official test split, in order
    np.savez_compressed(calib_dir / "fmnist_test.npz", input=normalise(xte_u8[:n_test]),
                        labels=yte[:n_test].astype(np.int64))
    return idx


# ----------------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out-dir", type=Path, default=Path("models"), help="where fmnist_resnet.onnx goes")
    ap.add_argument("--calib-dir", type=Path, default=Path("calib_data"),
                    help="where fmnist/ (PNGs), fmnist_calib.npz and fmnist_test.npz go")
    ap.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1, help="peak LR of the one-cycle schedule")
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--stage3-blocks", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-calib", type=int, default=512)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--train-subset", type=int, default=0, help="train on the first N images only (smoke test)")
    ap.add_argument("--eval-every", type=int, default=2, help="test-set accuracy every N epochs (and last)")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--save-ckpt", type=Path, default=None, help="also save the torch state_dict here")
    ap.add_argument("--from-ckpt", type=Path, default=None, help="skip training; export this state_dict")
    ap.add_argument("--no-calib", action="store_true", help="do not (re)write calib_data")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    xtr_u8, ytr, xte_u8, yte = load_fmnist(args.data_dir)
    print(f"torch {torch.__version__}; train {xtr_u8.shape}, test {xte_u8.shape}", flush=True)

    if args.from_ckpt:
        model = build_model(args.stage3_blocks)
        model.load_state_dict(torch.load(args.from_ckpt, map_location="cpu"))
        history, total = [], 0.0
    else:
        model, history, total = train(args, xtr_u8, ytr, xte_u8, yte, torch)
        print(f"training wall time: {total:.0f}s", flush=True)
        if args.save_ckpt:
            torch.save(model.state_dict(), args.save_ckpt)
    model.eval()

    nparams = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, torch)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out_dir / "fmnist_resnet.onnx"
    export_onnx(model, onnx_path, torch)
    xte = normalise(xte_u8)
    counts, maxdiff, opset = check_onnx(onnx_path, xte, model, torch)

    if not args.no_calib:
        write_calib(args.calib_dir, xtr_u8, ytr, xte_u8, yte, args.seed, args.n_calib, args.n_test)

    acc_full = ort_accuracy(onnx_path, xte, yte, threads=args.threads)
    summary = dict(params=nparams, macs=macs, opset=opset, op_counts=counts, torch_vs_ort_maxdiff=maxdiff,
                   onnx_bytes=onnx_path.stat().st_size, ort_test_acc_10k=acc_full,
                   train_wall_s=round(total, 1), epochs=args.epochs, seed=args.seed)
    test_npz = args.calib_dir / "fmnist_test.npz"
    if test_npz.exists():
        d = np.load(test_npz)
        summary["ort_test_acc_subset"] = ort_accuracy(onnx_path, d["input"], d["labels"], threads=args.threads)
        summary["subset_n"] = int(len(d["labels"]))
    calib_npz = args.calib_dir / "fmnist_calib.npz"
    if calib_npz.exists():
        d = np.load(calib_npz)
        summary["ort_calib_acc"] = ort_accuracy(onnx_path, d["input"], d["labels"], threads=args.threads)
    if history:
        summary["history"] = history
    print(json.dumps(summary, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
