"""Constant folding before analysis: every node whose inputs are all constants is computed once.

Exports prepare weights at run time from constants only: Caffe2/Paddle's Unsqueeze/Mul of BN
parameters, NF-Net's weight standardisation (ReduceMean/Sub/Mul, or BatchNormalization with
``training_mode=1`` over the reshaped initializer, then Reshape back), timm's ``StdConv2d``. Such a
Conv reads a computed tensor, not a weight, and gets no group until the tensor is folded into an
initializer. Folding is exact for every input: only nodes whose inputs are all initializers (or
outputs of folded nodes) fold; nothing that reads a graph input, a tensor's run-time shape, or
random numbers does. The graph's inputs and outputs are untouched (a node that writes a graph
output is kept).

The first pass folds the small set of ops folding always covered (`graph.FOLDABLE`); `fold`
then folds any other op of the default domain with the ONNX reference evaluator and checks the
result against the original on seeded inputs in onnxruntime (relative `CHECK_RTOL` of each
output's scale); a result that differs, or that onnxruntime cannot run where the original runs,
is dropped in favour of the first pass. What was folded is summarised for the report.
"""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import FOLDABLE, real_inputs, remove_dead, sync_initializer_inputs

NEVER = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
         "Dropout", "If", "Loop", "Scan", "SequenceConstruct", "SequenceInsert", "SequenceAt", "SplitToSequence",
         "ConcatFromSequence", "SequenceEmpty", "Optional", "OptionalGetElement", "OptionalHasElement"}
FOLD_LIMIT = 64 * 1024 * 1024   # elements: larger results stay computed
GROWTH_LIMIT = 16 * 1024 * 1024  # bytes: a result this large that outweighs its inputs (Expand, Tile) stays computed
CHECK_RTOL = 1e-4


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None


# ops whose output is computed once here when all their inputs are constants (weights prepared
# by Unsqueeze/Reshape/Mul..., as Caffe2 and Paddle exports do); shape ops are left alone
def normalise(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None,
              folded: dict | None = None) -> onnx.ModelProto:
    """Return a copy where `Constant` nodes became initializers and constant-only ops are folded.

    The computation is unchanged; weights then reach every node as initializers. With
    `input_shapes`, any op of the default domain over constants only is folded and the result
    checked against the original (`fold`); `folded`, a dict, then receives the summary.
    """
    model = copy.deepcopy(model)
    _constants_to_initializers(model)
    model, summary = fold(model, input_shapes)
    if summary is not None and folded is not None:
        folded.update(summary)
    sync_initializer_inputs(model)
    return model


def _constants_to_initializers(model: onnx.ModelProto) -> None:
    graph = model.graph
    outputs = {o.name for o in graph.output}
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            value = _constant_value(node)
            if value is not None:
                graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                continue
        keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def fold_constants(model: onnx.ModelProto, ops: set[str] | None = None) -> Counter:
    """Fold, in place, every node of `model` whose inputs are all constants (initializers or
    folded outputs), of op types `ops` (None: any op of the default domain but `NEVER`).

    Returns:
        A Counter of the folded op types.
    """
    from onnx.reference import ReferenceEvaluator


    graph = model.graph
    values = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    real = {i.name for i in real_inputs(model)}
    keep, folded = [], Counter()
    for node in graph.node:
        ins = [i for i in node.input if i]
        foldable = (node.domain in ("", "ai.onnx") and node.op_type not in NEVER
                    and (ops is None or node.op_type in ops) and ins
                    and all(i in values and i not in real for i in ins)
                    and not any(o in outputs for o in node.output)
                    and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                for a in node.attribute))
        if foldable:
            try:
                sub = helper.make_model(
                    helper.make_graph([node], "fold", [], [onnx.ValueInfoProto(name=o) for o in node.output if o],
                                      initializer=[values[i] for i in dict.fromkeys(ins)]),
                    opset_imports=list(model.opset_import), ir_version=max(model.ir_version, 4))
                results = [np.asarray(r) for r in ReferenceEvaluator(sub).run(None, {})]
                in_bytes = sum(_nbytes(values[i]) for i in dict.fromkeys(ins))
                out_bytes = sum(r.nbytes for r in results)
                grows = ops is None and out_bytes > GROWTH_LIMIT and out_bytes > in_bytes
                if all(r.size <= FOLD_LIMIT for r in results) and not grows:
                    for name, value in zip([o for o in node.output if o], results):
                        tensor = numpy_helper.from_array(value, name)
                        graph.initializer.append(tensor)
                        values[name] = tensor
                    folded[node.op_type] += 1
                    continue
            except Exception:   # noqa: BLE001 - an op the reference evaluator cannot run stays computed
                pass
        keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
        remove_dead(model)
    return folded


def _nbytes(init: onnx.TensorProto) -> int:
    return int(np.prod(init.dims, dtype=np.int64)) * max(1, helper.tensor_dtype_to_np_dtype(init.data_type).itemsize) \
        if init.data_type not in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED) else 0


def fold(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> tuple[onnx.ModelProto, dict | None]:
    """`model` (already without Constant nodes) with its constant-only subgraphs folded, and a
    summary for the report (None when nothing beyond `graph.FOLDABLE` folded); see the module
    docstring. `input_shapes` (concrete shapes of the real inputs) enable the check against the
    original; without them the general pass is not tried."""

    fold_constants(model, FOLDABLE)
    if input_shapes is None or not _has_candidates(model):
        return model, None
    general = copy.deepcopy(model)
    ops = fold_constants(general)
    if not ops:
        return model, None
    summary = {"nodes": int(sum(ops.values())), "ops": dict(sorted(ops.items()))}
    check = _check(model, general, input_shapes)
    summary["check"] = check
    if check.startswith("differs") or check.startswith("fails"):
        summary["kept"] = False
        return model, summary
    summary["kept"] = True
    return general, summary


def _has_candidates(model: onnx.ModelProto) -> bool:

    const = {i.name for i in model.graph.initializer} - {i.name for i in real_inputs(model)}
    return any(n.input and all(i in const for i in n.input if i) and n.op_type not in NEVER
               and n.domain in ("", "ai.onnx") for n in model.graph.node)


def _check(before: onnx.ModelProto, after: onnx.ModelProto, input_shapes) -> str:
    """How the folded model's outputs compare with the unfolded one's on seeded inputs."""
    from ..runtime.sessions import random_feeds, session

    names = [o.name for o in before.graph.output]
    try:
        feeds = random_feeds(before, input_shapes, seed=0)
        ref = session(before).run(names, feeds)
    except Exception as exc:   # noqa: BLE001 - e.g. an op onnxruntime lacks: the fold stands unchecked
        return f"not checked (the original does not run in onnxruntime: {str(exc).splitlines()[0][:120]})"
    try:
        out = session(after).run(names, feeds)
    except Exception as exc:   # noqa: BLE001
        return f"fails in onnxruntime: {str(exc).splitlines()[0][:120]}"
    worst = 0.0
    for a, b in zip(ref, out):
        if a.shape != b.shape:
            return f"differs: shape {list(a.shape)} -> {list(b.shape)}"
        if not np.issubdtype(a.dtype, np.floating):
            if not np.array_equal(a, b):
                return "differs"
            continue
        scale = max(float(np.max(np.abs(a))) if a.size else 0.0, 1e-6)
        diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        if not diff <= CHECK_RTOL * scale:
            return f"differs: max|diff| {diff:.3g} at output scale {scale:.3g}"
        worst = max(worst, diff / scale)
    return f"matches the original (max relative difference {worst:.2g})"
