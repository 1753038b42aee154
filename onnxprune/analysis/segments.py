"""Run a network piece by piece along its node order (criteria.md §1.3, suffix sub-models).

A *cut* at position i splits the (topologically sorted) node list before node i. The tensors
*live* at a cut are the non-constant tensors produced before it (graph inputs included) and read
at or after it; graph outputs stay live to the end. The sub-model of nodes[i:j] takes the live
tensors at i as inputs and returns the live tensors at j, so a cached cut lets a probe of a late
layer skip the early ones, and a layer-by-layer repair walks the network once instead of
re-running the prefix for every layer. This is `onnx.utils.Extractor` for the special case of
contiguous node ranges, without its shape inference (which needs the whole model in one proto).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .graph import subgraph_inputs, sync_initializer_inputs

MEMORY_BUDGET = 3 << 30   # bytes of cached cut tensors a `Walker` may hold before giving up
BATCH = "__onnxprune_batch__"   # the symbolic batch dim of `batch_major`'s shape inference


class OverBudget(Exception):
    """The cached tensors of a cut would exceed the memory budget."""


def node_reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor a node reads, including outer-scope names used inside its subgraphs."""
    return {i for i in node.input if i} | subgraph_inputs(node)


def live_sets(model: onnx.ModelProto) -> list[list[str]]:
    """For every cut 0..N (N nodes), the sorted names of the tensors live there."""
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    n = len(graph.node)
    made = {i.name: -1 for i in graph.input if i.name not in constants}
    last = {}
    for pos, node in enumerate(graph.node):
        for name in node_reads(node):
            last[name] = pos
        for out in node.output:
            if out:
                made.setdefault(out, pos)
    for out in graph.output:
        last[out.name] = n
    starts = {}
    for name, pos in made.items():
        if name in last and last[name] > pos:
            starts.setdefault(pos + 1, []).append(name)
    result, current = [], set()
    for cut in range(n + 1):
        current.update(starts.get(cut, ()))
        current = {t for t in current if last[t] >= cut}
        result.append(sorted(current))
    return result


def batch_major(model: onnx.ModelProto) -> set[str]:
    """Names of the tensors whose first axis is the batch axis of the graph inputs.

    Found by shape inference (with data propagation) after giving every graph input a symbolic
    first dim. Tensors it cannot resolve are left out: callers treat them as not batch-major,
    which is the safe side.
    """
    from .graph import inferred_skeleton, real_inputs

    # every real input's first dim becomes the symbol; its other dims stay as declared
    dims = {vi.name: [BATCH] + [d.dim_value if d.HasField("dim_value") else (d.dim_param or f"{vi.name}_{k}")
                                for k, d in enumerate(vi.type.tensor_type.shape.dim) if k]
            for vi in real_inputs(model) if len(vi.type.tensor_type.shape.dim)}
    try:
        m = inferred_skeleton(model, dims)
    except Exception:
        return set()
    result = set()
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and dims[0].dim_param == BATCH:
            result.add(vi.name)
    return result


def clean_cuts(model: onnx.ModelProto) -> list[bool]:
    """For every cut 0..N, whether a sub-model may start there with its inputs batched on axis 0.

    Probes repeat and split their inputs along the first axis, which is right only for batch-major
    tensors. A cut where anything else is live (a shape computed from the input, e.g. the target of
    a later Reshape, whose *value* holds the batch size; a tensor whose shape inference failed) is
    not clean: a probe starting there would feed a stale batch size. Cut 0 (the graph inputs) is
    always clean.
    """
    batched = batch_major(model)
    return [cut == 0 or all(name in batched for name in live) for cut, live in enumerate(live_sets(model))]


def submodel(model: onnx.ModelProto, start: int, stop: int, inputs: dict[str, np.dtype],
             outputs: list[str]) -> onnx.ModelProto:
    """The sub-model of nodes[start:stop] reading `inputs` (name -> dtype) and returning `outputs`.

    Nodes whose results nothing in `outputs` needs are dropped; so are unused initializers.
    """
    graph = model.graph
    nodes = list(graph.node[start:stop])
    needed, alive = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output if o):
            alive.append(node)
            needed |= node_reads(node)
    alive.reverse()
    sub = helper.make_graph(
        [onnx.NodeProto.FromString(n.SerializeToString()) for n in alive], f"{graph.name}_{start}_{stop}",
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), None)
         for name, dtype in inputs.items() if name in needed],
        [onnx.ValueInfoProto(name=name) for name in outputs],
        [init for init in graph.initializer if init.name in needed])
    sub.sparse_initializer.extend(s for s in graph.sparse_initializer if s.values.name in needed)
    result = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    result.functions.extend(model.functions)
    sync_initializer_inputs(result)
    return result


def prefix(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """A copy of `model` that returns only `outputs`, without the nodes they do not need."""
    from .graph import remove_dead

    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.output[:]
    result.graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs)
    remove_dead(result)
    return result


class Walker:
    """Carries the live tensors of fixed batches forward through a model, cut by cut.

    Args:
        model: the network (its node order is the walk's order; weights may change between
            steps, the node structure may not).
        batches: the graph-input feeds, one dict per batch.
        budget: bytes the cached tensors may take (default `MEMORY_BUDGET`); beyond it `advance`
            raises `OverBudget`.
    """

    def __init__(self, model: onnx.ModelProto, batches: list[dict[str, np.ndarray]], budget: int | None = None):
        self.live = live_sets(model)
        self.position = 0
        self.budget = MEMORY_BUDGET if budget is None else budget
        self.rows = 0          # sample rows pushed through sub-models (for cost reports)
        self.state = [{k: v for k, v in feeds.items() if k in set(self.live[0])} for feeds in batches]
        self._check()

    def values(self, name: str) -> list[np.ndarray]:
        """The cached values of one live tensor, one array per batch."""
        return [batch[name] for batch in self.state]

    def advance(self, model: onnx.ModelProto, stop: int, extra: list[str] = ()) -> None:
        """Run nodes[position:stop] of `model` on the cached tensors; the cut moves to `stop`.

        `extra` names tensors produced in the segment to keep as well (e.g. a layer's output).
        """
        from ..runtime.sessions import session

        if stop < self.position:
            raise ValueError("a Walker only moves forward")
        if stop == self.position and not extra:
            return
        outputs = list(dict.fromkeys([*self.live[stop], *extra]))
        types = {name: value.dtype for name, value in self.state[0].items()} if self.state else {}
        sub = submodel(model, self.position, stop, types, [o for o in outputs if o not in types])
        sess = session(sub)
        names = [i.name for i in sess.get_inputs()]
        fresh = [o.name for o in sub.graph.output]
        new_state = []
        for batch in self.state:
            values = dict(zip(fresh, sess.run(fresh, {n: batch[n] for n in names}))) if fresh else {}
            new_state.append({name: values[name] if name in values else batch[name] for name in outputs})
            # the sample rows of the batch: a live shape scalar (Shape -> Gather) has none
            self.rows += max((len(v) for v in batch.values() if np.ndim(v)), default=0)
        self.state = new_state
        self.position = stop
        self._check()

    def _check(self) -> None:
        size = sum(v.nbytes for batch in self.state for v in batch.values())
        if size > self.budget:
            raise OverBudget(f"cached tensors need {size / 2**30:.1f} GiB (budget {self.budget / 2**30:.1f} GiB)")
