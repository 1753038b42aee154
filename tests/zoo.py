"""The nine model-zoo architectures that ship inside the `onnx` wheel, with real weights.

Their weights are `ConstantOfShape` placeholders; `materialise` swaps them for seeded random
initializers (He-scaled conv/gemm weights, positive BN variances) so the models compute
something non-trivial.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
NAMES = ["resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet", "squeezenet",
         "vgg19", "bvlc_alexnet", "zfnet512"]


def path(name: str) -> str:
    """File of the light model `name`."""
    return os.path.join(LIGHT_DIR, f"light_{name}.onnx")


def materialise(name: str, seed: int = 0) -> onnx.ModelProto:
    """Load light model `name` and replace its ConstantOfShape weights with seeded random values."""
    model = onnx.load(path(name))
    rng = np.random.default_rng(seed)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    role = {}
    for node in graph.node:
        for slot, inp in enumerate(node.input):
            role.setdefault(inp, (node.op_type, slot))
    keep = []
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            keep.append(node)
            continue
        shape = tuple(int(s) for s in numpy_helper.to_array(inits[node.input[0]]))
        op, slot = role.get(node.output[0], ("", -1))
        if op in ("Conv", "Gemm", "ConvTranspose", "MatMul") and slot == 1:
            fan_in = int(np.prod(shape[1:])) if op != "Gemm" else int(shape[-1])
            value = rng.normal(0, np.sqrt(2.0 / max(fan_in, 1)), shape)
        elif op == "BatchNormalization" and slot == 1:
            value = rng.uniform(0.5, 1.5, shape)
        elif op == "BatchNormalization" and slot == 4:
            value = rng.uniform(0.5, 2.0, shape)
        else:
            value = rng.normal(0, 0.1, shape)
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
        if model.ir_version < 4:
            graph.input.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, list(shape)))
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)
    if model.ir_version < 4:
        names = {i.name for i in graph.initializer}
        for vi in list(graph.input):
            if vi.name not in used and vi.name not in names:
                graph.input.remove(vi)
    return model
