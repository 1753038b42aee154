"""Fine-tuning a pruned model against its original (label-free distillation; the `[finetune]` extra).

    finetune(original, pruned, calib=..., epochs=20, ...) -> FinetuneResult

`bridge` converts ONNX to torch (onnx2torch) and writes trained weights back into the ONNX graph,
`losses` holds the distillation loss, `augment` the input augmentations, `train` the loop.
Nothing here imports torch at module level: the core install has no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx

from .augment import AUGMENTATIONS, parse_augment
from .bridge import EXTRA_HINT, require_torch
from .train import DEVICES, FinetuneConfig, check_convertible, check_ready, finetune_model, hints_for

__all__ = ["finetune", "FinetuneConfig", "FinetuneResult", "finetune_model", "hints_for", "check_ready", "check_convertible",
           "require_torch", "parse_augment", "AUGMENTATIONS", "DEVICES", "EXTRA_HINT"]


@dataclass
class FinetuneResult:
    """What `finetune` returns: the model (fine-tuned, or the input when that was not better) and
    the report entry (`step`: epochs, losses per epoch, best epoch, accepted and why)."""

    model: onnx.ModelProto
    step: dict


def finetune(original, pruned, calib: str, *, epochs: int = 20, lr: float = 1e-3, finetune_batch: int = 32,
             augment: str | tuple = "default", device: str = "cpu", seed: int = 0, calib_samples: int = 512,
             batch_size: int = 32, mean: tuple[float, ...] = (0.0,), std: tuple[float, ...] = (1.0,),
             scale: float = 1.0 / 255.0, holdout: float = 0.25, input_shape: dict | None = None,
             bn: str = "train", temperature: float = 4.0, refit: bool = True, progress=None) -> FinetuneResult:
    """Fine-tune `pruned` (pruned earlier, or from a plan) against `original` (the Python form of
    `onnxprune finetune`).

    Args:
        original, pruned: ONNX paths or ModelProtos (not modified); same inputs and outputs.
        calib: calibration data as for `prune` (image folder, .npy/.npz, "random"); its
            'score' split trains, the held-out split decides.
        epochs, lr, finetune_batch: the schedule (Adam, cosine decay), batch size in training.
        augment: "default" (shifts), "none", or a comma list of shift, crop, flip.
        device: torch's device, "cpu" or "cuda".
        seed: seeds the data order, augmentation and torch.
        calib_samples, batch_size, mean, std, scale, holdout, input_shape: as for `prune`.
        bn: "train" (BN in training mode, statistics updated) or "frozen" (kept).
        temperature: the distillation temperature of classifier outputs.
        refit: after an accepted run, train again on every image (both splits) for the chosen
            number of epochs (the report's `refit` entry).
        progress: optional callable(epoch, epochs, train_loss, held_out_loss).
    Returns:
        A FinetuneResult.
    Raises:
        OnnxPruneError: the extra or the device missing, an op onnx2torch cannot convert, models
            that do not match, or data without a held-out split.
    """
    config = FinetuneConfig(epochs=epochs, lr=lr, batch_size=finetune_batch, augment=augment, device=device,
                            seed=seed, bn=bn, temperature=temperature, refit=refit)
    check_ready(config)
    from ..analysis import fold, graph
    from .. import io
    from ..calibration.activations import outputs
    from ..calibration.calib import CalibConfig, CalibData, input_specs
    from ..errors import OnnxPruneError
    from ..verification.evaluate import Reference, output_parts

    def load(m, label):
        if isinstance(m, (str, os.PathLike)):
            return io.load(m)
        io.check_supported(m, label)
        return m

    original, pruned = load(original, "original"), load(pruned, "pruned model")
    if [i.name for i in graph.real_inputs(original)] != [i.name for i in graph.real_inputs(pruned)] or \
            [o.name for o in original.graph.output] != [o.name for o in pruned.graph.output]:
        raise OnnxPruneError("the original and the pruned model have different inputs or outputs")
    shapes = graph.fixed_input_shapes(original, input_shape)
    check_convertible(original, "original", shapes)
    check_convertible(pruned, "pruned model", shapes)
    calib_config = CalibConfig(calib, calib_samples, batch_size, tuple(mean), tuple(std), scale, holdout, seed)
    if calib == "synthetic":
        from .synthetic import synthetic_calib
        data = synthetic_calib(original, calib_config, input_specs(original, shapes))
    else:
        data = CalibData(calib_config, input_specs(original, shapes))
    norm = fold.normalise(original)
    reference = Reference(outputs(original, data, "holdout"),
                          output_parts(norm, graph.infer_shapes(norm, shapes)))
    model, step = finetune_model(original, pruned, data, reference, config, progress=progress)
    return FinetuneResult(model, step)
