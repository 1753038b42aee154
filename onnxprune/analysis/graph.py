"""Thin helpers over an ONNX graph: producers, consumers, constant weights, shapes, clean-up.

Weights reach nodes as initializers, as `Constant` nodes (PaddlePaddle exports) or through
`Identity` chains; `GraphIndex.const` resolves all three. `fold.normalise` turns `Constant` nodes into
initializers once at load so the rest of the program sees one representation.

Why raw protos and not onnx-graphsurgeon (a declared dependency) for the plumbing here
(consumer lookups, dead-node removal, ordering):
- the rewrite edits weights and attributes in place and keeps the node and initializer order
  of the input; a round trip through onnx-graphsurgeon 0.6.1 (`import_onnx`, `cleanup`,
  `toposort`, `export_onnx`) of the pruned bundled model (`models/fmnist_resnet.onnx --ratio 0.5
  --calib calib_data/fmnist_calib.npz --seed 0`) reorders both its nodes and its initializers,
  so outputs would no longer be byte-identical to earlier ones for the same seed;
- `remove_dead` deletes initializers one by one inside the model: protobuf (upb) frees nothing
  of a message before the whole message goes, so rebuilding the lists (as an export does)
  would hold a second copy of the weights of a model near the 2 GiB limit.
"""

from __future__ import annotations

import copy
import os
import weakref
from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from .. import io
from ..errors import OnnxPruneError
from .inputs import real_inputs  # noqa: F401  (re-exported: the graph queries' home)


FOLDABLE = {"Identity", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Cast", "Mul", "Add", "Sub", "Div",
            "Sqrt", "Neg", "Reciprocal", "Pow", "Concat", "ConstantOfShape", "Flatten"}
FOLD_LIMIT = 64 * 1024 * 1024  # elements
LARGE_CONST = 64 * 1024 * 1024  # bytes: GraphIndex caches larger constant values only while they are in use


