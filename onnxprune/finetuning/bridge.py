"""ONNX <-> PyTorch through onnx2torch, with the trained weights written back into the ONNX graph.

The graph onnxprune wrote stays as it is: only the values of its weights change. To get there:

1. `torch_ready` makes a copy that onnx2torch converts: `Constant` nodes become initializers,
   `Identity` of a constant is bypassed, an initializer read by several node inputs gets one copy
   per extra use (onnx2torch 1.5 raises `KeyError` on shared initializers), a 2-D Gemm bias of
   shape [1, N] becomes [N] (else onnx2torch keeps Gemm as a matmul with constant buffers), and
   nodes get the names `n0, n1, ...` so each converted module names its node. `origin` records,
   for every initializer of the copy, the tensor of the original graph it came from.
2. `Bridge.params` lists the trainable tensors: Conv/ConvTranspose weights and biases (onnx2torch:
   `nn.ConvNd`), Gemm weights and biases (`nn.Linear`; weight = alpha * B, transposed unless
   transB; bias = beta * C) and BatchNormalization scale and shift (`nn.BatchNormNd`, with the
   running statistics when they are updated). A tensor with more than one use in the graph is
   left frozen: trained twice it would have to be written back as two different values.
3. `Bridge.write_back` inverts each mapping and sets the original initializer (or Constant
   node) in a copy of the model; `check_agreement` then requires the written ONNX, run in
   onnxruntime, to reproduce the torch module's outputs (relative error <= 1e-4 per output, or
   ten times the conversion's own rounding where an output magnifies it: `agreement_tolerance`;
   PaddleOCR's detector ends in a Sigmoid of logits near -15, where torch and onnxruntime differ
   by a relative 0.017 on random inputs before any training).

torch and onnx2torch are imported inside functions: the core install does not have them.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import OnnxPruneError
from ..analysis.graph import attr, real_inputs
from ..analysis.ops import is_batchnorm

EXTRA_HINT = "pip install 'onnxprune[finetune]' (or pip install -e '.[finetune]' in a clone)"
AGREEMENT_RTOL = 1e-4     # the written ONNX must reproduce the torch module's outputs this closely ...
MAX_CONVERSION_ERROR = 0.05   # ... unless the conversion itself rounds more (agreement_tolerance), up to this


def require_torch(what: str = "--finetune") -> None:
    """Fail at once, in one line naming the extra, when torch or onnx2torch is not installed."""
    missing = [m for m in ("torch", "onnx2torch") if importlib.util.find_spec(m) is None]
    if missing:
        raise OnnxPruneError(f"{what} needs {' and '.join(missing)}: {EXTRA_HINT}")


def _import_onnx2torch():
    """onnx2torch, importable without torchvision: it imports torchvision only for its NMS and
    RoiAlign converters, and a torch build without a matching torchvision (a CPU-only wheel) is
    common. Without torchvision a stand-in module is registered whose use raises, so those two
    ops fail to convert with a clear message while every other op converts."""
    if importlib.util.find_spec("torchvision") is None and "torchvision" not in sys.modules:
        stub = types.ModuleType("torchvision")
        stub.ops = types.ModuleType("torchvision.ops")

        def missing(*_args, **_kwargs):
            raise OnnxPruneError("this model's NMS/RoiAlign needs torchvision to be fine-tuned: pip install torchvision")

        stub.ops.roi_align = stub.ops.nms = stub.ops.box_convert = missing
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = stub, stub.ops
    import onnx2torch
    return onnx2torch


@dataclass(frozen=True)
class Origin:
    """Where an initializer of the torch-ready copy lives in the original graph: an initializer
    (`kind` "initializer") or the `value` of a Constant node (`kind` "constant"), by tensor name,
    with the shape it has there (a reshaped Gemm bias)."""

    kind: str
    name: str
    shape: tuple[int, ...]


def torch_ready(model: onnx.ModelProto, input_shapes: dict | None = None
                ) -> tuple[onnx.ModelProto, dict[str, Origin], dict[str, int]]:
    """A copy of `model` that onnx2torch converts (see module docstring). `input_shapes` fix
    dynamic dims other than the batch, for the shape inference that gives every
    BatchNormalization input its rank (onnx2torch picks BatchNorm1d/2d/3d by it).

    Returns the copy, {copy initializer name: Origin} and {original tensor name: number of uses}.
    """
    ready = onnx.ModelProto()
    ready.CopyFrom(model)
    g = ready.graph
    origin = {i.name: Origin("initializer", i.name, tuple(i.dims)) for i in g.initializer}
    # Constant nodes -> initializers
    for node in [n for n in g.node if n.op_type == "Constant"]:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if value is None:
            continue    # value_float(s)/value_int(s): shape constants, left to onnx2torch
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value.t)
        tensor.name = node.output[0]
        g.initializer.append(tensor)
        origin[tensor.name] = Origin("constant", tensor.name, tuple(tensor.dims))
        g.node.remove(node)
    # Identity of a constant: consumers read the constant itself
    outputs = {o.name for o in g.output}
    for node in [n for n in g.node if n.op_type == "Identity" and n.input[0] in origin and n.output[0] not in outputs]:
        for other in g.node:
            for k, name in enumerate(other.input):
                if name == node.output[0]:
                    other.input[k] = node.input[0]
        g.node.remove(node)
    # one initializer per use
    by_name = {i.name: i for i in g.initializer}
    uses: dict[str, int] = {}
    for node in g.node:
        for k, name in enumerate(node.input):
            if name not in by_name:
                continue
            uses[origin[name].name] = uses.get(origin[name].name, 0) + 1
            if uses[origin[name].name] > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(by_name[name])
                copy.name = f"{name}__use{uses[origin[name].name]}"
                g.initializer.append(copy)
                origin[copy.name] = origin[name]
                node.input[k] = copy.name
    # a [1, N] Gemm bias as [N]
    by_name = {i.name: i for i in g.initializer}
    for node in g.node:
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] in by_name:
            bias = by_name[node.input[2]]
            if len(bias.dims) == 2 and bias.dims[0] == 1:
                bias.dims[:] = [bias.dims[1]]
    graph_inputs = {i.name for i in g.input}
    kept_inputs = [i for i in g.input if i.name not in by_name]
    if len(kept_inputs) != len(graph_inputs):
        del g.input[:]
        g.input.extend(kept_inputs)
    for i, node in enumerate(g.node):
        node.name = f"n{i}"
    _add_bn_ranks(ready, input_shapes)
    return ready, origin, uses


def _add_bn_ranks(model: onnx.ModelProto, input_shapes: dict | None) -> None:
    """value_info with the rank (dims unknown) of every BatchNormalization input that onnx shape
    inference leaves without one (a PaddleOCR recogniser: BN after a run-time Reshape)."""
    from ..analysis.graph import fixed_input_shapes, infer_shapes

    inputs = [n.input[0] for n in model.graph.node if is_batchnorm(n)]
    if not inputs:
        return
    try:
        known = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - then every rank comes from the run below
        known = model.graph
    ranked = {vi.name for vi in list(known.value_info) + list(known.input) + list(known.output)
              if vi.type.tensor_type.HasField("shape")}
    missing = [name for name in inputs if name not in ranked]
    if not missing:
        return
    try:
        shapes = infer_shapes(model, fixed_input_shapes(model, input_shapes))
    except Exception:  # noqa: BLE001 - onnx2torch then names the BN it cannot convert
        return
    for name in missing:
        if shapes.get(name):
            model.graph.value_info.append(onnx.helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, [None] * len(shapes[name])))


def convert(model: onnx.ModelProto, label: str = "model"):
    """onnx2torch's GraphModule of a torch-ready copy; an op it cannot convert is named in one line."""
    onnx2torch = _import_onnx2torch()
    try:
        return onnx2torch.convert(model)
    except NotImplementedError as exc:
        text = str(exc)
        op = re.search(r"operation_type='([^']+)'", text)
        version = re.search(r"version=(\d+)", text)
        what = (f"op {op.group(1)}" + (f" (version {version.group(1)})" if version else "")) if op else text
        raise OnnxPruneError(f"{label}: cannot be fine-tuned: onnx2torch cannot convert {what}") from None
    except OnnxPruneError:
        raise
    except Exception as exc:
        raise OnnxPruneError(f"{label}: cannot be fine-tuned: onnx2torch failed "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


@dataclass
class Param:
    """One trainable torch tensor and the ONNX tensor it is written back to.

    `transform`: "as_is", "linear_weight" (alpha * B, transposed unless transB) or "gemm_bias"
    (beta * C)."""

    torch_name: str
    origin: Origin
    transform: str = "as_is"
    alpha: float = 1.0
    trans_b: bool = True


class Bridge:
    """A model converted to torch, with the mapping of its trainable tensors back to ONNX."""

    def __init__(self, model: onnx.ModelProto, label: str = "model", train_bn_stats: bool = False,
                 input_shapes: dict | None = None):
        """Convert `model` (not modified). `train_bn_stats`: the BN running statistics are written
        back too (when they are updated in training mode); `input_shapes`: see `torch_ready`."""
        self.model = model
        self.ready, self.origin, self.uses = torch_ready(model, input_shapes)
        self.module = convert(self.ready, label)
        self.input_names = [i.name for i in real_inputs(self.ready)]
        self.output_names = [o.name for o in self.ready.graph.output]
        self.params, self.frozen = self._map(train_bn_stats)
        modules = dict(self.module.named_modules())
        # tensor name -> the module whose single output it is (for `capture`)
        self._producer = {n.output[0]: f"n{i}" for i, n in enumerate(self.ready.graph.node)
                          if len(n.output) == 1 and f"n{i}" in modules}

    def _map(self, train_bn_stats: bool) -> tuple[list[Param], list[str]]:
        import torch

        modules = dict(self.module.named_modules())
        params, frozen = [], []

        def add(torch_name, onnx_name, **kw):
            o = self.origin.get(onnx_name)
            if o is None:
                return
            if self.uses.get(o.name, 0) > 1:
                frozen.append(o.name)
                return
            params.append(Param(torch_name, o, **kw))

        for i, node in enumerate(self.ready.graph.node):
            mod = modules.get(f"n{i}")
            if isinstance(mod, torch.nn.Sequential):      # an input Pad before the conv (asymmetric pads)
                inner = [k for k, m in mod.named_children() if isinstance(m, torch.nn.modules.conv._ConvNd)]
                prefix, mod = (f"n{i}.{inner[0]}", mod.get_submodule(inner[0])) if inner else (f"n{i}", mod)
            else:
                prefix = f"n{i}"
            if isinstance(mod, torch.nn.modules.conv._ConvNd):
                add(f"{prefix}.weight", node.input[1])
                if mod.bias is not None:
                    add(f"{prefix}.bias", node.input[2])
            elif isinstance(mod, torch.nn.Linear) and node.op_type == "Gemm":
                add(f"{prefix}.weight", node.input[1], transform="linear_weight", alpha=float(attr(node, "alpha", 1.0)),
                    trans_b=bool(attr(node, "transB", 0)))
                if mod.bias is not None:
                    add(f"{prefix}.bias", node.input[2], transform="gemm_bias", alpha=float(attr(node, "beta", 1.0)))
            elif isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                add(f"{prefix}.weight", node.input[1])
                add(f"{prefix}.bias", node.input[2])
                if train_bn_stats:
                    add(f"{prefix}.running_mean", node.input[3])
                    add(f"{prefix}.running_var", node.input[4])
        named = dict(self.module.named_parameters())
        trainable = {p.torch_name for p in params}
        for name, tensor in named.items():
            tensor.requires_grad_(name in trainable)
        return params, sorted(set(frozen))

    def trainable(self) -> list:
        """The torch parameters that training updates."""
        named = dict(self.module.named_parameters())
        return [named[p.torch_name] for p in self.params if p.torch_name in named]

    def forward(self, feeds: dict):
        """The module's outputs as a list, one per graph output (`feeds`: input name -> tensor)."""
        out = self.module(*[feeds[name] for name in self.input_names])
        out = list(out) if isinstance(out, (tuple, list)) else [out]
        if len(out) != len(self.output_names):
            raise OnnxPruneError(f"the converted model gives {len(out)} outputs for the graph's {len(self.output_names)}")
        return out

    def produces(self, tensor: str) -> bool:
        """Whether a converted module's single output is `tensor` (so `capture` can record it)."""
        return tensor in self._producer

    def capture(self, tensors) -> dict:
        """A dict that every forward pass fills with the values of `tensors` (forward hooks)."""
        captured = {}
        modules = dict(self.module.named_modules())
        for name in tensors:
            def hook(_module, _args, output, name=name):
                captured[name] = output
            modules[self._producer[name]].register_forward_hook(hook)
        return captured

    def write_back(self) -> onnx.ModelProto:
        """A copy of the original model with every trainable tensor set from the module."""
        state = self.module.state_dict()
        values = {}
        for p in self.params:
            v = state[p.torch_name].detach().cpu().double().numpy()
            if p.transform == "linear_weight":
                v = v / p.alpha
                if not p.trans_b:
                    v = v.T
            elif p.transform == "gemm_bias":
                v = v / p.alpha
            values[p.origin.name] = (p.origin, v.reshape(p.origin.shape))
        result = onnx.ModelProto()
        result.CopyFrom(self.model)
        inits = {i.name: i for i in result.graph.initializer}
        constants = {n.output[0]: n for n in result.graph.node if n.op_type == "Constant"}
        for name, (o, value) in values.items():
            target = inits[name] if o.kind == "initializer" else next(a.t for a in constants[name].attribute
                                                                      if a.name == "value")
            dtype = onnx.helper.tensor_dtype_to_np_dtype(target.data_type)
            new = numpy_helper.from_array(value.astype(dtype), target.name)
            target.CopyFrom(new)
        return result


def relative_errors(ref: list[np.ndarray], out: list[np.ndarray]) -> list[float]:
    """||out - ref|| / ||ref|| per output (an all-zero reference: the absolute norm)."""
    errors = []
    for r, o in zip(ref, out):
        r64, o64 = np.asarray(r, np.float64), np.asarray(o, np.float64)
        denom = np.linalg.norm(r64) or 1.0
        errors.append(float(np.linalg.norm(o64 - r64) / denom) if r64.shape == o64.shape else float("inf"))
    return errors


def check_agreement(bridge: Bridge, model: onnx.ModelProto, feeds: dict[str, np.ndarray], what: str,
                    tolerance: float = AGREEMENT_RTOL) -> float:
    """Largest relative error between `model` in onnxruntime and `bridge.module` on `feeds`;
    an error above `tolerance` is an OnnxPruneError (the model is not accepted)."""
    import torch

    from ..runtime.sessions import session

    sess = session(model)
    ort_out = sess.run(None, feeds)
    bridge.module.eval()
    device = next(iter(bridge.module.parameters()), torch.zeros(0)).device
    with torch.no_grad():
        torch_out = [t.cpu().numpy() for t in
                     bridge.forward({k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in feeds.items()})]
    worst = max(relative_errors(ort_out, torch_out), default=0.0)
    if not worst <= tolerance:
        raise OnnxPruneError(f"{what}: the ONNX model and its torch conversion disagree (relative error "
                             f"{worst:.2g} > {tolerance:.2g}); not fine-tuned")
    return worst


def agreement_tolerance(bridge: Bridge, model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
    """(tolerance, conversion error): the write-back check's tolerance for a model whose own
    conversion already differs from onnxruntime by `conversion error` on `feeds` (float rounding
    of two implementations, which an output such as the Sigmoid of large logits magnifies):
    AGREEMENT_RTOL, or ten times that rounding where it is larger. A conversion error above
    MAX_CONVERSION_ERROR is not rounding: an OnnxPruneError."""
    error = check_agreement(bridge, model, feeds, "the converted model", tolerance=MAX_CONVERSION_ERROR)
    return max(AGREEMENT_RTOL, 10 * error), error
