"""Channel-dependency analysis: which tensor channels must be removed together.

Every channel of every channel-carrying tensor is an *element*. Rules from ``ops.RULES`` tie
elements that must go together (``in = out`` through activations, offsets through Concat/Split,
whole groups through grouped convs, features through Flatten). The connected components of
these ties are *units*: removing a unit removes each of its elements, and nothing else.

A unit is prunable when it contains at least one *source* element (an output channel of a
Conv/ConvTranspose/Gemm/MatMul with constant weights, which a criterion can score) and no
*blocked* element (a tensor that reaches a graph output, is read by an unknown op, ...).
Units that share a source tensor form a *group*: the unit a ratio is applied to and scores are
ranked within (one group per layer, or one per residual stream).

Some ops compute statistics over the channel axis (LayerNorm over channels, a mean or max over
channels, a Conv1d across neighbouring channels): removing channels changes their result, so
pruning through them is not exact. With ``approximate=True`` their channels stay prunable and
the group records why (``Group.approximate``: the pipeline then measures the fidelity of the
rewrite against the masked original); without it they block, naming the option.

``analyse`` is a pure function of the graph and its shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .graph import GraphIndex
from ..io import default_opset
from .ops import rule_for


@dataclass(frozen=True)
class ChannelTensor:
    """A tensor that carries channels: `size` channels on `axis`, elements `base .. base+size-1`.

    `split` = (outer, inner) marks a tensor whose channels were reshaped into two axes
    (`axis`, `axis+1`), as in a channel shuffle; channel `a*inner + b` sits at (a, b).
    """

    name: str
    axis: int
    size: int
    base: int
    split: tuple[int, int] | None = None


@dataclass(frozen=True)
class Group:
    """Channels pruned together: `size` units; `blocked` of them cannot be removed (`reasons`)."""

    id: int
    name: str
    sources: tuple[str, ...]
    tensors: tuple[str, ...]
    size: int
    blocked: int
    reasons: tuple[str, ...]
    approximate: tuple[str, ...] = ()    # why removing units of this group is not exact (with approximations on)

    @property
    def prunable(self) -> bool:
        """True when at least one unit of the group may be removed."""
        return self.blocked < self.size

    def to_dict(self) -> dict:
        """Plain-data form for reports."""
        return {"id": self.id, "name": self.name, "sources": list(self.sources), "size": self.size,
                "blocked": self.blocked, "prunable": self.prunable, "reasons": list(self.reasons),
                **({"approximate": list(self.approximate)} if self.approximate else {})}


@dataclass
class Analysis:
    """Result of `analyse`: channel tensors, units, groups, and the graph they came from."""

    model: onnx.ModelProto
    shapes: dict
    tensors: dict[str, ChannelTensor]
    unit_of: np.ndarray                  # element -> unit
    unit_blocked: np.ndarray             # unit -> bool
    groups: list[Group]
    group_units: list[np.ndarray]        # group id -> its units, canonical order
    source_nodes: dict[str, onnx.NodeProto] = field(default_factory=dict)  # source tensor -> node
    opset: int = 0

    def positions(self, group_id: int, tensor: str) -> np.ndarray:
        """For each channel of `tensor`, its unit's position in the group's order (-1 if elsewhere)."""
        t = self.tensors[tensor]
        units = self.unit_of[t.base:t.base + t.size]
        order = self.group_units[group_id]
        lookup = np.full(len(self.unit_blocked), -1, dtype=np.int64)
        lookup[order] = np.arange(len(order))
        return lookup[units]

    def read_tensors(self) -> dict[str, int]:
        """Channel tensors of prunable groups that a Conv/ConvTranspose/Gemm/MatMul reads as data.

        These are what consumers see (after BN and activation): activation criteria and
        recovery measure them. Returns tensor name -> channel axis.
        """
        index = GraphIndex(self.model)
        prunable = {t for g in self.groups if g.prunable for t in g.tensors}
        result = {}
        for name in sorted(prunable, key=lambda n: self.tensors[n].base):   # not set order: runs must repeat
            t = self.tensors[name]
            if t.split:
                continue
            # read by a weighted op as its input channels (not ECA's Conv1d sliding along them)
            if any(slot == 0 and getattr(rule_for(n), "counts_macs", False)
                   and not (getattr(rule_for(n), "convolves", False) and t.axis != 1)
                   for n, slot in index.consumers.get(name, [])):
                result[name] = t.axis
        return result

    def group_tensors(self, group_id: int) -> list[str]:
        """Tensors with at least one channel in the group."""
        return list(self.groups[group_id].tensors)

    def kept_channels(self, removed_units: np.ndarray) -> dict[str, np.ndarray]:
        """Kept channel indices of every tensor that loses channels when `removed_units` go."""
        removed = np.zeros(len(self.unit_blocked), dtype=bool)
        removed[removed_units] = True
        kept = {}
        for name, t in self.tensors.items():
            gone = removed[self.unit_of[t.base:t.base + t.size]]
            if gone.any():
                kept[name] = np.flatnonzero(~gone)
        return kept


class _Builder:
    """The context rules see while analysing (`an` in ops.py)."""

    def __init__(self, model: onnx.ModelProto, shapes: dict, approximate: bool = False):
        self.index = GraphIndex(model)
        self.approximations_on = approximate
        self.approximated: dict[str, list[str]] = {}
        self.shapes = shapes
        self.opset = default_opset(model)
        self.tensors: dict[str, ChannelTensor] = {}
        self.total = 0
        self.edges: list[tuple[np.ndarray, np.ndarray]] = []
        self.blocked: dict[str, list[str]] = {}
        self.blocked_channels: list[tuple[str, np.ndarray]] = []   # only some channels of a tensor
        self.blocked_whole: set[str] = set()
        self.sources: dict[str, onnx.NodeProto] = {}
        self.deferred: list = []
        self.equal_counts: list[tuple[str, str]] = []

    def channels(self, name: str) -> ChannelTensor | None:
        return self.tensors.get(name) if name else None

    def shape(self, name: str) -> list | None:
        s = self.shapes.get(name)
        return list(s) if s is not None else None

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return len(s) if s is not None else None

    def register(self, name: str, axis: int, like: ChannelTensor | None = None, size: int | None = None,
                 split: tuple[int, int] | None = None):
        """Declare that `name` carries channels on `axis`; None (and `like` blocked) if unknowable."""
        if name in self.tensors:
            return self.tensors[name]
        shape = self.shape(name)
        span = 2 if split else 1
        known = shape is not None and 0 <= axis <= len(shape) - span and None not in shape[axis:axis + span]
        actual = int(np.prod(shape[axis:axis + span])) if known else None
        if size is None:
            size = actual
        if size is None or (known and actual != size) or shape is None:
            if like is not None:
                self.block(like.name, f"shape of '{name}' is unknown or inconsistent")
            return None
        t = ChannelTensor(name, axis, int(size), self.total, split)
        self.tensors[name] = t
        self.total += t.size
        return t

    def tie(self, a: str, ia: np.ndarray, b: str, ib: np.ndarray) -> None:
        self.edges.append((self.tensors[a].base + np.asarray(ia), self.tensors[b].base + np.asarray(ib)))

    def tie_same(self, a: str, b: str) -> None:
        ta, tb = self.tensors[a], self.tensors[b]
        if ta.size != tb.size:
            self.block(a, f"'{a}' and '{b}' disagree on the channel count")
            self.block(b, f"'{a}' and '{b}' disagree on the channel count")
            return
        idx = np.arange(ta.size)
        self.tie(a, idx, b, idx)

    def block(self, name: str, reason: str) -> None:
        if name in self.tensors:
            self.blocked_whole.add(name)
            self.blocked.setdefault(name, [])
            if reason not in self.blocked[name]:
                self.blocked[name].append(reason)

    def approximate(self, name: str, reason: str) -> bool:
        """Channels of `name` reach an op whose result changes with the channel count (`reason`
        says how): recorded and True with approximations on; else `name` is blocked with a reason
        naming the option, and False."""
        if name not in self.tensors:
            return False
        if not self.approximations_on:
            self.block(name, f"{reason}: approximate, pass --approximate to prune it")
            return False
        self.approximated.setdefault(name, [])
        if reason not in self.approximated[name]:
            self.approximated[name].append(reason)
        return True

    def block_channels(self, name: str, idx: np.ndarray, reason: str) -> None:
        """Block only channels `idx` of `name` (e.g. channels a Concat takes from a fixed tensor)."""
        self.blocked_channels.append((name, np.asarray(idx)))
        self.blocked.setdefault(name, [])
        if reason not in self.blocked[name]:
            self.blocked[name].append(reason)

    def after_all(self, check) -> None:
        """Run `check()` once every node has been analysed."""
        self.deferred.append(check)

    def same_count(self, a: str, b: str) -> None:
        """Require that pruning leaves tensors `a` and `b` with equal channel counts (checked per unit)."""
        self.equal_counts.append((a, b))

    def source(self, name: str, node: onnx.NodeProto) -> None:
        self.sources[name] = node


def analyse(model: onnx.ModelProto, shapes: dict, approximate: bool = False) -> Analysis:
    """Find the channel-dependency groups of `model`.

    Args:
        model: a normalised model (see `fold.normalise`), not modified.
        shapes: tensor name -> static shape, from `graph.infer_shapes`.
        approximate: let channels pass ops whose result changes with the channel count
            (`_Builder.approximate`); the groups concerned list why in `Group.approximate`.
    Returns:
        The `Analysis`, whose `groups` list every group with the reasons its blocked units are kept.
    """
    an = _Builder(model, shapes, approximate)
    for node in model.graph.node:
        rule = rule_for(node)
        split_inputs = [n for n in node.input if an.channels(n) is not None and an.channels(n).split]
        if split_inputs and not (rule is not None and rule.reads_split(node)):
            for name in node.input:
                if an.channels(name) is not None:
                    an.block(name, f"channels split over two axes are read by {node.op_type} '{node.name}'")
            continue
        if rule is None:
            for name in node.input:
                if an.channels(name) is not None:
                    domain = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
                    an.block(name, f"read by unsupported op {domain}{node.op_type} '{node.name}'")
            _block_subgraph_reads(node, an)   # If/Loop/Scan have no rule: their branches read outer tensors
            continue
        rule.analyse(node, an)
        _block_subgraph_reads(node, an)
    for check in an.deferred:
        check()
    for out in an.index.outputs:
        an.block(out, f"reaches graph output '{out}'")
    return _components(an, model)


def _block_subgraph_reads(node, an) -> None:
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            for inner in g.node:
                for name in inner.input:
                    if an.channels(name) is not None:
                        an.block(name, f"read inside the subgraph of {node.op_type} '{node.name}'")


def _units(an: _Builder) -> tuple:
    """(unit count, the unit of every channel element, which units are blocked): channels tied by
    an edge form one unit; a unit without a source channel, or with a blocked one, is blocked."""
    n = an.total
    if an.edges:
        a = np.concatenate([e[0] for e in an.edges])
        b = np.concatenate([e[1] for e in an.edges])
        graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
        n_units, unit_of = connected_components(graph, directed=False)
    else:
        n_units, unit_of = n, np.arange(n)
    unit_of = unit_of.astype(np.int64)

    for a_name, b_name in an.equal_counts:
        ta, tb = an.tensors[a_name], an.tensors[b_name]
        counts_a = np.bincount(unit_of[ta.base:ta.base + ta.size], minlength=n_units)
        counts_b = np.bincount(unit_of[tb.base:tb.base + tb.size], minlength=n_units)
        if not np.array_equal(counts_a, counts_b):
            why = f"a run-time shape takes the channel count of '{a_name}' for '{b_name}', which prune differently"
            an.block(a_name, why)
            an.block(b_name, why)
    source_elem = np.zeros(n, dtype=bool)
    blocked_elem = np.zeros(n, dtype=bool)
    for name in an.sources:
        t = an.tensors[name]
        source_elem[t.base:t.base + t.size] = True
    for name, idx in an.blocked_channels:
        blocked_elem[an.tensors[name].base + idx] = True
    for name in an.blocked_whole:
        t = an.tensors[name]
        blocked_elem[t.base:t.base + t.size] = True
    unit_source = np.bincount(unit_of, weights=source_elem, minlength=n_units) > 0
    unit_blocked = (np.bincount(unit_of, weights=blocked_elem, minlength=n_units) > 0) | ~unit_source
    return n_units, unit_of, unit_blocked


def _components(an: _Builder, model: onnx.ModelProto) -> Analysis:
    n_units, unit_of, unit_blocked = _units(an)

    # units that share a source tensor belong to the same group
    order = [name for node in model.graph.node for name in node.output if name in an.sources]
    link_a, link_b = [], []
    for name in order:
        t = an.tensors[name]
        units = np.unique(unit_of[t.base:t.base + t.size])
        link_a.append(units[:-1])
        link_b.append(units[1:])
    if link_a:
        la, lb = np.concatenate(link_a), np.concatenate(link_b)
        ug = coo_matrix((np.ones(len(la), dtype=np.int8), (la, lb)), shape=(n_units, n_units))
        _, group_of_unit = connected_components(ug, directed=False)
    else:
        group_of_unit = np.arange(n_units)

    # canonical unit order: by source tensor in graph order, then channel
    group_ids: dict[int, int] = {}
    group_units: list[list[int]] = []
    group_sources: list[list[str]] = []
    seen = np.zeros(n_units, dtype=bool)
    for name in order:
        t = an.tensors[name]
        g_raw = int(group_of_unit[unit_of[t.base]])
        if g_raw not in group_ids:
            group_ids[g_raw] = len(group_units)
            group_units.append([])
            group_sources.append([])
        gid = group_ids[g_raw]
        group_sources[gid].append(an.sources[name].name or name)
        for u in unit_of[t.base:t.base + t.size]:
            if not seen[u]:
                seen[u] = True
                group_units[gid].append(int(u))

    tensor_groups: dict[int, list[str]] = {gid: [] for gid in range(len(group_units))}
    reasons: dict[int, list[str]] = {gid: [] for gid in range(len(group_units))}
    approx: dict[int, list[str]] = {gid: [] for gid in range(len(group_units))}
    for name, t in an.tensors.items():
        gs = {group_ids.get(int(group_of_unit[u])) for u in np.unique(unit_of[t.base:t.base + t.size])}
        for gid in gs:
            if gid is None:
                continue
            tensor_groups[gid].append(name)
            for r in an.blocked.get(name, []):
                if r not in reasons[gid]:
                    reasons[gid].append(r)
            for r in an.approximated.get(name, []):
                if r not in approx[gid]:
                    approx[gid].append(r)

    groups = []
    arrays = []
    for gid, units in enumerate(group_units):
        units_arr = np.array(units, dtype=np.int64)
        arrays.append(units_arr)
        sources = tuple(dict.fromkeys(group_sources[gid]))
        groups.append(Group(
            id=gid, name=sources[0], sources=sources, tensors=tuple(tensor_groups[gid]),
            size=len(units), blocked=int(unit_blocked[units_arr].sum()), reasons=tuple(reasons[gid]),
            approximate=tuple(approx[gid]),
        ))
    return Analysis(model=model, shapes=an.shapes, tensors=an.tensors, unit_of=unit_of,
                    unit_blocked=unit_blocked, groups=groups, group_units=arrays,
                    source_nodes=dict(an.sources), opset=an.opset)
