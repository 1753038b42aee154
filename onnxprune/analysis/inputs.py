"""The real inputs of a graph: the one graph query that sessions need (kept apart so that
`runtime.sessions` does not import the whole graph module, which itself runs sessions)."""

from __future__ import annotations

import onnx


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are fed at run time (IR 3 files also list initializers as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]
