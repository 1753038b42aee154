"""The op-rule table: everything onnxprune knows about how channels flow through an op.

Each rule has two halves that must agree:
- ``analyse(node, an)`` declares, for a node whose inputs carry channels (or that creates them),
  which output tensors carry channels on which axis, which input and output channels are tied
  (must be removed together), which outputs are *sources* (new channels a criterion can score),
  and which tensors cannot be pruned and why.
- ``rewrite(node, rw)`` applies a selection: it slices the node's weights and fixes its
  attributes/constant inputs from the kept channel indices of its tensors.

An op that is not in ``RULES`` blocks every channel tensor it reads: nothing is guessed.

An op whose result changes with the channel count (LayerNorm over channels, a reduction over
channels, ECA's Conv1d along them) asks ``an.approximate(tensor, why)``: with approximations on
(``PruneConfig.approximate``) its channels pass and the group records why, else they block with a
reason naming the option.

What other modules ask of an op (is it a filter source, its weight layout as filter rows, may a
least-squares refit or ThiNet read it, is it a BatchNormalization, a convolution, depthwise, its
MACs) is a property or method of its rule; ``rule_or_default`` answers for unknown ops too.

Ops outside the table, or questions that are not about channel flow, stay as op_type comparisons
where they are asked (``tests/test_structure.py`` holds the same list as its allow-list):
- ``analysis.fold``: Dropout is never folded (with the random and control-flow ops);
- ``analysis.graph``: Identity chains are looked through; ``INF_OK`` names the ops whose
  constants may be infinite;
- ``analysis.shapes`` and ``rewrite``: the shape-subgraph evaluator computes the *values* of
  Shape/Gather/Slice/Concat/arithmetic/Cast/Identity on shape vectors;
- ``finetuning.bridge``: onnx2torch converts Gemm to ``torch.nn.Linear`` (its weight and bias
  transforms) and Identity-of-constant nodes are folded before conversion;
- ``recovery.datafree``: the moment propagation computes each activation function (Relu, Clip,
  PRelu...) and follows sums and pass-through ops by what they compute;
- ``verification.evaluate``: graph outputs made by a Concat are scored per part;
- ``verification.verify``: value-dependent ops (Tile, Expand, ...) are reported.
Constant, If/Loop/Scan, quantized and other ops the table does not know are compared freely.
"""

from __future__ import annotations

import numpy as np

from ..recovery import compensation
from ..recovery.compensation import LinearMerge  # noqa: F401  (what a rewrite's `merges` may hold)
from .graph import attr, set_attr
from .shapes import count_escapes, shape_entry, shape_follows_input, follows_channel_count, map_interleaved, map_reshape, shape_evaluator


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


