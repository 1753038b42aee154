"""Model size and cost: parameters, multiply-accumulates (MACs) per node, file size.

MACs are counted for one sample (batch dimension 1) from static shapes:
- Conv: ``C_out * prod(out_spatial) * (C_in / group) * prod(kernel)``
- ConvTranspose: ``C_in * prod(in_spatial) * (C_out / group) * prod(kernel)``
- Gemm / MatMul: ``prod(output dims except batch) * K``
Element-wise ops, pooling and normalisation are not counted (they are memory-bound and small).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .graph import GraphIndex
from ..io import serialized_size
from .ops import rule_for, rule_or_default


@dataclass(frozen=True)
class ModelStats:
    """Size and cost of one model."""

    params: int
    macs: int
    convs: int
    bytes: int

    def to_dict(self) -> dict:
        """Plain-data form for reports."""
        return {"params": self.params, "macs": self.macs, "convs": self.convs, "bytes": self.bytes}


FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def count_params(model: onnx.ModelProto) -> int:
    """Number of float parameters, wherever the weights live: initializers and `Constant` nodes
    (PaddlePaddle and some torch exports keep every weight in one); shape constants and
    integers are excluded."""
    total = sum(int(np.prod(i.dims, dtype=np.int64)) for i in model.graph.initializer if i.data_type in FLOATS)
    inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or node.output[0] in inits:
            continue
        for a in node.attribute:
            if a.name == "value" and a.type == onnx.AttributeProto.TENSOR and a.t.data_type in FLOATS:
                total += int(np.prod(a.t.dims, dtype=np.int64))
            elif a.name == "value_floats":
                total += len(a.floats)
            elif a.name == "value_float":
                total += 1
    return int(total)


def node_macs(model: onnx.ModelProto, shapes: dict) -> dict[str, int]:
    """MACs of every counted node (keyed by node name, or first output when unnamed)."""
    result = {}
    for node in model.graph.node:
        rule = rule_for(node)
        if rule is None or not rule.counts_macs:
            continue
        key = node.name or node.output[0]
        result[key] = _macs(node, shapes)
    return result


def _macs(node, shapes) -> int:
    out = shapes.get(node.output[0])
    if out is None or None in out:
        return 0
    w = shapes.get(node.input[1]) if len(node.input) > 1 else None
    return rule_for(node).macs(node, shapes.get(node.input[0]), w, out)


def stats(model: onnx.ModelProto, shapes: dict) -> ModelStats:
    """Parameters, MACs (batch 1), Conv count and serialized size of `model`."""
    size = serialized_size(model)   # above 2 GiB protobuf cannot size it: estimated from the tensors
    convs = sum(1 for n in model.graph.node if rule_or_default(n).convolves)
    return ModelStats(params=count_params(model), macs=int(sum(node_macs(model, shapes).values())),
                      convs=convs, bytes=size)


class MacModel:
    """MACs of the analysed model for any set of removed units, without rewriting it.

    Each counted node's MACs scale with the kept fraction of its output channels and, unless it
    is depthwise-like (one input channel per group), of its input channels.
    """

    def __init__(self, analysis):
        self.analysis = analysis
        index = GraphIndex(analysis.model)
        per_node = node_macs(analysis.model, analysis.shapes)
        self.terms = []
        for node in analysis.model.graph.node:
            key = node.name or node.output[0]
            if key not in per_node:
                continue
            x, y = node.input[0], node.output[0]
            depthwise = rule_or_default(node).depthwise(node, index.const)
            ins = x if x in analysis.tensors and not depthwise else None
            outs = y if y in analysis.tensors else None
            self.terms.append((per_node[key], ins, outs))
        self.total = sum(t[0] for t in self.terms)

    def macs(self, removed_units) -> int:
        """MACs (batch 1) after removing `removed_units`."""
        an = self.analysis
        removed = np.zeros(len(an.unit_blocked), dtype=bool)
        removed[np.asarray(removed_units, dtype=np.int64)] = True
        frac = {}

        def kept(name):
            if name not in frac:
                t = an.tensors[name]
                frac[name] = 1.0 - removed[an.unit_of[t.base:t.base + t.size]].mean()
            return frac[name]

        total = 0.0
        for base, ins, outs in self.terms:
            total += base * (kept(ins) if ins else 1.0) * (kept(outs) if outs else 1.0)
        return int(round(total))
