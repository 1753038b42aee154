"""Verification: the pruned model is valid and computes something close to the original.

Checks, in order: `onnx.checker`; graph inputs/outputs unchanged (names, dtypes, shapes with
dynamic dims as they were); both models run in onnxruntime on the same seeded inputs (batch 2)
and give outputs of the same shapes; fidelity numbers per output (cosine, max abs diff, top-1
agreement for classifier-like outputs).

Outputs whose dims depend on the data (a detector's NonMaxSuppression, NonZero or TopK with a
run-time K: how many detections) may change those dims when pruning changes the values; such
dims (`data_dependent_dims`: unresolved by shape inference with the inputs fixed, behind one of
`DATA_DEPENDENT_OPS`) are compared as such: rank, dtype and the static dims must match, the
counts are reported side by side (`shape`, `pruned_shape`), and fidelity numbers exist only where
the shapes agree.

Sessions and seeded inputs come from `onnxprune.runtime.sessions`; a model above the protobuf
limit (2 GiB) goes to the checker as a path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .. import io
from ..analysis.graph import inferred_skeleton, real_inputs
from ..runtime.sessions import random_feeds, session

# ops whose output shape can follow the values of their inputs (an op of another domain may too)
DATA_DEPENDENT_OPS = {"NonZero", "NonMaxSuppression", "TopK", "Unique", "Compress", "Loop", "If", "Scan",
                      "Range", "ConstantOfShape", "Tile", "Expand"}


@dataclass(frozen=True)
class Verification:
    """Outcome of `verify`: `valid` is False with `problems` when the pruned model is broken."""

    valid: bool
    problems: tuple[str, ...] = ()
    outputs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain-data form for reports."""
        return {"valid": self.valid, "problems": list(self.problems), "outputs": self.outputs}


def _io_signature(values) -> list[tuple]:
    sig = []
    for vi in values:
        t = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim) \
            if t.HasField("shape") else None
        sig.append((vi.name, t.elem_type, dims))
    return sig


def _data_dependent_ops(model: onnx.ModelProto) -> bool:
    return any(n.op_type in DATA_DEPENDENT_OPS or n.domain not in ("", "ai.onnx") for n in model.graph.node)


def data_dependent_dims(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """{output: its data-dependent axes}: the dims shape inference leaves open with every input's
    shape fixed to `input_shapes`, of outputs computed behind an op of `DATA_DEPENDENT_OPS` (or
    of another domain). An output whose rank inference cannot give has every axis listed (its
    rank is still compared). Outputs without such dims are left out."""
    if not _data_dependent_ops(model):
        return {}
    try:
        inferred = inferred_skeleton(model, input_shapes)
    except Exception:
        return {}
    producer = {o: n for n in model.graph.node for o in n.output if o}
    shapes = {}
    for vi in inferred.graph.output:
        t = vi.type.tensor_type
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] \
            if t.HasField("shape") else None
    result = {}
    for out in model.graph.output:
        shape = shapes.get(out.name)
        if shape is not None and None not in shape:
            continue
        stack, seen, behind = [out.name], set(), False
        while stack and not behind:
            node = producer.get(stack.pop())
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            behind = node.op_type in DATA_DEPENDENT_OPS or node.domain not in ("", "ai.onnx")
            stack.extend(i for i in node.input if i)
        if behind:
            result[out.name] = [k for k, d in enumerate(shape) if d is None] if shape is not None else None
    return result


def compare_outputs(ref: list[np.ndarray], out: list[np.ndarray], names: list[str],
                    dynamic: dict[str, list[int] | None] | None = None) -> dict:
    """Fidelity of `out` against `ref`, per output name.

    `dynamic` maps outputs to their data-dependent axes (None: every axis): those axes may differ
    (the entry then has `pruned_shape` and no fidelity numbers); any other difference of shape
    (rank included) or of dtype is a `shape_mismatch` / `dtype_mismatch`.
    """
    dynamic = dynamic or {}
    result = {}
    for name, a, b in zip(names, ref, out):
        entry = {"shape": list(a.shape)}
        if name in dynamic:
            axes = dynamic[name]
            entry["data_dependent_dims"] = list(range(a.ndim)) if axes is None else list(axes)
        if a.dtype != b.dtype:
            entry["dtype_mismatch"] = [str(a.dtype), str(b.dtype)]
            result[name] = entry
            continue
        if a.shape != b.shape:
            free = set(entry.get("data_dependent_dims", ()))
            if a.ndim == b.ndim and all(x == y or k in free for k, (x, y) in enumerate(zip(a.shape, b.shape))):
                entry["pruned_shape"] = list(b.shape)
            else:
                entry["shape_mismatch"] = [list(a.shape), list(b.shape)]
            result[name] = entry
            continue
        if name in dynamic:
            entry["pruned_shape"] = list(b.shape)
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
            dynamic = data_dependent_dims(original, {k: list(v.shape) for k, v in feeds.items()})
            outputs = compare_outputs(ref, out, names, dynamic)
            for name, entry in outputs.items():
                if "shape_mismatch" in entry:
                    problems.append(f"output '{name}' shape changed: {entry['shape_mismatch'][0]} -> {entry['shape_mismatch'][1]}")
                if "dtype_mismatch" in entry:
                    problems.append(f"output '{name}' dtype changed: {entry['dtype_mismatch'][0]} -> {entry['dtype_mismatch'][1]}")
    return Verification(not problems, tuple(problems), outputs)