class Rule:
    """Base rule: channels of the first input flow unchanged to every output (``in = out``)."""

    def analyse(self, node, an) -> None:
        x = an.channels(node.input[0]) if node.input else None
        if x is None:
            self.reject_others(node, an, skip=())
            return
        self.reject_others(node, an, skip=(0,))
        for out in node.output:
            if out and an.register(out, x.axis, like=x) is not None:
                an.tie_same(x.name, out)

    def reject_others(self, node, an, skip) -> None:
        """Block channel tensors read at slots this rule does not understand."""
        for slot, name in enumerate(node.input):
            if slot not in skip and an.channels(name) is not None:
                an.block(name, f"read by {node.op_type} '{node.name}' at input {slot}")

    def rewrite(self, node, rw) -> None:
        """Most rules need no change: shapes follow from the sliced producers."""

    # what other modules ask of an op, answered here rather than by comparing op_type strings
    counts_macs = False    # a multiply-accumulate op counted by `metrics` (weights of a source)
    convolves = False      # a spatial convolution (Conv, ConvTranspose): what `prepare` requires
    patch_rows = False     # an output value is a filter row times an im2col patch of the input (Conv)
    is_batchnorm = False   # a BatchNormalization: per-channel gamma/beta/mean/var at inputs 1..4
    moment_matched = False  # its outputs get affine moment matching when its input lost channels

    def dense_filter(self, node) -> bool:
        """Whether each filter row reads every input channel (Conv with group 1, Gemm): the layout
        a least-squares refit or ThiNet works on."""
        return False

    def input_transposed(self, node) -> bool:
        """Whether the op reads its data input transposed (Gemm's transA)."""
        return False

    def reads_split(self, node) -> bool:
        """Whether `analyse` follows channels split over two axes (``Channels.split``); every
        other op blocks such inputs."""
        return False

    def bias_scale(self, node) -> float:
        """The factor the op applies to its bias input (Gemm's beta; 1 elsewhere)."""
        return 1.0

    def refit_refusal(self, node) -> str | None:
        """Why a least-squares refit of this dense-filter node is not done; None when it is."""
        return None

    def from_filters(self, node, w: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The inverse of `filters`: the weight of layout `w` holding the filter `rows`."""
        raise TypeError(f"{node.op_type} is not a filter source")

    def depthwise(self, node, const) -> bool:
        """Whether the node is depthwise-like (grouped, one input channel per group); `const` reads
        a constant tensor by name (``GraphIndex.const``), called only for a grouped node's weight."""
        return False

    def filters(self, node, w: np.ndarray) -> np.ndarray:
        """The weights `w` of each output channel of this source node, one row per channel."""
        raise TypeError(f"{node.op_type} is not a filter source")

    def macs(self, node, x: list | None, w: list | None, out: list) -> int:
        """Multiply-accumulates per sample of `node` from its input, weight and output shapes (0 when unknown)."""
        return 0

    def out_axis(self, node) -> int:
        """The axis of this source's weight that indexes its output channels."""
        raise TypeError(f"{node.op_type} is not a filter source")


class Passthrough(Rule):
    """Element-wise unary ops, Cast, Identity, Dropout: out channel c == in channel c."""


class ShapeRead(Rule):
    """Shape/Size read a tensor's dimensions, not its values.

    Harmless unless the channel count flows on into a value: the Shape output is followed
    through shape arithmetic; Gather/Slice picking other dimensions end the trail; feeding the
    shape of a Reshape of the same tensor is checked by the Reshape rule; anything else that
    receives the channel count (a Pow, a Range, Resize sizes, Slice bounds...) blocks the tensor.
    """

    def analyse(self, node, an) -> None:
        x = an.channels(node.input[0])
        if x is None:
            return
        if node.op_type == "Size":
            if an.index.consumers.get(node.output[0]):
                an.block(x.name, f"Size '{node.name}' reads the element count at run time")
            return
        rank = an.rank(x.name) or 0
        start = _norm_axis(attr(node, "start", 0), rank)
        end = attr(node, "end", None)
        end = rank if end is None else min(_norm_axis(end, rank), rank)
        if start <= x.axis < end:
            # checked once the whole graph is analysed: a Reshape/Slice reading the count must exist by then
            an.after_all(lambda: self._check(node, an, x, x.axis - start))

    @staticmethod
    def _check(node, an, x, pos) -> None:
        escape = count_escapes(node.output[0], pos, x, an, depth=0)
        if escape:
            an.block(x.name, f"the channel count is read at run time (Shape '{node.name}' -> {escape})")


class Barrier(Rule):
    """Ops known to mix channels (LRN, GroupNorm, LpNormalization, DepthToSpace...)."""

    def __init__(self, why: str):
        self.why = why

    def analyse(self, node, an) -> None:
        for name in node.input:
            if an.channels(name) is not None:
                an.block(name, f"{node.op_type} '{node.name}' {self.why}")


class AxisGuarded(Rule):
    """Passthrough unless the op works along the channel axis (Softmax, ArgMax...)."""

    def __init__(self, default_axis: int, why: str, reduces: bool = False):
        self.default_axis = default_axis
        self.why = why
        self.reduces = reduces

    def reads_split(self, node) -> bool:
        """Softmax-like ops follow channels split into (radix, C): over the radix axis they are exact."""
        return not self.reduces

    def analyse(self, node, an) -> None:
        x = an.channels(node.input[0])
        if x is None:
            return Rule.analyse(self, node, an)
        rank = an.rank(x.name)
        legacy = an.opset < 13 and node.op_type in ("Softmax", "LogSoftmax", "Hardmax")
        axis = _norm_axis(attr(node, "axis", 1 if legacy else self.default_axis), rank)
        if x.split:
            self._split(node, an, x, axis, legacy)
            return
        # legacy softmax works over every axis from `axis` on (LayerNormalization: `LayerNorm`)
        covered = axis <= x.axis if legacy else False
        if axis == x.axis or covered:
            an.block(x.name, f"{node.op_type} '{node.name}' {self.why}")
            return
        if self.reduces:  # ArgMax/ArgMin drop or keep the reduced axis
            keep = attr(node, "keepdims", 1)
            out_axis = x.axis if keep or axis > x.axis else x.axis - 1
            self.reject_others(node, an, skip=(0,))
            if an.register(node.output[0], out_axis, like=x) is not None:
                an.tie_same(x.name, node.output[0])
            return
        Rule.analyse(self, node, an)

    def _split(self, node, an, x, axis, legacy) -> None:
        """Channels split into (outer, inner) axes, as split attention and selective kernels
        reshape theirs into (radix, C): a softmax over the outer (radix) axis mixes only the
        channels (a, b) of one inner index b, which are tied already (removed together, every
        radix slice keeping the same b): exact. Over the inner axis it normalises across channels."""
        crosses = axis <= x.axis + 1 if legacy else axis == x.axis + 1   # legacy: every axis from `axis` on
        if crosses:
            an.block(x.name, f"{node.op_type} '{node.name}' {self.why}")
            return
        self.reject_others(node, an, skip=(0,))
        if an.register(node.output[0], x.axis, like=x, split=x.split) is not None:
            an.tie_same(x.name, node.output[0])
            if axis == x.axis:   # what the softmax mixes goes together (after a shuffle's swap too)
                idx = np.arange(x.size)
                an.tie(x.name, idx, x.name, idx % x.split[1])


class LayerNorm(AxisGuarded):
    """LayerNormalization: a pass-through unless it normalises the channel axis, where it is an
    approximation (the mean and variance change with the channels kept, `_Builder.approximate`)
    whose per-channel scale and bias are sliced like BatchNormalization's."""

    def __init__(self):
        super().__init__(-1, "normalises over the channel axis")

    def reads_split(self, node) -> bool:
        """LayerNormalization blocks split channels."""
        return False

    def analyse(self, node, an) -> None:
        x = an.channels(node.input[0])
        if x is None:
            return Rule.analyse(self, node, an)
        rank = an.rank(x.name)
        axis = _norm_axis(attr(node, "axis", -1), rank)
        if axis > x.axis:
            return Rule.analyse(self, node, an)
        self.reject_others(node, an, skip=(0,))
        for slot in (1, 2):
            if len(node.input) > slot and node.input[slot] and self._param_axis(node, an, slot, x, rank) is None:
                an.block(x.name, f"LayerNormalization '{node.name}' has a parameter that cannot be sliced by channel")
                return
        if any(o and an.index.consumers.get(o) for o in node.output[1:]):
            an.block(x.name, f"LayerNormalization '{node.name}' returns its mean or inverse deviation")
            return
        if not an.approximate(x.name, f"LayerNormalization '{node.name}' normalises over the channel axis"):
            return
        if an.register(node.output[0], x.axis, like=x) is not None:
            an.tie_same(x.name, node.output[0])

    @staticmethod
    def _param_axis(node, an, slot, x, rank):
        """The axis of the constant scale/bias at `slot` that runs along the channels (-1 where it
        broadcasts over them), or None when it is not a constant."""
        value = an.index.const(node.input[slot])
        if value is None:
            return None
        aligned = value.ndim - (rank - x.axis)
        if 0 <= aligned < value.ndim and value.shape[aligned] == x.size and x.size > 1:
            return aligned
        return -1 if aligned < 0 or value.shape[aligned] == 1 else None

    def rewrite(self, node, rw) -> None:
        keep = rw.kept(node.input[0])
        if keep is None:
            return
        x, rank = rw.channels(node.input[0]), len(rw.shape(node.input[0]))
        for slot in (1, 2):
            if len(node.input) > slot and node.input[slot]:
                aligned = self._param_axis(node, rw, slot, x, rank)
                if aligned is not None and aligned >= 0:
                    rw.set_const(node, slot, np.take(rw.const(node.input[slot]), keep, axis=aligned))


class Pool(Rule):
    """Spatial pooling: channel axis must be 1; MaxPool's indices output is not supported."""

    def analyse(self, node, an) -> None:
        x = an.channels(node.input[0])
        if x is None:
            return
        if x.axis != 1:
            an.block(x.name, f"{node.op_type} '{node.name}' pools a tensor whose channels are on axis {x.axis}")
            return
        if len(node.output) > 1 and node.output[1] and an.index.consumers.get(node.output[1]):
            an.block(x.name, f"{node.op_type} '{node.name}' returns indices, which depend on the channel count")
            return
        if an.register(node.output[0], 1, like=x) is not None:
            an.tie_same(x.name, node.output[0])


class Normalization(Rule):
    """BatchNormalization / InstanceNormalization: per-channel parameters at inputs 1..n."""

    def __init__(self, batch: bool):
        self.is_batchnorm = batch

    def analyse(self, node, an) -> None:
        x = an.channels(node.input[0])
        if x is None:
            return
        if x.axis != 1:
            an.block(x.name, f"{node.op_type} '{node.name}' normalises axis 1 but channels are on axis {x.axis}")
            return
        for slot in range(1, len(node.input)):
            if node.input[slot] and not an.index.is_const(node.input[slot]):
                an.block(x.name, f"{node.op_type} '{node.name}' has a non-constant parameter")
                return
        out = node.output[0]
        if an.register(out, 1, like=x) is not None:
            an.tie_same(x.name, out)
        for extra in node.output[1:]:  # training-mode outputs
            if extra and an.index.consumers.get(extra):
                an.block(x.name, f"{node.op_type} '{node.name}' uses training-mode outputs")

    def rewrite(self, node, rw) -> None:
        keep = rw.kept(node.input[0])
        if keep is None:
            return
        for slot in range(1, len(node.input)):
            if node.input[slot]:
                rw.set_const(node, slot, np.take(rw.const(node.input[slot]), keep, axis=0))


class Broadcast(Rule):
    """Element-wise ops with numpy broadcasting (Add, Mul, PRelu, Sum, Max, ...).

    Inputs carrying channels on the same output axis with the full channel count are tied;
    constants with the full count on that axis are sliced; size-1 operands broadcast freely.
    """

    def reads_split(self, node) -> bool:
        """Split channels (radix, C) times per-channel tensors, as selective kernels weight their paths."""
        return True

    def analyse(self, node, an) -> None:
        out = node.output[0]
        out_shape = an.shape(out)
        ins = [(slot, name) for slot, name in enumerate(node.input) if name]
        carried = [(slot, an.channels(name)) for slot, name in ins if an.channels(name) is not None]
        if not carried:
            return
        if out_shape is None:
            for _, x in carried:
                an.block(x.name, f"{node.op_type} '{node.name}': output shape unknown")
            return
        if any(x.split for _, x in carried):
            return self._split(node, an, ins, carried, out_shape)
        rank = len(out_shape)
        full = [(slot, x) for slot, x in carried if x.size > 1 or out_shape[x.axis + rank - an.rank(x.name)] == 1]
        axes = {x.axis + rank - an.rank(x.name) for _, x in full}
        if len(axes) != 1:
            for _, x in carried:
                an.block(x.name, f"{node.op_type} '{node.name}' combines tensors with channels on different axes")
            return
        axis = axes.pop()
        size = full[0][1].size
        problem = None
        for slot, name in ins:
            x = an.channels(name)
            if x is not None and any(x is f for _, f in full):
                if x.size != size:
                    problem = f"combines {x.size} with {size} channels"
                continue
            shape = an.shape(name)
            if shape is None:
                problem = f"operand '{name}' has unknown shape"
                continue
            aligned = len(shape) - (rank - axis)
            dim = shape[aligned] if 0 <= aligned < len(shape) else 1
            if dim == 1:
                continue
            if dim == size and an.index.is_const(name):
                continue  # sliced in rewrite
            problem = f"operand '{name}' carries {dim} values along the channel axis that cannot be sliced"
        if problem:
            for _, x in carried:
                an.block(x.name, f"{node.op_type} '{node.name}' {problem}")
            return
        first = full[0][1]
        if an.register(out, axis, like=first) is not None:
            for _, x in full:
                an.tie_same(x.name, out)

    @staticmethod
    def _split(node, an, ins, carried, out_shape) -> None:
        """Channels split into (outer, inner) on axes (k, k+1), combined with tensors that carry
        the same split there, or the inner channels alone on axis k+1 (one value per path of a
        selective kernel: inner channel b meets (a, b) for every a, which are tied already), or
        constants and tensors of size 1 on both axes. The output carries the split."""
        rank = len(out_shape)
        first = next(x for _, x in carried if x.split)
        k = first.axis + rank - an.rank(first.name)
        outer, inner = first.split
        problem = None if out_shape[k:k + 2] == [outer, inner] else "changes the split channel axes"
        plain = []
        for slot, name in ins:
            x = an.channels(name)
            if x is not None and x.split:
                if x.split != first.split or x.axis + rank - an.rank(name) != k:
                    problem = "combines channels split in different ways"
            elif x is not None:
                if x.axis + rank - an.rank(name) != k + 1 or x.size != inner:
                    problem = f"combines split channels with '{name}', whose channels do not line up"
                plain.append(x)
            else:
                shape = an.shape(name)
                dims = [1, 1] if shape is None else [shape[a - rank + len(shape)] if a - rank + len(shape) >= 0 else 1
                                                     for a in (k, k + 1)]
                if shape is None or dims[1] != 1:
                    problem = f"operand '{name}' carries values along the split channel axes that cannot be sliced"
        if problem:
            for _, x in carried:
                an.block(x.name, f"{node.op_type} '{node.name}' {problem}")
            return
        out = node.output[0]
        if an.register(out, k, like=first, split=first.split) is None:
            return
        for _, x in carried:
            if x.split:
                an.tie_same(x.name, out)
        idx = np.arange(outer * inner)
        for x in plain:
            an.tie(x.name, idx % inner, out, idx)

    def rewrite(self, node, rw) -> None:
        keep = rw.kept(node.output[0])
        if keep is None:
            return
        ch = rw.channels(node.output[0])
        if ch.split:
            return   # analysis admits only operands of size 1 on the split axes besides channel tensors
        rank = len(rw.shape(node.output[0]))
        for slot, name in enumerate(node.input):
            if not name or rw.channels(name) is not None:
                continue
            value = rw.const(name)
            if value is None:
                continue
            aligned = value.ndim - (rank - ch.axis)
            if 0 <= aligned < value.ndim and value.shape[aligned] == ch.size and ch.size > 1:
                rw.set_const(node, slot, np.take(value, keep, axis=aligned))


class Conv(Rule):
    """Conv: output channels are new (a source); input channels index weight axis 1.

    Grouped convs keep their group structure in one of two ways:
    - depthwise-like (one input channel per group): input channel g and the outputs of group g
      are tied, a group is removed whole and ``group`` shrinks;
    - otherwise the same within-group index is tied across all groups (on the input side and on
      the output side separately), so every group keeps the same positions and ``group`` stays.
    """

    transpose = False
    counts_macs = True
    convolves = True
    patch_rows = True
    moment_matched = True

    def dense_filter(self, node) -> bool:
        """A Conv with group 1 (never a ConvTranspose)."""
        return not self.transpose and attr(node, "group", 1) == 1

    def from_filters(self, node, w: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Conv rows ``[O, C*kH*kW]`` back to ``[O, C, kH, kW]``."""
        return rows.reshape(w.shape)

    def depthwise(self, node, const) -> bool:
        """Grouped with one input channel per group (input channels: ``w[1] * group``, or ``w[0]`` transposed)."""
        groups = attr(node, "group", 1)
        if groups <= 1:
            return False
        w = const(node.input[1])
        c_in = w.shape[0] if self.transpose else w.shape[1] * groups
        return c_in // groups == 1

    def out_axis(self, node) -> int:
        """Conv weights are ``[O, C/group, kH, kW]``; ConvTranspose ``[C, O/group, kH, kW]``."""
        return 1 if self.transpose else 0

    def filters(self, node, w: np.ndarray) -> np.ndarray:
        """Conv weights ``[O, C/group, kH, kW]``: one flattened row per output channel."""
        return w.reshape(w.shape[0], -1)

    def macs(self, node, x, w, out) -> int:
        """Each output value costs one pass over its filter: ``prod(out[1:]) * prod(w[1:])``."""
        if w is None or None in w:
            return 0
        return int(np.prod(out[1:], dtype=np.int64) * np.prod(w[1:], dtype=np.int64))

    def analyse(self, node, an) -> None:
        x = an.channels(node.input[0])
        w = an.index.const(node.input[1]) if len(node.input) > 1 else None
        out = node.output[0]
        if w is None or w.ndim < 3:
            if x is not None:
                an.block(x.name, f"{node.op_type} '{node.name}' has a non-constant weight")
            return
        if len(node.input) > 2 and node.input[2] and not an.index.is_const(node.input[2]):
            if x is not None:
                an.block(x.name, f"{node.op_type} '{node.name}' has a non-constant bias")
            return
        groups = attr(node, "group", 1)
        c_in = w.shape[0] if self.transpose else w.shape[1] * groups
        c_out = w.shape[1] * groups if self.transpose else w.shape[0]
        if x is not None and x.axis >= 2 and self._slides_over_channels(node, an, x, w):
            # ECA: a 1-in 1-out Conv1d along the channel axis; a removed channel changes what its
            # neighbours' windows see (and where the zero padding starts), so this is approximate
            if an.approximate(x.name, f"{node.op_type} '{node.name}' slides a kernel along the channel axis "
                                      f"(neighbouring channels interact)"):
                if an.register(out, x.axis, like=x) is not None:
                    an.tie_same(x.name, out)
            return
        if x is not None and (x.axis != 1 or x.size != c_in):
            an.block(x.name, f"{node.op_type} '{node.name}' reads {c_in} channels on axis 1")
            x = None
        if an.register(out, 1, size=c_out) is None:
            return
        an.source(out, node)
        if groups == 1:
            return
        k_in, k_out = c_in // groups, c_out // groups
        ins, outs = np.arange(c_in), np.arange(c_out)
        if k_in == 1:
            an.tie(out, outs, out, (outs // k_out) * k_out)
            if x is None:
                an.block(out, f"depthwise {node.op_type} '{node.name}' reads channels that cannot be pruned")
            else:
                an.tie(x.name, ins, out, ins * k_out)
        else:
            an.tie(out, outs, out, outs % k_out)
            if x is not None:
                an.tie(x.name, ins, x.name, ins % k_in)

    def _slides_over_channels(self, node, an, x, w) -> bool:
        """A one-channel Conv whose spatial axis is the channel axis of `x` (ECA), stride 1, its
        output as long as its input there: channels map to themselves."""
        shape, out_shape = an.shape(node.input[0]), an.shape(node.output[0])
        if self.transpose or attr(node, "group", 1) != 1 or w.shape[0] != 1 or w.shape[1] != 1 \
                or shape is None or out_shape is None or len(shape) != len(out_shape) or shape[1] != 1:
            return False
        strides = attr(node, "strides", [1] * (len(shape) - 2))
        return strides[x.axis - 2] == 1 and out_shape[x.axis] == shape[x.axis]

    def rewrite(self, node, rw) -> None:
        keep_in, keep_out = rw.kept(node.input[0]), rw.kept(node.output[0])
        if keep_in is None and keep_out is None:
            return
        if keep_in is not None and rw.channels(node.input[0]).axis != 1:
            return   # ECA's Conv1d along the channel axis: its weight has no channel axis to slice
        w = rw.const(node.input[1])
        groups = attr(node, "group", 1)
        w, merged_delta, merged = self._merge(node, rw, w, groups, keep_in)
        delta = self._compensation(node, rw, w, groups, keep_in, skip=merged)
        if merged_delta is not None:
            delta = merged_delta if delta is None else delta + merged_delta
        out_axis, in_axis = (1, 0) if self.transpose else (0, 1)
        c_in = w.shape[0] if self.transpose else w.shape[1] * groups
        k_in = c_in // groups
        if groups > 1 and k_in == 1:
            # depthwise-like: whole groups go; the kept output channels name them
            c_out = w.shape[1] * groups if self.transpose else w.shape[0]
            kept_out = keep_out if keep_out is not None else np.arange(c_out)
            k_out = c_out // groups
            w = np.take(w, kept_out if not self.transpose else kept_out[::k_out] // k_out, axis=0)
            set_attr(node, "group", len(kept_out) // k_out)
        else:
            k_out = (w.shape[1] if self.transpose else w.shape[0] // groups)
            if keep_out is not None:
                local = keep_out if not self.transpose else keep_out[keep_out < k_out]
                w = np.take(w, local, axis=out_axis)
            if keep_in is not None:
                local = keep_in if self.transpose else keep_in[keep_in < k_in]
                w = np.take(w, local, axis=in_axis)
        rw.set_const(node, 1, w)
        _set_bias(node, rw, 2, delta, keep_out)

    def _merge(self, node, rw, w, groups, keep_in):
        """Fold removed near-copies (or a `LinearMerge`) into the kept input channels' weights
        (`compensation.merge_into_filters`); ungrouped Convs only."""
        found = rw.merges.get(node.input[0]) if keep_in is not None else None
        if found is None or (not isinstance(found, LinearMerge) and not found) or groups != 1 or self.transpose:
            return w, None, set()
        return compensation.merge_into_filters(w, found, rw.const(node.input[1]).dtype)

    def _compensation(self, node, rw, w, groups, keep_in, skip=frozenset()):
        """Bias change that replaces removed input channels by their calibration means
        (`compensation.filter_mean_delta`). ConvTranspose spreads a constant unevenly over
        strided outputs, so it is not compensated."""
        means = rw.means.get(node.input[0]) if keep_in is not None else None
        if means is None or self.transpose:
            return None
        return compensation.filter_mean_delta(w, groups, keep_in, means, skip)


def _set_bias(node, rw, slot, delta, keep_out):
    """Slice the bias by kept outputs and add a compensation `delta` (over all original outputs)."""
    has_bias = len(node.input) > slot and node.input[slot]
    if delta is None and (keep_out is None or not has_bias):
        return
    size = rw.channels(node.output[0]).size
    bias = rw.const(node.input[slot]).astype(np.float64) if has_bias else np.zeros(size)
    bias = np.broadcast_to(bias, (size,)).copy() if bias.size in (1, size) and bias.ndim <= 1 else bias
    if delta is not None:
        bias = bias + delta
    if keep_out is not None:
        bias = np.take(bias, keep_out, axis=bias.ndim - 1)
    dtype = rw.const(node.input[1]).dtype
    rw.set_const(node, slot, bias.astype(dtype))


class ConvTranspose(Conv):
    """ConvTranspose: weight is ``[C_in, C_out/group, kH, kW]``."""

    transpose = True
    patch_rows = False
    moment_matched = False

    def filters(self, node, w: np.ndarray) -> np.ndarray:
        """Output channel o of group g reads weight rows ``g*k_in:(g+1)*k_in`` at column ``o % k_out``."""
        groups = attr(node, "group", 1)
        k_in, k_out = w.shape[0] // groups, w.shape[1]
        rows = [w[(o // k_out) * k_in:(o // k_out + 1) * k_in, o % k_out].ravel() for o in range(groups * k_out)]
        return np.stack(rows)

    def macs(self, node, x, w, out) -> int:
        """Each input value is spread over a filter: ``prod(x[1:]) * prod(w[1:])``."""
        if w is None or x is None or None in x or None in w:
            return 0
        return int(np.prod(x[1:], dtype=np.int64) * np.prod(w[1:], dtype=np.int64))


def _matmul_macs(out, k) -> int:
    per_sample = out[1:] if len(out) > 1 else out
    return int(np.prod(per_sample, dtype=np.int64) * k)


class Gemm(Rule):
    """Gemm with a constant B: input features index B's K axis; output features are a source."""

    counts_macs = True
    moment_matched = True

    def dense_filter(self, node) -> bool:
        """Every output feature reads all of A's features."""
        return True

    def input_transposed(self, node) -> bool:
        """``transA``."""
        return bool(attr(node, "transA", 0))

    def bias_scale(self, node) -> float:
        """``beta``."""
        return attr(node, "beta", 1.0)

    def refit_refusal(self, node) -> str | None:
        """The refit solves ``A @ B + C`` plainly: no alpha, beta or transA."""
        if attr(node, "transA", 0) or attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0:
            return "Gemm with alpha/beta/transA"
        return None

    def from_filters(self, node, w: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Rows ``[N, K]`` back to B's layout (``[K, N]`` without transB)."""
        return rows if attr(node, "transB", 0) else rows.T

    def out_axis(self, node) -> int:
        """B is ``[N, K]`` with transB, else ``[K, N]``."""
        return 0 if attr(node, "transB", 0) else 1

    def filters(self, node, w: np.ndarray) -> np.ndarray:
        """B is ``[N, K]`` with transB, else ``[K, N]``: one row per output feature."""
        return w if attr(node, "transB", 0) else w.T

    def macs(self, node, x, w, out) -> int:
        """Each output value sums K products (K from A's shape, transposed with transA)."""
        if x is None or None in x:
            return 0
        return _matmul_macs(out, x[0] if attr(node, "transA", 0) else x[-1])

    def analyse(self, node, an) -> None:
        a = an.channels(node.input[0])
        b = an.index.const(node.input[1])
        trans_a, trans_b = attr(node, "transA", 0), attr(node, "transB", 0)
        if b is None or b.ndim != 2 or trans_a:
            if a is not None:
                an.block(a.name, f"Gemm '{node.name}' has a non-constant or transposed operand")
            self.reject_others(node, an, skip=(0,))
            return
        self.reject_others(node, an, skip=(0,))
        if len(node.input) > 2 and node.input[2] and not an.index.is_const(node.input[2]):
            if a is not None:
                an.block(a.name, f"Gemm '{node.name}' has a non-constant bias")
            return
        k, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
        if a is not None and (a.axis != 1 or a.size != k):
            an.block(a.name, f"Gemm '{node.name}' reads {k} features on axis 1")
        if an.register(node.output[0], 1, size=n) is not None:
            an.source(node.output[0], node)

    def rewrite(self, node, rw) -> None:
        keep_in, keep_out = rw.kept(node.input[0]), rw.kept(node.output[0])
        if keep_in is None and keep_out is None:
            return
        b = rw.const(node.input[1])
        in_axis, out_axis = (1, 0) if attr(node, "transB", 0) else (0, 1)
        alpha, beta = attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
        c = rw.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        means = rw.means.get(node.input[0]) if keep_in is not None else None
        delta = None
        found = rw.merges.get(node.input[0]) if keep_in is not None else None
        skip = set()
        plain_bias = beta != 0 and (c is None or c.ndim < 2 or c.shape[0] == 1)   # a bias the deltas can go into
        if found is not None and (isinstance(found, LinearMerge) or found) and plain_bias:
            b, delta, skip = compensation.merge_into_matrix(b, in_axis, found, alpha, beta,
                                                           rw.const(node.input[1]).dtype)
        if means is not None and plain_bias:
            mean_delta = compensation.matrix_mean_delta(b, in_axis, keep_in, means, skip, alpha, beta)
            delta = mean_delta if delta is None else delta + mean_delta
        if keep_in is not None:
            b = np.take(b, keep_in, axis=in_axis)
        if keep_out is not None:
            b = np.take(b, keep_out, axis=out_axis)
        rw.set_const(node, 1, b)
        if c is not None and c.ndim > 1 and c.shape[0] > 1:  # a per-row bias: slice only
            if keep_out is not None and c.shape[-1] > 1:
                rw.set_const(node, 2, np.take(c, keep_out, axis=c.ndim - 1))
            return
        _set_bias(node, rw, 2, delta, keep_out)


class MatMul(Rule):
    """MatMul by a constant 2-D matrix over the channel axis (the last axis): like Gemm."""

    counts_macs = True

    def out_axis(self, node) -> int:
        """A constant B is ``[K, N]``."""
        return 1

    def filters(self, node, w: np.ndarray) -> np.ndarray:
        """A constant B ``[K, N]``: one row per output feature."""
        return w.T

    def macs(self, node, x, w, out) -> int:
        """Each output value sums K products, K the last axis of A."""
        if x is None or None in x:
            return 0
        return _matmul_macs(out, x[-1])

    def analyse(self, node, an) -> None:
        a = an.channels(node.input[0])
        b = an.index.const(node.input[1])
        if an.channels(node.input[1]) is not None:
            an.block(node.input[1], f"MatMul '{node.name}' multiplies by a tensor that carries channels")
        if b is None or b.ndim != 2:
            if a is not None:
                an.block(a.name, f"MatMul '{node.name}' is not a product with a constant matrix")
            return
        rank = an.rank(node.input[0])
        if rank is None or rank < 2:
            if a is not None:
                an.block(a.name, f"MatMul '{node.name}': input rank unknown")
            return
        if a is not None and (a.axis != rank - 1 or a.size != b.shape[0]):
            an.block(a.name, f"MatMul '{node.name}' contracts axis {rank - 1} but channels are on axis {a.axis}")
        if an.register(node.output[0], rank - 1, size=b.shape[1]) is not None:
            an.source(node.output[0], node)

    def rewrite(self, node, rw) -> None:
        keep_in, keep_out = rw.kept(node.input[0]), rw.kept(node.output[0])
        if keep_in is None and keep_out is None:
            return
        b = rw.const(node.input[1])
        if keep_in is not None:
            b = np.take(b, keep_in, axis=0)
        if keep_out is not None:
            b = np.take(b, keep_out, axis=1)
        rw.set_const(node, 1, b)


class Concat(Rule):
    """Concat on the channel axis maps input channels to output offsets; elsewhere it ties inputs."""

    def analyse(self, node, an) -> None:
        carried = [an.channels(n) for n in node.input if an.channels(n) is not None]
        if not carried:
            return
        rank = an.rank(node.output[0])
        if rank is None:
            for x in carried:
                an.block(x.name, f"Concat '{node.name}': output shape unknown")
            return
        axis = _norm_axis(attr(node, "axis", 1), rank)
        ch_axes = {x.axis for x in carried}
        if len(ch_axes) != 1:
            for x in carried:
                an.block(x.name, f"Concat '{node.name}' joins tensors with channels on different axes")
            return
        ch_axis = ch_axes.pop()
        if axis == ch_axis:
            sizes = [an.shape(n)[axis] if an.shape(n) else None for n in node.input]
            if None in sizes:
                for x in carried:
                    an.block(x.name, f"Concat '{node.name}': input shape unknown")
                return
            if an.register(node.output[0], axis) is None:
                return
            offset = 0
            for name, size in zip(node.input, sizes):
                idx = np.arange(size)
                if an.channels(name) is not None:
                    an.tie(name, idx, node.output[0], idx + offset)
                else:  # channels of a tensor we cannot shrink stay
                    an.block_channels(node.output[0], idx + offset,
                                      f"Concat '{node.name}' takes channels from '{name}', which cannot be pruned")
                offset += size
            return
        # concatenating along another axis: every input must carry the same channels
        size = carried[0].size
        for name in node.input:
            if an.channels(name) is None:
                shape = an.shape(name)
                if shape is None or shape[ch_axis] != 1 and shape[ch_axis] == size:
                    for x in carried:
                        an.block(x.name, f"Concat '{node.name}' along axis {axis} mixes in fixed channels")
                    return
        if an.register(node.output[0], ch_axis, like=carried[0]) is not None:
            for x in carried:
                an.tie_same(x.name, node.output[0])


class Split(Rule):
    """Split on the channel axis: each output owns a contiguous range; sizes are rewritten."""

    def analyse(self, node, an) -> None:
        x = an.channels(node.input[0])
        if x is None:
            return
        self.reject_others(node, an, skip=(0,))
        rank = an.rank(x.name)
        axis = _norm_axis(attr(node, "axis", 0), rank)
        if axis != x.axis:
            for out in node.output:
                if out and an.register(out, x.axis, like=x) is not None:
                    an.tie_same(x.name, out)
            return
        sizes = [an.shape(o)[axis] if o and an.shape(o) else None for o in node.output]
        if None in sizes:
            an.block(x.name, f"Split '{node.name}': output sizes unknown")
            return
        offset = 0
        for out, size in zip(node.output, sizes):
            if an.register(out, axis) is not None:
                idx = np.arange(size)
                an.tie(x.name, idx + offset, out, idx)
            offset += size

    def rewrite(self, node, rw) -> None:
        x = rw.channels(node.input[0])
        keep = rw.kept(node.input[0])
        if keep is None:
            return
        rank = len(rw.shape(node.input[0]))
        if _norm_axis(attr(node, "axis", 0), rank) != x.axis:
            return
        sizes = [rw.channels(o).size for o in node.output]
        bounds = np.cumsum([0] + sizes)
        new = np.array([np.count_nonzero((keep >= lo) & (keep < hi)) for lo, hi in zip(bounds[:-1], bounds[1:])],
                       dtype=np.int64)
        if rw.opset < 13:
            set_attr(node, "split", [int(v) for v in new])
        else:
            for i, a in enumerate(node.attribute):
                if a.name == "num_outputs":
                    del node.attribute[i]
                    break
            if len(node.input) < 2:
                node.input.append("")
            rw.set_const(node, 1, new)


class Slice(Rule):
    """Slice: a step-1 range on the channel axis is an offset map; other axes pass through."""

    def _params(self, node, an):
        if an.opset < 10:
            starts, ends = attr(node, "starts"), attr(node, "ends")
            axes = attr(node, "axes", list(range(len(starts))))
            steps = [1] * len(starts)
            return starts, ends, axes, steps
        get = lambda i: an.index.const(node.input[i]) if len(node.input) > i and node.input[i] else None  # noqa: E731
        starts, ends, axes, steps = get(1), get(2), get(3), get(4)
        if starts is None or ends is None or (len(node.input) > 3 and node.input[3] and axes is None) \
                or (len(node.input) > 4 and node.input[4] and steps is None):
            return None
        axes = list(range(len(starts))) if axes is None else list(axes)
        steps = [1] * len(starts) if steps is None else list(steps)
        return list(starts), list(ends), axes, steps

    def analyse(self, node, an) -> None:
        x = an.channels(node.input[0])
        if x is None:
            return
        self.reject_others(node, an, skip=(0,))
        rank = an.rank(x.name)
        params = self._params(node, an)
        if params is None:
            if not self._chunk(node, an, x):
                an.block(x.name, f"Slice '{node.name}' has run-time bounds")
            return
        starts, ends, axes, steps = params
        axes = [_norm_axis(int(a), rank) for a in axes]
        if x.axis not in axes:
            if an.register(node.output[0], x.axis, like=x) is not None:
                an.tie_same(x.name, node.output[0])
            return
        i = axes.index(x.axis)
        if int(steps[i]) != 1:
            an.block(x.name, f"Slice '{node.name}' steps over channels")
            return
        start, end = _clamp_range(int(starts[i]), int(ends[i]), x.size)
        if end <= start:
            an.block(x.name, f"Slice '{node.name}' selects no channels")
            return
        if an.register(node.output[0], x.axis, size=end - start) is not None:
            idx = np.arange(end - start)
            an.tie(x.name, idx + start, node.output[0], idx)

    def _chunk(self, node, an, x) -> bool:
        """A `chunk`: run-time bounds ``k*C/n .. (k+1)*C/n`` on the channel axis, computed from Shape(x).

        Tying channel j to every ``j + m*C/n`` keeps the n chunks equally long after pruning,
        so the bounds computed at run time from the pruned count stay right.
        """
        rank = an.rank(x.name)
        names = [node.input[i] if len(node.input) > i else "" for i in (1, 2, 3, 4)]
        const_axes = an.index.const(names[2]) if names[2] else np.arange(rank)
        if const_axes is None or (names[3] and an.index.const(names[3]) is None):
            return False
        axes = [_norm_axis(int(a), rank) for a in np.asarray(const_axes).reshape(-1)]
        if axes != [x.axis] or (names[3] and int(an.index.const(names[3]).reshape(-1)[0]) != 1) or x.split:
            return False
        evaluate = shape_evaluator([n for n in names[:2] if not an.index.is_const(n)], an, x)
        if evaluate is None or x.size % 2:
            return False

        def bounds(channels):
            values = iter(evaluate(channels))
            out = []
            for name in names[:2]:
                v = an.index.const(name) if an.index.is_const(name) else next(values)
                out.append(_clamp_range(int(np.asarray(v).reshape(-1)[0]), 0, channels)[0])
            return out

        try:
            (s0, e0), (s1, e1) = bounds(x.size), bounds(x.size // 2)
        except Exception:
            return False
        length = e0 - s0
        if length <= 0 or x.size % length or s0 % length or 2 * s1 != s0 or 2 * e1 != e0:
            return False
        if an.register(node.output[0], x.axis, size=length) is None:
            return False
        idx = np.arange(x.size)
        an.tie(x.name, idx, x.name, idx % length)
        an.tie(x.name, s0 + np.arange(length), node.output[0], np.arange(length))
        return True

    def rewrite(self, node, rw) -> None:
        keep = rw.kept(node.input[0])
        if keep is None:
            return
        x = rw.channels(node.input[0])
        params = self._params(node, rw)
        if params is None:
            return  # a chunk: its run-time bounds follow the pruned channel count
        starts, ends, axes, steps = params
        rank = len(rw.shape(node.input[0]))
        axes_n = [_norm_axis(int(a), rank) for a in axes]
        if x.axis not in axes_n:
            return
        i = axes_n.index(x.axis)
        start, end = _clamp_range(int(starts[i]), int(ends[i]), x.size)
        new_start = int(np.count_nonzero(keep < start))
        new_end = new_start + int(np.count_nonzero((keep >= start) & (keep < end)))
        starts, ends = [int(s) for s in starts], [int(e) for e in ends]
        starts[i], ends[i] = new_start, new_end
        if rw.opset < 10:
            set_attr(node, "starts", starts)
            set_attr(node, "ends", ends)
        else:
            dtype = rw.const(node.input[1]).dtype
            rw.set_const(node, 1, np.array(starts, dtype=dtype))
            rw.set_const(node, 2, np.array(ends, dtype=dtype))


def _clamp_range(start: int, end: int, size: int) -> tuple[int, int]:
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    return max(0, min(start, size)), max(0, min(end, size))


class Transpose(Rule):
    """Transpose moves the channel axis to ``perm.index(axis)``; a channel shuffle swaps split axes;
    split axes moved apart keep the channels on the inner axis."""

    def reads_split(self, node) -> bool:
        """A permutation moves both split axes."""
        return True

    def analyse(self, node, an) -> None:
        x = an.channels(node.input[0])
        if x is None:
            return
        rank = an.rank(x.name)
        perm = list(attr(node, "perm", list(range(rank))[::-1]))
        out = node.output[0]
        if x.split is None:
            if an.register(out, perm.index(x.axis), like=x) is not None:
                an.tie_same(x.name, out)
            return
        p0, p1 = perm.index(x.axis), perm.index(x.axis + 1)
        outer, inner = x.split
        if p1 == p0 + 1:
            if an.register(out, p0, like=x, split=(outer, inner)) is not None:
                an.tie_same(x.name, out)
        elif p0 == p1 + 1:  # (a, b) -> (b, a): channel a*inner+b lands at b*outer+a
            if an.register(out, p1, like=x, split=(inner, outer)) is not None:
                a, b = np.divmod(np.arange(x.size), inner)
                an.tie(x.name, np.arange(x.size), out, b * outer + a)
        else:
            # the two axes end up apart (split attention's rSoftMax puts the cardinality axis
            # between radix and channels): the output keeps channels on the inner axis only, the
            # outer one becomes an ordinary axis; every outer copy of inner channel b is tied to
            # it, so removing b removes the whole slice
            if an.register(out, p1, size=inner) is not None:
                an.tie(x.name, np.arange(x.size), out, np.arange(x.size) % inner)


class Reshape(Rule):
    """Reshape/Flatten/Squeeze/Unsqueeze, decided from the static shapes.

    The channel axis either survives as an axis of the output (same channels), is merged with
    the axes after it (channel c owns features ``c*R .. c*R+R-1``, as in Flatten -> Gemm) or,
    channels last, with the axes before it (features ``p*C + c``, an NHWC flatten), or is
    split into (outer, inner) axes, as the first Reshape of a channel shuffle does. A split keeps
    every outer slice: channel (a, b) is tied to (0, b), so pruning removes the same inner index
    from every outer slice and the shape stays a product. A Reshape's shape constant is rewritten
    where it spells the changed dimension out.
    """

    def reads_split(self, node) -> bool:
        """A Reshape regroups split axes (Flatten/Squeeze/Unsqueeze do not follow them)."""
        return node.op_type == "Reshape"

    def analyse(self, node, an) -> None:
        x = an.channels(node.input[0])
        if x is None:
            return
        self.reject_others(node, an, skip=(0, 1) if node.op_type in ("Reshape", "Squeeze", "Unsqueeze") else (0,))
        in_shape, out_shape = an.shape(node.input[0]), an.shape(node.output[0])
        if in_shape is None or out_shape is None or None in in_shape or None in out_shape:
            an.block(x.name, f"{node.op_type} '{node.name}': shapes unknown")
            return
        if x.split:  # view the split channel axes as one
            in_shape = in_shape[:x.axis] + [x.size] + in_shape[x.axis + 2:]
        mapping = map_reshape(in_shape, x.axis, out_shape)
        interleaved = mapping is None and not x.split and map_interleaved(in_shape, x.axis, out_shape)
        if interleaved:   # channels last, merged with the axes before them: channel c owns p*C + c
            mapping = (interleaved[0], interleaved[1], None)
        if mapping is None:
            an.block(x.name, f"{node.op_type} '{node.name}' mixes the channel axis with others "
                             f"({in_shape} -> {out_shape})")
            return
        out_axis, repeat, split = mapping
        if node.op_type == "Reshape":
            pos = out_axis + 1 if split else out_axis
            spot = shape_entry(node, an, pos)
            if spot is None:
                if not shape_follows_input(node, an, x, in_shape, pos, repeat, split):
                    an.block(x.name, f"Reshape '{node.name}' takes its target shape from a run-time "
                                     f"computation that does not follow the channel count")
                    return
            elif spot[2] == 0 and (split or x.split or pos != x.axis):
                an.block(x.name, f"Reshape '{node.name}' copies a dimension that pruning changes")
                return
        out = node.output[0]
        if an.register(out, out_axis, size=x.size * repeat, split=split) is None:
            an.block(x.name, f"{node.op_type} '{node.name}': output shape unknown")
            return
        idx = np.arange(x.size * repeat)
        an.tie(x.name, idx % x.size if interleaved else idx // repeat, out, idx)
        if split and split != x.split:
            _, inner = split
            an.tie(out, idx, out, idx % inner)

    def rewrite(self, node, rw) -> None:
        if node.op_type != "Reshape" or rw.kept(node.output[0]) is None:
            return
        out = rw.channels(node.output[0])
        kept = len(rw.kept(node.output[0]))
        pos, new = (out.axis + 1, kept // out.split[0]) if out.split else (out.axis, kept)
        spot = shape_entry(node, rw, pos)
        if spot is None:
            return  # computed from the input's own Shape at run time: follows the new count
        name, offset, value = spot
        if value > 0:
            const = rw.const(name).copy()
            const.reshape(-1)[offset] = new
            rw.set_const_by_name(node, name, const)


class Reduce(Rule):
    """Reductions over non-channel axes pass channels through; reducing the channel axis blocks."""

    def analyse(self, node, an) -> None:
        x = an.channels(node.input[0])
        if x is None:
            return
        rank = an.rank(x.name)
        axes = attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = an.index.const(node.input[1])
            if axes is None:
                an.block(x.name, f"{node.op_type} '{node.name}' reduces run-time axes")
                return
        if axes is None or len(axes) == 0:
            if attr(node, "noop_with_empty_axes", 0):
                return Rule.analyse(self, node, an)
            axes = list(range(rank))
        axes = [_norm_axis(int(a), rank) for a in axes]
        keep = attr(node, "keepdims", 1)
        if x.split:
            return self._split(node, an, x, axes, keep)
        if x.axis in axes:
            # the output has no channel axis left; what it computes changes with the channels kept
            an.approximate(x.name, f"{node.op_type} '{node.name}' reduces over the channel axis "
                                   f"(its value changes with the channels kept)")
            return
        out_axis = x.axis if keep else x.axis - sum(1 for a in axes if a < x.axis)
        if an.register(node.output[0], out_axis, like=x) is not None:
            an.tie_same(x.name, node.output[0])

    def reads_split(self, node) -> bool:
        """A reduction over the outer axis of split channels (the radix sum of split attention)."""
        return True

    @staticmethod
    def _split(node, an, x, axes, keep) -> None:
        """Channels split into (outer, inner): summing over the outer (radix) axis adds channels
        (a, b) of one inner index b, tied already: output channel b, exact. Over other axes the
        split stays; over the inner axis the reduction crosses channels (blocked)."""
        outer, inner = x.split
        before = sum(1 for a in axes if a < x.axis)
        if x.axis + 1 in axes:
            an.block(x.name, f"{node.op_type} '{node.name}' reduces over split channels")
            return
        if x.axis in axes:
            out_axis = x.axis + 1 if keep else x.axis - before
            if an.register(node.output[0], out_axis, size=inner) is None:
                an.block(x.name, f"{node.op_type} '{node.name}': output shape unknown")
                return
            idx = np.arange(x.size)
            an.tie(x.name, idx, node.output[0], idx % inner)
            return
        out_axis = x.axis if keep else x.axis - before
        if an.register(node.output[0], out_axis, like=x, split=x.split) is not None:
            an.tie_same(x.name, node.output[0])


class Resize(Rule):
    """Resize/Upsample: channel scale must be 1; a ``sizes`` input is rewritten."""

    def analyse(self, node, an) -> None:
        x = an.channels(node.input[0])
        if x is None:
            return
        self.reject_others(node, an, skip=(0,))
        rank = an.rank(x.name)
        pos = self._position(node, x.axis, rank)
        for slot in self._scale_slots(node, an):
            v = an.index.const(node.input[slot])
            if v is None and slot == 3 and pos is not None and follows_channel_count(node.input[3], pos, an, x):
                continue   # sizes like Concat(Shape(x)[:2], Shape(skip)[2:]): the count follows x's pruning
            if v is None:
                an.block(x.name, f"{node.op_type} '{node.name}' has run-time scales or sizes")
                return
            if v.size == 0 or pos is None:
                continue
            is_sizes = slot == 3
            if not is_sizes and float(v[pos]) != 1.0:
                an.block(x.name, f"{node.op_type} '{node.name}' resizes the channel axis")
                return
        scales_attr = attr(node, "scales")
        if scales_attr is not None and float(scales_attr[x.axis]) != 1.0:
            an.block(x.name, f"{node.op_type} '{node.name}' resizes the channel axis")
            return
        if an.register(node.output[0], x.axis, like=x) is not None:
            an.tie_same(x.name, node.output[0])

    @staticmethod
    def _position(node, axis, rank):
        axes = attr(node, "axes")
        if axes is None:
            return axis
        axes = [_norm_axis(a, rank) for a in axes]
        return axes.index(axis) if axis in axes else None

    @staticmethod
    def _scale_slots(node, an):
        if node.op_type == "Upsample":
            return [1] if len(node.input) > 1 and node.input[1] else []
        if an.opset < 11:
            return [1] if len(node.input) > 1 and node.input[1] else []
        return [s for s in (2, 3) if len(node.input) > s and node.input[s]]

    def rewrite(self, node, rw) -> None:
        keep = rw.kept(node.input[0])
        if keep is None or node.op_type != "Resize" or rw.opset < 11:
            return
        if len(node.input) > 3 and node.input[3]:
            sizes = rw.const(node.input[3])
            pos = self._position(node, rw.channels(node.input[0]).axis, len(rw.shape(node.input[0])))
            if sizes is not None and sizes.size and pos is not None:   # run-time sizes follow by themselves
                sizes = sizes.copy()
                sizes[pos] = len(keep)
                rw.set_const(node, 3, sizes)


class Expand(Rule):
    """Expand broadcasts to a shape: channels pass where the shape's entry on the channel axis is
    the channel count or 1, a constant (rewritten) or computed from the shape of a tensor with
    the same channels (ECA's ``expand_as(x)``: the shape evaluator shows that it follows them)."""

    def analyse(self, node, an) -> None:
        x = an.channels(node.input[0])
        if x is None:
            self.reject_others(node, an, skip=())
            return
        self.reject_others(node, an, skip=(0,))
        out_shape, rank = an.shape(node.output[0]), an.rank(x.name)
        target = an.shapes.get(node.input[1])
        if out_shape is None or target is None or len(target) != 1 or not isinstance(target[0], int):
            an.block(x.name, f"Expand '{node.name}': shapes unknown")
            return
        axis = x.axis + len(out_shape) - rank
        pos = axis - (len(out_shape) - target[0])
        if not self._follows(node, an, x, pos):
            an.block(x.name, f"Expand '{node.name}' expands the channel axis to a size that does not follow "
                             f"the channel count")
            return
        if an.register(node.output[0], axis, like=x) is not None:
            an.tie_same(x.name, node.output[0])

    @staticmethod
    def _follows(node, an, x, pos) -> bool:
        """Whether the target shape's entry `pos` (< 0: none) is 1 or the channel count, now and
        with one channel fewer, the other entries staying."""
        if pos < 0:
            return True
        value = an.index.const(node.input[1])
        if value is not None:
            return int(np.asarray(value).reshape(-1)[pos]) in (1, x.size)
        evaluate = shape_evaluator([node.input[1]], an, x)
        if evaluate is None or x.split:
            return False
        try:
            (now,), (fewer,) = evaluate(x.size), evaluate(x.size - 1)
        except Exception:   # noqa: BLE001 - a shape computation the evaluator cannot run stays blocked
            return False
        same = np.array_equal(np.delete(now, pos), np.delete(fewer, pos))
        return bool(same and (now[pos], fewer[pos]) in ((1, 1), (x.size, x.size - 1)))

    def rewrite(self, node, rw) -> None:
        keep = rw.kept(node.input[0])
        value = rw.const(node.input[1]) if keep is not None else None
        if value is None:
            return   # computed at run time from a shape that follows the pruned count
        x = rw.channels(node.input[0])
        pos = x.axis + len(rw.shape(node.output[0])) - len(rw.shape(node.input[0])) - \
            (len(rw.shape(node.output[0])) - value.size)
        if 0 <= pos < value.size and int(value[pos]) == x.size and x.size > 1:
            value = value.copy()
            value[pos] = len(keep)
            rw.set_const(node, 1, value)


class Pad(Rule):
    """Pad must not pad the channel axis."""

    def analyse(self, node, an) -> None:
        x = an.channels(node.input[0])
        if x is None:
            return
        self.reject_others(node, an, skip=(0,))
        rank = an.rank(x.name)
        pads = attr(node, "pads") if an.opset < 11 else an.index.const(node.input[1])
        if pads is None:
            pads = self._shape_pads(node, an, x)
        if pads is None:
            an.block(x.name, f"Pad '{node.name}' has run-time pads")
            return
        pads = list(pads)
        axes = list(range(rank))
        if an.opset >= 18 and len(node.input) > 3 and node.input[3]:
            v = an.index.const(node.input[3])
            if v is None:
                an.block(x.name, f"Pad '{node.name}' has run-time axes")
                return
            axes = [_norm_axis(int(a), rank) for a in v]
        n = len(axes)
        for i, a in enumerate(axes):
            if a == x.axis and (pads[i] != 0 or pads[i + n] != 0):
                an.block(x.name, f"Pad '{node.name}' pads the channel axis")
                return
        if an.register(node.output[0], x.axis, like=x) is not None:
            an.tie_same(x.name, node.output[0])

    @staticmethod
    def _shape_pads(node, an, x):
        """Run-time pads computed from Shape(x) and constants (TF-style "same" padding: timm's
        Conv2dSame, efficientnet_pytorch): their values, when the shape evaluator shows that they
        stay the same with fewer channels; else None."""
        evaluate = shape_evaluator([node.input[1]], an, x)
        if evaluate is None:
            return None
        step = x.split[0] if x.split else 1
        try:
            (now,), (fewer,) = evaluate(x.size), evaluate(x.size - step)
        except Exception:   # noqa: BLE001 - a shape computation the evaluator cannot run stays blocked
            return None
        return [int(v) for v in now] if np.array_equal(now, fewer) else None


_UNARY = [
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Mish", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Erf", "Gelu", "ThresholdedRelu", "Clip", "Abs", "Neg", "Exp", "Log", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Cast", "Dropout", "Not",
    "IsNaN", "IsInf", "Shrink", "CastLike",
]
_BROADCAST = ["Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu", "Equal", "Greater",
              "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod", "BitShift"]
_REDUCE = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]

RULES: dict[str, Rule] = {
    **{op: Passthrough() for op in _UNARY},
    **{op: Broadcast() for op in _BROADCAST},
    **{op: Reduce() for op in _REDUCE},
    **{op: Pool() for op in ["MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
                             "GlobalLpPool", "MaxRoiPool"]},
    "BatchNormalization": Normalization(batch=True),
    "InstanceNormalization": Normalization(batch=False),
    "Conv": Conv(),
    "ConvTranspose": ConvTranspose(),
    "Gemm": Gemm(),
    "MatMul": MatMul(),
    "Concat": Concat(),
    "Split": Split(),
    "Slice": Slice(),
    "Transpose": Transpose(),
    "Reshape": Reshape(),
    "Flatten": Reshape(),
    "Squeeze": Reshape(),
    "Unsqueeze": Reshape(),
    "Resize": Resize(),
    "Upsample": Resize(),
    "Pad": Pad(),
    "Shape": ShapeRead(),
    "Size": ShapeRead(),
    "Softmax": AxisGuarded(-1, "normalises over the channel axis"),
    "LogSoftmax": AxisGuarded(-1, "normalises over the channel axis"),
    "Hardmax": AxisGuarded(-1, "normalises over the channel axis"),
    "LayerNormalization": LayerNorm(),
    "ArgMax": AxisGuarded(0, "picks along the channel axis", reduces=True),
    "ArgMin": AxisGuarded(0, "picks along the channel axis", reduces=True),
    "LRN": Barrier("normalises across neighbouring channels"),
    "GroupNormalization": Barrier("normalises over groups of channels"),
    "LpNormalization": Barrier("normalises across channels"),
    "MeanVarianceNormalization": Barrier("normalises with statistics that may span channels"),
    "DepthToSpace": Barrier("moves channels into space"),
    "SpaceToDepth": Barrier("moves space into channels"),
    "Gather": Barrier("indexes channels (not supported yet)"),
    "Expand": Expand(),
    "Tile": Barrier("repeats channels (not supported yet)"),
    "Einsum": Barrier("contracts arbitrary axes"),
}


def rule_for(node) -> Rule | None:
    """The rule of `node`, or None when its op (or custom domain) is unknown."""
    if node.domain not in ("", "ai.onnx"):
        return None
    return RULES.get(node.op_type)


_UNKNOWN = Rule()   # answers every question of an op outside the table: no filters, no layout


def rule_or_default(node) -> Rule:
    """The rule of `node`, or a plain `Rule` (every property False) when its op is unknown."""
    return rule_for(node) or _UNKNOWN


def is_batchnorm(node) -> bool:
    """Whether `node` is a (standard-domain) BatchNormalization."""
    return rule_or_default(node).is_batchnorm
