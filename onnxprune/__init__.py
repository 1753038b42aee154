"""onnxprune: structured (channel) pruning of ONNX CNNs.

Public API (imported lazily so the CLI starts fast):
    prune(model_or_path, criterion="l1", ratio=0.5, ...) -> PruneResult
    analyse(model_or_path, input_shape=None) -> Analysis
    finetune(original, pruned, calib=..., epochs=20, ...) -> FinetuneResult   (the [finetune] extra)
    load(path) -> ModelProto ; save(model, path)
"""

__version__ = "0.1.0"
__all__ = ["prune", "analyse", "finetune", "load", "save", "PruneResult", "OnnxPruneError"]


def __getattr__(name):
    if name in ("prune", "analyse", "PruneResult"):
        from . import pipeline
        return getattr(pipeline, name)
    if name == "finetune":
        from .finetuning import finetune
        return finetune
    if name in ("load", "save"):
        from . import io
        return getattr(io, name)
    if name == "OnnxPruneError":
        from .errors import OnnxPruneError
        return OnnxPruneError
    raise AttributeError(name)
