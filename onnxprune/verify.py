"""Verification: the pruned model is valid and computes something close to the original.

Checks, in order: `onnx.checker`; graph inputs/outputs unchanged (names, dtypes, shapes with
dynamic dims as they were); both models run in onnxruntime on the same seeded inputs (batch 2)
and give outputs of the same shapes; fidelity numbers per output (cosine, max abs diff, top-1
agreement for classifier-like outputs).

`OrtModel` is how any model reaches onnxruntime: the program's sessions are built by `session`
(bench keeps an `OrtModel` per model), so models above the protobuf limit (2 GiB), which cannot be
serialized, go as temporary files with external data; `verify` hands the checker a path for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from . import io
from .graph import real_inputs


@dataclass(frozen=True)
class Verification:
    """Outcome of `verify`: `valid` is False with `problems` when the pruned model is broken."""

    valid: bool
    problems: tuple[str, ...] = ()
    outputs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain-data form for reports."""
        return {"valid": self.valid, "problems": list(self.problems), "outputs": self.outputs}


class OrtModel:
    """What onnxruntime is given for a model, as `source`.

    A path stays a path. A proto below `io.PROTOBUF_LIMIT` (read at call time) becomes its
    serialized bytes. A larger one cannot be serialized, so it is written once into a private
    temporary folder with its tensors as external data (`io.TemporaryModelFile`) and `source` is
    that file's path; the folder is removed by `close()`, at the end of a `with` block, or when
    this object is garbage-collected.
    """

    def __init__(self, model: onnx.ModelProto | str | os.PathLike):
        self.temp = None
        if isinstance(model, (str, os.PathLike)):
            self.source: bytes | str = str(model)
        elif io.too_big(model):
            self.temp = io.TemporaryModelFile(model)
            self.source = self.temp.path
        else:
            self.source = model.SerializeToString()

    @property
    def is_path(self) -> bool:
        """True when `source` is a file path (a path given, or a temporary copy)."""
        return isinstance(self.source, str)

    def close(self) -> None:
        """Remove the temporary copy, if any."""
        if self.temp is not None:
            self.temp.close()

    def __enter__(self) -> "OrtModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def session(model: onnx.ModelProto | str | OrtModel, provider: str = "CPUExecutionProvider", threads: int = 0):
    """An onnxruntime CPU session for a model (proto, path or `OrtModel`), quiet and deterministic.

    Protos above the protobuf limit go through a temporary file (see `OrtModel`), removed once
    the session is built: onnxruntime has read (or mapped) the weights by then.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if isinstance(model, OrtModel):
        return ort.InferenceSession(model.source, opts, providers=[provider])
    with OrtModel(model) as src:
        return ort.InferenceSession(src.source, opts, providers=[provider])


def random_feeds(model: onnx.ModelProto, input_shapes: dict[str, list[int]], batch: int = 2,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every real input: normal floats, small non-negative integers."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in real_inputs(model):
        shape = list(input_shapes[vi.name])
        dims = vi.type.tensor_type.shape.dim
        if dims and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            shape[0] = batch
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.random(shape) > 0.5
        else:
            feeds[vi.name] = rng.integers(0, 4, size=shape).astype(dtype)
    return feeds


def _io_signature(values) -> list[tuple]:
    sig = []
    for vi in values:
        t = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim) \
            if t.HasField("shape") else None
        sig.append((vi.name, t.elem_type, dims))
    return sig


def compare_outputs(ref: list[np.ndarray], out: list[np.ndarray], names: list[str]) -> dict:
    """Fidelity of `out` against `ref`, per output name."""
    result = {}
    for name, a, b in zip(names, ref, out):
        entry = {"shape": list(a.shape)}
        if a.shape != b.shape:
            entry["shape_mismatch"] = [list(a.shape), list(b.shape)]
            result[name] = entry
            continue
        if np.issubdtype(a.dtype, np.floating):
            fa, fb = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
            denom = np.linalg.norm(fa) * np.linalg.norm(fb)
            entry["cosine"] = float(fa @ fb / denom) if denom > 0 else float(np.array_equal(fa, fb))
            entry["max_abs_diff"] = float(np.max(np.abs(fa - fb))) if fa.size else 0.0
            entry["max_abs_ref"] = float(np.max(np.abs(fa))) if fa.size else 0.0
            if a.ndim == 2 and a.shape[1] > 1:
                entry["top1_agreement"] = float(np.mean(a.argmax(1) == b.argmax(1)))
        else:
            entry["equal_fraction"] = float(np.mean(a == b))
        result[name] = entry
    return result


def verify(original: onnx.ModelProto, pruned: onnx.ModelProto, input_shapes: dict[str, list[int]],
           seed: int = 0, run: bool = True) -> Verification:
    """Check that `pruned` is a valid drop-in replacement for `original` (see module docstring).

    Above the protobuf limit the pruned model is written once to a temporary file, which both the
    checker (its path form) and the onnxruntime session read.
    """
    if not io.too_big(pruned):
        return _verify(original, pruned, pruned, input_shapes, seed, run)
    with io.TemporaryModelFile(pruned) as tmp:
        return _verify(original, pruned, tmp.path, input_shapes, seed, run)


def _verify(original: onnx.ModelProto, pruned: onnx.ModelProto, pruned_src: onnx.ModelProto | str,
            input_shapes: dict[str, list[int]], seed: int, run: bool) -> Verification:
    problems = []
    try:   # the path form reads the graph file and checks that external data stays in its folder
        onnx.checker.check_model(pruned_src)
    except Exception as exc:
        problems.append(f"onnx.checker: {str(exc).splitlines()[0]}")
    if _io_signature(real_inputs(original)) != _io_signature(real_inputs(pruned)):
        problems.append("graph inputs changed")
    if _io_signature(original.graph.output) != _io_signature(pruned.graph.output):
        problems.append("graph outputs changed")
    outputs = {}
    if run and not problems:
        feeds = random_feeds(original, input_shapes, seed=seed)
        names = [o.name for o in original.graph.output]
        try:
            ref = session(original).run(names, feeds)
        except Exception as exc:
            return Verification(True, (), {"note": f"original model does not run in onnxruntime: {str(exc).splitlines()[0]}"})
        try:
            out = session(pruned_src).run(names, feeds)
        except Exception as exc:
            problems.append(f"pruned model fails in onnxruntime: {str(exc).splitlines()[0][:300]}")
        else:
            outputs = compare_outputs(ref, out, names)
            for name, entry in outputs.items():
                if "shape_mismatch" in entry:
                    problems.append(f"output '{name}' shape changed: {entry['shape_mismatch'][0]} -> {entry['shape_mismatch'][1]}")
    return Verification(not problems, tuple(problems), outputs)
