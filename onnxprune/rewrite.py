"""Apply a selection to the graph: remove channels physically.

Every node whose tensors lose channels asks its rule (ops.RULES) to slice its weights and fix its
attributes. Weights are never edited in place: a sliced weight becomes a new initializer that
only that node reads, so weights shared between nodes (for example identical biases the PyTorch
exporter deduplicated) stay correct for the other readers. The rewrite then always ends the same
way: stale intermediate shapes cleared, dead nodes and initializers removed, shapes re-inferred.
Graph inputs and outputs (names, dtypes, dynamic dims) are never touched.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .analysis.graph import GraphIndex, copy_without_large, remove_dead, restore_large, run_shape_inference, skeleton, sync_initializer_inputs, unique_name
from .analysis.groups import Analysis
from .analysis.ops import rule_for
from .analysis.shapes import PASS_THROUGH, pass_through_producer


class Rewriter:
    """The context rules see while rewriting (`rw` in ops.py)."""

    def __init__(self, model: onnx.ModelProto, analysis: Analysis, kept: dict[str, np.ndarray],
                 means: dict[str, np.ndarray] | None = None, merges: dict | None = None):
        self.model = model
        self.means = means or {}
        self.merges = merges or {}     # tensor -> [(removed j, kept i, alpha, beta0)] (variety.merges)
        self.analysis = analysis
        self.index = GraphIndex(model)
        self.opset = analysis.opset
        self._kept = kept
        self._new: dict[str, np.ndarray] = {}
        self.pending: list[tuple[str, onnx.NodeProto]] = []   # (insert after producer of, node)
        self._names = {n for node in model.graph.node for n in list(node.input) + list(node.output)}
        self._names |= set(self.index.initializers) | {i.name for i in model.graph.input}

    def kept(self, name: str) -> np.ndarray | None:
        """Kept channel indices of tensor `name`, or None when it keeps all."""
        return self._kept.get(name)

    def channels(self, name: str):
        """The ChannelTensor of `name`, or None."""
        return self.analysis.tensors.get(name)

    def shape(self, name: str):
        """Original (pre-pruning) static shape of `name`."""
        return self.analysis.shapes.get(name)

    def const(self, name: str) -> np.ndarray | None:
        """Current value of constant tensor `name` (including values set during this rewrite)."""
        if name in self._new:
            return self._new[name]
        return self.index.const(name)

    def set_const(self, node: onnx.NodeProto, slot: int, value: np.ndarray) -> None:
        """Give `node` a new private initializer `value` at input `slot`."""
        old = node.input[slot] if slot < len(node.input) else ""
        dtype = self.const(old).dtype if old and self.const(old) is not None else value.dtype
        base = f"{old or (node.name or node.output[0]) + f'_in{slot}'}_pruned"
        name = unique_name(self._names, base)
        tensor = numpy_helper.from_array(np.ascontiguousarray(value.astype(dtype, copy=False)), name)
        self.model.graph.initializer.append(tensor)
        self._new[name] = value.astype(dtype, copy=False)
        while len(node.input) <= slot:
            node.input.append("")
        node.input[slot] = name

    def set_const_by_name(self, node: onnx.NodeProto, name: str, value: np.ndarray) -> None:
        """Replace constant `name` read by `node` or by the producer of one of its inputs.

        A producer (the Concat building a Reshape's shape) read by other nodes too is copied first,
        so the change stays private to `node`.
        """
        for slot, inp in enumerate(node.input):
            if inp == name:
                return self.set_const(node, slot, value)
        for i, inp in enumerate(node.input):
            producer = self.index.producer.get(inp)
            if producer is not None and name not in producer.input and producer.op_type in PASS_THROUGH:
                # behind Casts read only along the chain (shapes.shape_entry checked it): change it in place
                deeper = pass_through_producer(self.index, inp)
                if deeper is not None and name in deeper.input:
                    return self.set_const(deeper, list(deeper.input).index(name), value)
            if producer is None or name not in producer.input:
                continue
            if len(self.index.consumers.get(inp, [])) > 1 or inp in self.index.outputs:
                copy_node = onnx.NodeProto()
                copy_node.CopyFrom(producer)
                copy_node.name = unique_name(self._names, (producer.name or inp) + "_pruned")
                del copy_node.output[:]
                copy_node.output.append(unique_name(self._names, inp + "_pruned"))
                self.pending.append((inp, copy_node))
                node.input[i] = copy_node.output[0]
                producer = copy_node
            return self.set_const(producer, list(producer.input).index(name), value)
        raise RuntimeError(f"constant {name} not found around node {node.name}")


def apply(analysis: Analysis, removed_units: np.ndarray, means: dict[str, np.ndarray] | None = None,
          merges: dict | None = None) -> onnx.ModelProto:
    """Return a copy of the analysed model with `removed_units` physically removed.

    Args:
        analysis: result of `groups.analyse` on the (normalised) model.
        removed_units: unit ids to remove (none of them blocked).
        means: per-channel calibration means of tensors read by Conv/Gemm; when given, removed
            channels are replaced by their mean in the consumer's bias (mean compensation).
        merges: removed channels folded into a kept near-copy in the consumer (merge compensation).
    Returns:
        The pruned model: same inputs/outputs, opset and IR version.
    """
    if len(removed_units) and analysis.unit_blocked[removed_units].any():
        raise ValueError("a blocked unit was selected for removal")
    # weights above graph.LARGE_CONST are not copied: rules read them from the analysed model, and
    # those still read afterwards are copied back (a 2 GB model is then not held twice more)
    model, large = copy_without_large(analysis.model)
    kept = analysis.kept_channels(np.asarray(removed_units, dtype=np.int64))
    empty = [name for name, idx in kept.items() if len(idx) == 0]
    if empty:
        raise ValueError(f"selection removes every channel of {empty[0]}")
    if kept:
        rw = Rewriter(model, analysis, kept, means, merges)
        rw.index.initializers.update(large)
        rw._names |= set(large)
        for node in model.graph.node:
            touched = any(n in kept for n in list(node.input) + list(node.output))
            if touched:
                rule_for(node).rewrite(node, rw)
        if rw.pending:  # private copies of shared shape producers, placed right after the original
            after = {}
            for tensor, new_node in rw.pending:
                after.setdefault(tensor, []).append(new_node)
            nodes = []
            for node in model.graph.node:
                nodes.append(node)
                for out in node.output:
                    nodes.extend(after.get(out, []))
            nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes]
            del model.graph.node[:]
            model.graph.node.extend(nodes)
    restore_large(model, large)
    finalise(model)
    return model


def finalise(model: onnx.ModelProto) -> None:
    """Clear stale shapes, drop dead nodes/initializers, keep IR<4 input lists exact, check shapes infer.

    Inferred intermediate shapes are not stored: onnxruntime infers them itself, and stored ones
    can steer it to other kernels, so a ratio-0 result would no longer be bit-identical.
    """
    del model.graph.value_info[:]
    remove_dead(model)
    sync_initializer_inputs(model)
    try:
        run_shape_inference(skeleton(model), data_prop=False)
    except Exception:
        pass  # custom ops may defeat onnx shape inference; verification runs the model for real
