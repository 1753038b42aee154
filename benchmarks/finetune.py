"""Fine-tuning benchmark on the bundled Fashion-MNIST model: training-free recovery against
`--finetune`, scored on the full 10k test set (Debian's dataset-fashion-mnist; apt install
dataset-fashion-mnist), no labels used in pruning or fine-tuning.

    python benchmarks/finetune.py                      # --ratio 0.5 and --target-macs 0.5, 512 bundled images
    python benchmarks/finetune.py --train 5000         # ... with 5000 unlabelled train images instead
    python benchmarks/finetune.py --synthetic          # ... with 512 synthetic inputs (--calib synthetic)
    python benchmarks/finetune.py --criteria           # l1, mean_act and the default, each fine-tuned, --ratio 0.5
    python benchmarks/finetune.py --runs ratio --epochs 30 --lr 3e-4   # one setting, other schedule
    python benchmarks/finetune.py --runs ratio --set refit=false   # any FinetuneConfig field

Prints one line per run: budget, criterion, data, MACs kept, test accuracy without and with
fine-tuning (the training-free model is the same run's recovered model, the one handed to
fine-tuning), the fine-tuning's best epoch and seconds. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from quality import accuracy  # noqa: E402

MODEL = os.path.join(ROOT, "models", "fmnist_resnet.onnx")
CALIB = os.path.join(ROOT, "calib_data", "fmnist_calib.npz")
FMNIST = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530      # the bundled model's preprocessing (models/README.md)


def idx_images(name: str) -> np.ndarray:
    """Fashion-MNIST images of one idx file, preprocessed as calib_data/*.npz."""
    with gzip.open(os.path.join(FMNIST, name)) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    return ((pixels.astype(np.float32) / 255 - MEAN) / STD).astype(np.float32)


def idx_labels(name: str) -> np.ndarray:
    with gzip.open(os.path.join(FMNIST, name)) as f:
        return np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)


def unlabelled(samples: int, folder: str) -> str:
    """An .npz of unlabelled calibration inputs: the bundled 512, or `samples` train images."""
    path = os.path.join(folder, f"calib_{samples}.npz")
    if samples == 512:
        np.savez(path, input=np.load(CALIB)["input"])
    else:
        x = idx_images("train-images-idx3-ubyte.gz")
        pick = np.sort(np.random.default_rng(0).choice(len(x), samples, replace=False))
        np.savez(path, input=x[pick])
    return path


def override(settings: list[str]) -> None:
    """Make `prune --finetune` use FinetuneConfig fields other than the defaults (benchmark rows that
    change one setting at a time); values are read as Python literals (false/true accepted)."""
    import ast
    import dataclasses

    from onnxprune import pipeline

    if not settings:
        return
    fields = {}
    for item in settings:
        name, value = item.split("=", 1)
        value = {"false": "False", "true": "True"}.get(value.lower(), value)
        try:
            fields[name] = ast.literal_eval(value)
        except ValueError:
            fields[name] = value
    make = pipeline._finetune_config

    def patched(*a, **kw):
        config = make(*a, **kw)
        return None if config is None else dataclasses.replace(config, **fields)
    pipeline._finetune_config = patched


def record_training_free() -> list:
    """Record the model `prune --finetune` hands to fine-tuning (the training-free result: pruned
    and recovered); returns the list the models are appended to."""
    from onnxprune import finetuning

    handed, tune = [], finetuning.finetune_model

    def recording(original, pruned, *a, **kw):
        handed.append(pruned)
        return tune(original, pruned, *a, **kw)
    finetuning.finetune_model = recording
    return handed


def main() -> int:
    import onnxprune

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=512, help="calibration images: 512 (bundled) or N train images")
    ap.add_argument("--runs", default="ratio,macs", help="ratio (--ratio 0.5), macs (--target-macs 0.5)")
    ap.add_argument("--criteria", action="store_true", help="l1, mean_act and blend at --ratio 0.5")
    ap.add_argument("--criterion", default="blend", help="the criterion of the --runs rows")
    ap.add_argument("--synthetic", action="store_true", help="calibrate on 512 synthetic inputs (--calib synthetic)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--augment", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a FinetuneConfig field of `prune --finetune` (e.g. refit=false, features=0)")
    args = ap.parse_args()
    override(args.set)
    handed = record_training_free()
    if not os.path.isdir(FMNIST):
        print(f"needs {FMNIST}: apt install dataset-fashion-mnist", file=sys.stderr)
        return 2
    x, y = idx_images("t10k-images-idx3-ubyte.gz"), idx_labels("t10k-labels-idx1-ubyte.gz")
    import onnx
    print(f"original: test accuracy {accuracy(onnx.load(MODEL), x, y, 'input'):.4f} (10k)", flush=True)
    runs = [("ratio", c) for c in ("l1", "mean_act", "blend")] if args.criteria else \
        [(r, args.criterion) for r in args.runs.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        calib = "synthetic" if args.synthetic else unlabelled(args.train, folder)
        label = "synthetic" if args.synthetic else f"{args.train} images"
        for budget, criterion in runs:
            t0 = time.time()
            kw = {"ratio": 0.5} if budget == "ratio" else {"target_macs": 0.5}
            tuned = onnxprune.prune(MODEL, criterion=criterion, calib=calib, calib_samples=args.train, seed=args.seed,
                                    finetune=True, epochs=args.epochs, lr=args.lr, augment=args.augment,
                                    **kw)
            t_tuned = time.time() - t0
            step = next(s for s in tuned.report["recovery"] if s["step"] == "finetune")
            free = accuracy(handed.pop(), x, y, 'input')
            refit = step.get("refit")
            refit_note = f", refit {refit['epochs']} epochs on {refit['images']} {'kept' if refit['kept'] else 'not kept'}" \
                if refit else ""
            print(f"{budget:<5} {criterion:<8} {label}  MACs kept {tuned.report['macs_kept']:.3f}  "
                  f"training-free {free:.4f}  fine-tuned {accuracy(tuned.model, x, y, 'input'):.4f} "
                  f"({t_tuned:.0f} s; fine-tuning {step['seconds']:.0f} s, best epoch {step['best_epoch']} of "
                  f"{step['epochs_run']}, {'kept' if step['kept'] else 'not kept'}{refit_note})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
