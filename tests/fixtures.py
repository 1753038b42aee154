"""Small builders for the topology tests: one tiny model per channel-coupling pattern.

`B` collects nodes and seeded initializers; each method appends one node (named after its output)
and returns the output name, so a fixture reads like the graph it builds.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from helpers import bn_params, conv_weights, make_model, tensor


class B:
    """Graph builder with seeded weights."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}

    # ---- constants -------------------------------------------------------------------------
    def const(self, name: str, value) -> str:
        self.inits[name] = np.asarray(value)
        return name

    def i64(self, name: str, values) -> str:
        return self.const(name, np.asarray(values, dtype=np.int64))

    def f32(self, name: str, values) -> str:
        return self.const(name, np.asarray(values, dtype=np.float32))

    # ---- nodes -----------------------------------------------------------------------------
    def op(self, op_type: str, inputs, out: str, n_out: int = 1, domain: str | None = None, **attrs):
        outs = [out] if n_out == 1 else [f"{out}_{i}" for i in range(n_out)]
        kw = dict(attrs)
        if domain is not None:
            kw["domain"] = domain
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=out, **kw))
        return out if n_out == 1 else outs

    def conv(self, x: str, c_in: int, c_out: int, name: str, k: int = 3, group: int = 1, stride: int = 1,
             dilation: int = 1, bias: bool = True, weight: str | None = None) -> str:
        w = weight or self.const(f"{name}_w", conv_weights(self.rng, c_out, c_in, k, group))
        ins = [x, w]
        if bias:
            ins.append(self.f32(f"{name}_b", self.rng.normal(0, 0.1, c_out)))
        p = (k // 2) * dilation
        attrs = dict(kernel_shape=[k, k], pads=[p, p, p, p], strides=[stride, stride])
        if dilation != 1:
            attrs["dilations"] = [dilation, dilation]
        if group != 1:
            attrs["group"] = group
        return self.op("Conv", ins, name, **attrs)

    def conv_t(self, x: str, c_in: int, c_out: int, name: str, group: int = 1, stride: int = 2) -> str:
        """ConvTranspose k=3 that multiplies the spatial size by `stride`; weight [C_in, C_out/group, 3, 3]."""
        w = (self.rng.standard_normal((c_in, c_out // group, 3, 3)) * np.sqrt(2.0 / (c_in // group * 9)))
        ins = [x, self.f32(f"{name}_w", w), self.f32(f"{name}_b", self.rng.normal(0, 0.1, c_out))]
        return self.op("ConvTranspose", ins, name, kernel_shape=[3, 3], strides=[stride, stride],
                       pads=[1, 1, 1, 1], output_padding=[stride - 1, stride - 1], group=group)

    def bn(self, x: str, c: int, name: str) -> str:
        p = bn_params(self.rng, c, name)
        for k, v in p.items():
            self.const(k, v)
        return self.op("BatchNormalization", [x, *p.keys()], name)

    def relu(self, x: str, name: str) -> str:
        return self.op("Relu", [x], name)

    def gemm(self, x: str, k: int, n: int, name: str, trans_b: int = 0) -> str:
        b = self.rng.standard_normal((n, k) if trans_b else (k, n)) / np.sqrt(k)
        return self.op("Gemm", [x, self.f32(f"{name}_B", b), self.f32(f"{name}_C", self.rng.normal(0, 0.1, n))],
                       name, transB=trans_b)

    def matmul(self, x: str, k: int, n: int, name: str) -> str:
        return self.op("MatMul", [x, self.f32(f"{name}_B", self.rng.standard_normal((k, n)) / np.sqrt(k))], name)

    # ---- model -----------------------------------------------------------------------------
    def model(self, inputs: dict, outputs, opset: int = 13, ir_version: int = 8, domains=(),
              out_shapes=None) -> onnx.ModelProto:
        """`inputs` maps name -> shape; `outputs` lists output names (shapes inferred unless `out_shapes`)."""
        ins = [tensor(n, s) for n, s in inputs.items()]
        if out_shapes is not None:
            m = make_model(self.nodes, ins, [tensor(o, s) for o, s in zip(outputs, out_shapes)], self.inits,
                           opset=opset, ir_version=ir_version)
            m.opset_import.extend(helper.make_opsetid(d, 1) for d in domains)
            return m
        outs = [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs]
        m = make_model(self.nodes, ins, outs, self.inits, opset=opset, ir_version=ir_version)
        m.opset_import.extend(helper.make_opsetid(d, 1) for d in domains)
        if self.nodes and ins:  # give the outputs their inferred shapes (the checker wants one)
            inferred = onnx.shape_inference.infer_shapes(m)
            del m.graph.output[:]
            m.graph.output.extend(inferred.graph.output)
        return m


X = {"x": [1, 3, 16, 16]}


def const_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn every initializer into a `Constant` node at the front of the graph (PaddlePaddle style)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    consts = [helper.make_node("Constant", [], [i.name], name=f"const_{i.name}", value=i) for i in m.graph.initializer]
    nodes = consts + list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.initializer[:]
    return m


def init(model: onnx.ModelProto, name: str) -> np.ndarray:
    """Value of initializer `name`."""
    for i in model.graph.initializer:
        if i.name == name:
            return numpy_helper.to_array(i)
    raise KeyError(name)


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    """Node called `name`."""
    for n in model.graph.node:
        if n.name == name:
            return n
    raise KeyError(name)


def weight(model: onnx.ModelProto, node_name: str, slot: int = 1) -> np.ndarray:
    """Constant at input `slot` of node `node_name` (an initializer in the pruned model)."""
    return init(model, node(model, node_name).input[slot])