def sync_initializer_inputs(model: onnx.ModelProto) -> None:
    """IR < 4 requires every initializer to be listed as a graph input; keep that list exact."""
    if model.ir_version >= 4:
        return
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    fixed, listed = [], set()
    for vi in graph.input:
        if vi.name in inits:  # refresh the declared shape: slicing changes it
            init = inits[vi.name]
            vi = helper.make_tensor_value_info(vi.name, init.data_type, list(init.dims))
        fixed.append(vi)
        listed.add(vi.name)
    for name, init in inits.items():
        if name not in listed:
            fixed.append(helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
    del graph.input[:]
    graph.input.extend(fixed)


# where an infinite constant is a bound, a threshold or a fill value, not a broken weight:
# Clip(x, 0, +inf) (torch's clamp(min=0)), Max/Min against -inf/+inf, comparisons, masked fills,
# Pad's constant value (-inf before a MaxPool)
INF_OK = {"Clip": (1, 2), "Max": None, "Min": None, "Less": None, "Greater": None, "LessOrEqual": None,
          "GreaterOrEqual": None, "Equal": None, "Where": (1, 2), "Pad": (2,), "IsInf": None, "IsNaN": None}


def _inf_is_bound(name: str, consumers, seen: int = 0) -> bool:
    """True when every reader of constant `name` (through Identity nodes) takes it where +-inf is valid."""
    for node, slot in consumers.get(name, []):
        if node.domain not in ("", "ai.onnx"):
            return False
        if node.op_type == "Identity" and seen < 64:
            if not _inf_is_bound(node.output[0], consumers, seen + 1):
                return False
            continue
        if node.op_type not in INF_OK:
            return False
        slots = INF_OK[node.op_type]
        if slots is not None and slot not in slots:
            return False
    return True


def check_finite(model: onnx.ModelProto, label: str) -> None:
    """Refuse weights with NaN, or with Inf where a weight must be finite: scores and the
    verification would be meaningless.

    An infinite value is valid where a constant is a bound or a threshold (`INF_OK`: the max of a
    Clip, a Max/Min or comparison operand, a Where's fill, Pad's constant value); a weight read
    inside a subgraph or by a custom op is held to the strict rule.
    """
    consumers = defaultdict(list)
    sub_read = set()
    for node in model.graph.node:
        for slot, inp in enumerate(node.input):
            if inp:
                consumers[inp].append((node, slot))
        sub_read.update(subgraph_inputs(node))
    for init in model.graph.initializer:
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            value = numpy_helper.to_array(init)
            if np.all(np.isfinite(value)):
                continue
            if (not np.any(np.isnan(value)) and init.name not in sub_read
                    and _inf_is_bound(init.name, consumers)):
                continue
            raise OnnxPruneError(f"{label}: weight '{init.name}' contains NaN or Inf values")


class GraphIndex:
    """Read-only index of a graph: who produces and who consumes each tensor, and constant values."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.initializers = {i.name: i for i in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for slot, inp in enumerate(node.input):
                if inp:
                    self.consumers[inp].append((node, slot))
        self.inputs = [i.name for i in real_inputs(model)]
        self.outputs = [o.name for o in graph.output]
        self._const_cache: dict[str, np.ndarray | None] = {}
        self._large_consts: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def const_source(self, name: str) -> str | None:
        """Name of the initializer behind `name` (through Identity chains), or None."""
        seen = 0
        while name not in self.initializers:
            node = self.producer.get(name)
            if node is None or node.op_type != "Identity" or seen > 64:
                return None
            name = node.input[0]
            seen += 1
        return name

    def const(self, name: str) -> np.ndarray | None:
        """The constant value of tensor `name`, or None if it is computed at run time."""
        if not name:
            return None
        if name in self._const_cache:
            return self._const_cache[name]
        value = self._large_consts.get(name)
        if value is None:
            src = self.const_source(name)
            value = None if src is None else numpy_helper.to_array(self.initializers[src])
            if value is not None and value.nbytes > LARGE_CONST:
                # kept only while in use: reading copies the bytes out of the proto, and caching
                # every weight of a 2 GB model would hold a second 2 GB for the index's lifetime
                self._large_consts[name] = value
            else:
                self._const_cache[name] = value
        return value

    def is_const(self, name: str) -> bool:
        """True when `name` is an initializer or reaches one through Identity nodes."""
        return self.const_source(name) is not None


def attr(node: onnx.NodeProto, name: str, default=None):
    """Value of attribute `name` of `node`, or `default`."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    """Set (or add) attribute `name` of `node`."""
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def fixed_input_shapes(model: onnx.ModelProto, user_shapes: dict[str, list[int]] | None = None,
                       batch: int = 1) -> dict[str, list[int]]:
    """Concrete shapes for every real input: user-given, else static dims with a dynamic batch set to `batch`.

    Raises:
        OnnxPruneError: an input has dynamic non-batch dims and no --input-shape was given, or a
            user shape names an unknown input or has the wrong rank.
    """
    user_shapes = dict(user_shapes or {})
    shapes = {}
    inputs = real_inputs(model)
    names = {i.name for i in inputs}
    for name in user_shapes:
        if name not in names:
            raise OnnxPruneError(f"--input-shape names '{name}', but the model's inputs are: {', '.join(sorted(names))}")
    for vi in inputs:
        dims = vi.type.tensor_type.shape.dim
        if vi.name in user_shapes:
            shape = list(user_shapes[vi.name])
            if vi.type.tensor_type.HasField("shape") and len(shape) != len(dims):
                raise OnnxPruneError(f"--input-shape {vi.name}: rank {len(shape)} given, the model expects rank {len(dims)}")
            for d, s in zip(dims, shape):
                if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != s:
                    raise OnnxPruneError(
                        f"--input-shape {vi.name}:{','.join(map(str, shape))} conflicts with the model's static shape "
                        f"{[x.dim_value if x.HasField('dim_value') and x.dim_value > 0 else (x.dim_param or '?') for x in dims]}")
            shapes[vi.name] = shape
            continue
        shape = []
        dynamic = []
        for axis, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            elif axis == 0:
                shape.append(batch)
            else:
                dynamic.append(d.dim_param or "?")
                shape.append(None)
        if dynamic:
            raise OnnxPruneError(
                f"input '{vi.name}' has dynamic dims {dynamic}: give concrete sizes with --input-shape "
                f"{vi.name}:{','.join('1' if s is None and i == 0 else ('N' if s is None else str(s)) for i, s in enumerate(shape))}"
            )
        shapes[vi.name] = shape
    return shapes


def infer_shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> dict[str, list[int | None]]:
    """Shapes of every tensor, inferred with the inputs fixed to `input_shapes` (the model is not changed).

    Uses onnx shape inference with data propagation; tensors it cannot resolve are filled in by
    one onnxruntime run on zeros when possible.
    """
    m = inferred_skeleton(model, input_shapes)
    shapes: dict[str, list[int | None]] = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in m.graph.initializer:
        shapes[init.name] = list(init.dims)
    read = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
    missing = [o for n in m.graph.node for o in n.output
               if o in read and (o not in shapes or None in shapes[o])]
    if missing:
        shapes.update(_shapes_from_run(model, input_shapes, missing))
    return shapes


def inferred_skeleton(model: onnx.ModelProto, input_shapes: dict[str, list[int | str]]) -> onnx.ModelProto:
    """`skeleton(model)` with the inputs in `input_shapes` given those dims (an int is a size, a
    str a symbolic dim), after shape inference with data propagation (without, if that fails)."""
    m = skeleton(model)
    for vi in m.graph.input:
        if vi.name in input_shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for s in input_shapes[vi.name]:
                if isinstance(s, str):
                    dims.add().dim_param = s
                else:
                    dims.add().dim_value = int(s)
    for vi in m.graph.output:
        vi.type.tensor_type.ClearField("shape")
    try:
        return run_shape_inference(m, data_prop=True)
    except Exception:
        return run_shape_inference(m, data_prop=False)


def batch_axes(model: onnx.ModelProto, input_shapes: dict[str, list] | None = None) -> dict[str, int]:
    """The axis that carries the batch, for every tensor whose shapes inference resolves.

    Graph inputs carry it on axis 0 (the program's convention); inside and at the outputs it
    may move (a recogniser's time-major ``[T, N, K]``: axis 1). Found by inferring the shapes
    with the inputs' axis 0 set to 2 and to 3: the one axis that grows in proportion is the
    batch axis; tensors without one (shape vectors, weights) are left out.
    `input_shapes`: shapes of the real inputs (default: as declared; dynamic dims stay symbolic).
    """
    if input_shapes is None:
        input_shapes = {vi.name: [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                                  for d in vi.type.tensor_type.shape.dim] for vi in real_inputs(model)}
    if not input_shapes or any(not s for s in input_shapes.values()):
        return {}

    def shapes(batch):
        m = inferred_skeleton(model, {k: [batch] + list(v[1:]) for k, v in input_shapes.items()})
        result = {}
        for vi in list(m.graph.value_info) + list(m.graph.output):
            t = vi.type.tensor_type
            if t.HasField("shape"):
                result[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        return result

    try:
        two, three = shapes(2), shapes(3)
    except Exception:   # noqa: BLE001 - without shapes every tensor keeps the batch on axis 0
        return {}
    axes = {name: 0 for name in input_shapes}
    for name, a in two.items():
        b = three.get(name)
        if b is None or len(a) != len(b):
            continue
        moved = [k for k, (x, y) in enumerate(zip(a, b)) if x != y]
        if len(moved) == 1 and a[moved[0]] and b[moved[0]] and a[moved[0]] * 3 == b[moved[0]] * 2:
            axes[name] = moved[0]
    return axes


def output_batch_axes(model: onnx.ModelProto, input_shapes: dict[str, list] | None = None) -> list[int]:
    """The batch axis of every graph output (`batch_axes`; 0 where it cannot be told)."""
    axes = batch_axes(model, input_shapes)
    return [axes.get(o.name, 0) for o in model.graph.output]


def run_shape_inference(model: onnx.ModelProto, data_prop: bool = False) -> onnx.ModelProto:
    """`onnx.shape_inference.infer_shapes`, through files when `model` is above `io.PROTOBUF_LIMIT`.

    Protobuf cannot serialize a proto above 2 GiB, so a large model is written to a temporary
    folder with external data and inferred with `infer_shapes_path`; the model returned then
    holds no tensor data (initializers keep names, dims and dtypes). Call it on `skeleton(model)`
    where possible: the skeleton leaves large weights out and rarely needs the file route.
    """
    if not io.too_big(model):
        return shape_inference.infer_shapes(model, data_prop=data_prop)
    with io.TemporaryModelFile(model) as tmp:
        inferred = os.path.join(tmp.folder, "inferred.onnx")
        shape_inference.infer_shapes_path(tmp.path, inferred, data_prop=data_prop)
        return onnx.load(inferred, load_external_data=False)


def copy_without_large(model: onnx.ModelProto, limit: int | None = None):
    """A copy of `model` without its initializers above `limit` bytes, and those (not copied).

    For rewriting: a 2 GB model's weights are mostly replaced by sliced copies, so copying them
    first would hold them twice (protobuf (upb) frees nothing deleted from a message before the
    whole message goes). `restore_large` then copies back only those still read.
    Returns `(copy, {name: initializer of model})`; `limit` defaults to `LARGE_CONST` (read now).
    """
    limit = LARGE_CONST if limit is None else limit
    large = {i.name: i for i in model.graph.initializer
             if i.data_location != onnx.TensorProto.EXTERNAL and io.tensor_nbytes(i) > limit}
    if not large:
        return copy.deepcopy(model), {}
    m = onnx.ModelProto()
    io.copy_fields(m, model, skip=("graph",))
    io.copy_fields(m.graph, model.graph, skip=("initializer",))
    m.graph.initializer.extend(i for i in model.graph.initializer if i.name not in large)
    return m, large


def restore_large(model: onnx.ModelProto, large: dict[str, onnx.TensorProto]) -> None:
    """Append (copies of) the initializers of `large` that `model` still reads and does not define.

    The others are gone for good: under IR < 4, where initializers are also listed as graph
    inputs, their input entries go too (as `remove_dead` does for the initializers it drops).
    """
    read = {o.name for o in model.graph.output}
    for node in model.graph.node:
        read.update(i for i in node.input if i)
        read.update(subgraph_inputs(node))
    present = {i.name for i in model.graph.initializer}
    dropped = set()
    for name, init in large.items():
        if name in read and name not in present:
            model.graph.initializer.append(init)
        elif name not in present:
            dropped.add(name)
    if dropped and model.ir_version < 4:
        for k in reversed(range(len(model.graph.input))):
            if model.graph.input[k].name in dropped:
                del model.graph.input[k]


def skeleton(model: onnx.ModelProto, small: int = 4096) -> onnx.ModelProto:
    """A light copy for shape inference: large initializers become typed graph inputs (no data copied)."""
    m = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "domain", "model_version"):
        setattr(m, field, getattr(model, field))
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    g = m.graph
    src = model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.output.extend(src.output)
    inits = {i.name for i in src.initializer}
    g.input.extend(i for i in src.input if i.name not in inits)
    m.ir_version = max(model.ir_version, 4)
    for init in src.initializer:
        if int(np.prod(init.dims, dtype=np.int64)) <= small:
            g.initializer.append(init)
        else:
            g.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return m


def _shapes_from_run(model: onnx.ModelProto, input_shapes, names) -> dict[str, list[int]]:
    """Fill shapes that inference could not resolve by running the model once on zeros."""
    from ..runtime.sessions import session   # every session goes through one factory (large models too)

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    existing = {o.name for o in m.graph.output}
    for name in names:
        if name not in existing:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    try:
        sess = session(m)
        feeds = {}
        for inp in sess.get_inputs():
            if inp.name not in input_shapes:
                return {}
            feeds[inp.name] = np.zeros(input_shapes[inp.name], dtype=ort_dtype(inp.type))
        outs = sess.run(names, feeds)
    except Exception:
        return {}
    return {n: list(o.shape) for n, o in zip(names, outs) if hasattr(o, "shape")}


def ort_dtype(type_str: str) -> np.dtype:
    """numpy dtype for an onnxruntime type string such as 'tensor(float)'."""
    table = {
        "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
        "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
        "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_, "tensor(int16)": np.int16,
    }
    return np.dtype(table.get(type_str, np.float32))


def remove_dead(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nobody reads and initializers no node reads (in place)."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    alive = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o) or _has_subgraph(node):
            alive.append(node)
            needed.update(i for i in node.input if i)
            needed.update(subgraph_inputs(node))
    alive.reverse()
    if len(alive) != len(graph.node):
        del graph.node[:]
        graph.node.extend(alive)
    removed = {i.name for i in graph.initializer if i.name not in needed}
    if removed:
        # deleted one by one: clearing and re-adding the kept ones would copy them, and protobuf
        # (upb) frees nothing of a message before the whole message goes (2 GB more for 2 GB)
        for k in reversed(range(len(graph.initializer))):
            if graph.initializer[k].name in removed:
                del graph.initializer[k]
        if model.ir_version < 4:
            inputs = [i for i in graph.input if i.name not in removed]
            del graph.input[:]
            graph.input.extend(inputs)
    sync_initializer_inputs(model)


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    names = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            for n in g.node:
                names.update(n.input)
    return names


def unique_name(existing: set[str], base: str) -> str:
    """A tensor name not in `existing` (which is updated), derived from `base`."""
    name = base
    k = 1
    while name in existing:
        name = f"{base}_{k}"
        k += 1
    existing.add(name)
    return name
