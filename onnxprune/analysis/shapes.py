"""Run-time shape arithmetic around channel tensors: Reshape targets, chunk bounds, Shape reads.

Exported CNNs often compute shapes at run time (``x.view(n, c // g, ...)`` becomes
Shape -> Gather -> Div -> Concat -> Reshape). These helpers decide, from the static shapes and by
evaluating the small shape subgraph with onnx.reference, whether such a computation follows a
channel count when pruning changes it, and where a Reshape's target spells a dimension out.
"""

from __future__ import annotations

import numpy as np

from .graph import attr


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


_SHAPE_PASS = {"Unsqueeze", "Squeeze", "Cast", "Identity", "Concat", "Div", "Mul", "Add", "Sub", "Floor", "Ceil"}


def count_escapes(tensor, pos, x, an, depth) -> str | None:
    """Where a tensor holding `x`'s channel count (at element `pos`, None: unknown) is used unsafely."""
    if depth > 32:
        return "a long shape computation"
    if tensor in an.index.outputs:
        return "a graph output"
    for user, slot in an.index.consumers.get(tensor, []):
        op = user.op_type
        if op in ("Gather", "Slice") and slot == 0:
            picked = _picks(user, an, pos)
            if picked is False:
                continue
            nxt = picked if isinstance(picked, int) and picked is not True else None
            found = count_escapes(user.output[0], nxt, x, an, depth + 1)
        elif op in _SHAPE_PASS:
            found = count_escapes(user.output[0], pos if op in ("Cast", "Identity") else None, x, an, depth + 1)
        elif (op == "Reshape" and slot == 1 or op == "Slice" and slot in (1, 2)) and an.channels(user.input[0]):
            continue  # the Reshape/Slice rules check that these values follow the channel count
        elif op == "Expand" and slot == 1 and an.channels(user.input[0]):
            continue  # the Expand rule checks that the shape follows the channel count (or is 1 there)
        elif op == "Pad" and slot == 1 and an.channels(user.input[0]):
            continue  # run-time pads: the Pad rule checks that they do not follow the channel count
        elif op == "Resize" and slot == 3 and user.input[0] == x.name:
            continue  # sizes of x's own resize: the Resize rule checks that they follow x's channel count
        else:
            return f"{op} '{user.name}'"
        if found:
            return found
    return None


def _picks(node, an, pos):
    """Whether a Gather/Slice on a 1-D shape vector takes element `pos` (True/False/new position)."""
    if pos is None:
        return True
    vec = an.shape(node.input[0])
    length = vec[0] if vec is not None and len(vec) == 1 and isinstance(vec[0], int) else None
    if node.op_type == "Gather":
        idx = an.index.const(node.input[1])
        if idx is None:
            return True
        idx = [int(i) for i in np.asarray(idx).reshape(-1)]
        if length is not None:   # x.shape[-2] picks from the end of the shape vector
            idx = [i + length if i < 0 else i for i in idx]
        if pos not in idx and all(i >= 0 for i in idx):
            return False
        return True if np.asarray(an.index.const(node.input[1])).ndim else True
    starts = an.index.const(node.input[1]) if len(node.input) > 1 else None
    ends = an.index.const(node.input[2]) if len(node.input) > 2 else None
    steps = an.index.const(node.input[4]) if len(node.input) > 4 and node.input[4] else None
    if starts is None or ends is None or (steps is not None and int(steps[0]) != 1) or starts.size != 1:
        return True
    lo, hi = int(starts[0]), int(ends[0])
    if length is not None:   # x.shape[-2:]: bounds from the end of the shape vector, clamped
        lo, hi = (max(0, b + length) if b < 0 else min(b, length) for b in (lo, hi))
    if lo >= 0 and hi >= 0 and not lo <= pos < hi:
        return False
    return pos - lo if lo >= 0 else True


def map_reshape(in_shape, axis, out_shape):
    """Where channel axis `axis` of `in_shape` lands in `out_shape`.

    Returns:
        ``(out_axis, repeat, split)``: channel c becomes features ``c*repeat + s`` on ``out_axis``;
        `split` = (outer, inner) when the channel axis becomes the two axes ``out_axis, out_axis+1``.
        None when the channel axis is mixed with earlier axes.
    """
    c = in_shape[axis]
    prefix = int(np.prod(in_shape[:axis], dtype=np.int64))
    acc = 1
    for k, d in enumerate(out_shape):
        if acc == prefix:
            if d == c:
                return k, 1, None
            if d > c and d % c == 0:
                rest, trailing = d // c, 1
                for t in in_shape[axis + 1:]:
                    trailing *= t
                    if trailing == rest:
                        return k, rest, None
                    if trailing > rest:
                        break
            if 1 < d < c and c % d == 0 and k + 1 < len(out_shape) and out_shape[k + 1] == c // d:
                return k, 1, (d, c // d)
        acc *= d
        if acc > prefix:
            break
    return None


def map_interleaved(in_shape, axis, out_shape):
    """Where channel axis `axis` lands when it is merged with the axes *before* it, as an NHWC
    flatten ``[N, H, W, C] -> [N, H*W*C]`` does: channel c then owns features ``p*C + c``.

    Returns:
        ``(out_axis, repeat)`` (p < repeat), or None when the channel axis is not the fastest
        varying part of one output axis (nothing but size-1 axes after it on either side).
    """
    c = in_shape[axis]
    if int(np.prod(in_shape[axis + 1:], dtype=np.int64)) != 1:
        return None
    acc = 1
    for k, d in enumerate(out_shape):
        if int(np.prod(out_shape[k + 1:], dtype=np.int64)) == 1:
            for j in range(axis):
                merged = int(np.prod(in_shape[j:axis + 1], dtype=np.int64))
                if int(np.prod(in_shape[:j], dtype=np.int64)) == acc and d == merged and merged > c:
                    return k, merged // c
        acc *= d
    return None


PASS_THROUGH = ("Cast", "Identity")   # tf2onnx casts a Reshape's shape to int32 and back


def pass_through_producer(index, name):
    """The producer of `name`, looking through Cast/Identity nodes whose outputs (`name` included)
    nothing else reads, so a constant changed behind them changes nothing else."""
    producer = index.producer.get(name)
    if producer is None or producer.op_type not in PASS_THROUGH or len(index.consumers.get(name, [])) != 1 \
            or name in index.outputs:
        return producer
    while (producer is not None and producer.op_type in PASS_THROUGH and producer.input[0]
           and len(index.consumers.get(producer.input[0], [])) == 1 and producer.input[0] not in index.outputs
           and not index.is_const(producer.input[0])):
        producer = index.producer.get(producer.input[0])
    return producer


def shape_entry(node, ctx, out_axis):
    """Locate the element of a Reshape's shape input that sets dimension `out_axis`.

    Returns ``(tensor_name, position, value)`` or None when it is computed at run time. The shape
    may be a constant, or a Concat of 1-D pieces whose relevant piece is constant.
    """
    shape_name = node.input[1] if len(node.input) > 1 else None
    if not shape_name:
        return None
    value = ctx.index.const(shape_name)
    if value is not None:
        return (shape_name, out_axis, int(value[out_axis])) if out_axis < value.size else None
    producer = pass_through_producer(ctx.index, shape_name)
    if producer is None or producer.op_type != "Concat":
        return None
    offset = 0
    for piece in producer.input:
        shape = ctx.shape(piece)
        if shape is None or len(shape) != 1 or shape[0] is None:
            return None
        if offset <= out_axis < offset + shape[0]:
            v = ctx.index.const(piece)
            if v is None:
                return None
            return piece, out_axis - offset, int(v.reshape(-1)[out_axis - offset])
        offset += shape[0]
    return None


SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Div", "Mul", "Add", "Sub", "Cast",
             "Slice", "Identity", "Floor", "Ceil",
             # TF-style "same" pads (timm's pad_same): max(..., 0) as Clip/Max, and F.pad's reordering
             # of the pads vector (ConstantOfShape, Reshape, Slice with step -1, Transpose)
             "Clip", "Max", "Min", "Neg", "Abs", "Mod", "ConstantOfShape", "Reshape", "Transpose"}


def shape_subgraph(targets: list[str], an, shape_read) -> tuple[list, list] | None:
    """The nodes computing `targets` from Shape reads and constants, in graph order, and the Shape
    nodes themselves; None when anything else feeds them or `shape_read(shape_node)` refuses one."""
    nodes, shape_nodes, stack, seen = [], [], list(targets), set()
    while stack:
        name = stack.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if an.index.is_const(name):
            continue
        producer = an.index.producer.get(name)
        if producer is None or producer.op_type not in SHAPE_OPS or producer.domain not in ("", "ai.onnx"):
            return None
        if producer.op_type == "Shape":
            if shape_read(producer):
                shape_nodes.append(producer)
                continue
            inner = an.index.producer.get(producer.input[0])
            if an.channels(producer.input[0]) is not None or inner is None or inner.op_type not in SHAPE_OPS:
                return None
            # the shape of a value computed here from shapes (F.pad's pads vector): evaluated too
        nodes.append(producer)
        stack.extend(producer.input)
    order = {id(n): i for i, n in enumerate(an.index.model.graph.node)}
    nodes.sort(key=lambda n: order[id(n)])
    return nodes, shape_nodes


def shape_evaluator(targets: list[str], an, x):
    """A function channels -> values of `targets`, when they are computed only from Shape(x) and constants.

    The small shape subgraph (Shape -> Gather/Div/Concat/... of constants) is evaluated with
    onnx.reference for a hypothetical channel count of `x`. Returns None when the targets
    depend on anything else (another tensor's shape, run-time data).
    """
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    def shape_read(shape_node) -> bool:
        if shape_node.input[0] == x.name:
            return True
        # the shape of another tensor with as many channels: fine if pruning keeps them equal
        other = an.channels(shape_node.input[0])
        if other is None or other.split or other.size != x.size:
            return False
        an.same_count(other.name, x.name)
        return True

    found = shape_subgraph(targets, an, shape_read)
    if found is None or not found[1]:
        return None
    nodes, shape_nodes = found
    outer = x.split[0] if x.split else 1

    def evaluate(channels: int) -> list[np.ndarray]:
        feeds = []
        for sn in shape_nodes:
            t = an.channels(sn.input[0])
            shape = list(an.shape(t.name))
            if t.split:
                shape[t.axis + 1] = channels // outer
            else:
                shape[t.axis] = channels
            start, end = attr(sn, "start", 0), attr(sn, "end", None)
            feeds.append(numpy_helper.from_array(np.array(shape[start:end], dtype=np.int64), sn.output[0]))
        consts = {i for n in nodes for i in n.input if an.index.is_const(i)}
        inits = feeds + [numpy_helper.from_array(an.index.const(c), c) for c in consts]
        outs = [onnx_value(t) for t in targets]
        g = helper.make_graph(nodes, "shape", [], outs, initializer=inits)
        m = helper.make_model(g, opset_imports=list(an.index.model.opset_import),
                              ir_version=max(an.index.model.ir_version, 4))
        return [np.asarray(v).reshape(-1) for v in ReferenceEvaluator(m).run(None, {})]

    return evaluate


def follows_channel_count(target: str, pos: int, an, x) -> bool:
    """True when element `pos` of the run-time shape vector `target` is always `x`'s channel count.

    `target` must be computed from Shape reads of statically shaped tensors and constants only
    (e.g. ``Concat(Shape(x)[:2], Shape(skip)[2:])``, the sizes of ``F.interpolate(x,
    size=skip.shape[2:])``). The shape subgraph is evaluated with onnx.reference as it is, with
    one channel fewer in `x` (element `pos` must follow it and no other element may move), and
    with one channel fewer in every other channel tensor whose shape is read (nothing may move).
    """
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    if x.split:
        return False
    found = shape_subgraph([target], an, lambda sn: an.shape(sn.input[0]) is not None
                           and None not in an.shape(sn.input[0]))
    if found is None:
        return False
    nodes, shape_nodes = found
    consts = [numpy_helper.from_array(an.index.const(c), c) for c in {i for n in nodes for i in n.input
                                                                     if i and an.index.is_const(i)}]

    def evaluate(fewer: str | None) -> np.ndarray:
        feeds = []
        for sn in shape_nodes:
            shape = list(an.shape(sn.input[0]))
            t = an.channels(sn.input[0])
            if sn.input[0] == fewer and t is not None:
                shape[t.axis] -= 1
            start, end = attr(sn, "start", 0), attr(sn, "end", None)
            feeds.append(numpy_helper.from_array(np.array(shape[start:end], dtype=np.int64), sn.output[0]))
        if not nodes:   # the target is a Shape output itself
            return numpy_helper.to_array(next(f for f in feeds if f.name == target)).reshape(-1)
        g = helper.make_graph(nodes, "shape", [], [onnx_value(target)], initializer=feeds + consts)
        m = helper.make_model(g, opset_imports=list(an.index.model.opset_import),
                              ir_version=max(an.index.model.ir_version, 4))
        return np.asarray(ReferenceEvaluator(m).run(None, {})[0]).reshape(-1)

    try:
        now, smaller = evaluate(None), evaluate(x.name)
        others = [evaluate(sn.input[0]) for sn in shape_nodes
                  if sn.input[0] != x.name and an.channels(sn.input[0]) is not None]
    except Exception:
        return False
    if pos >= now.size or now[pos] != x.size or smaller.size != now.size or smaller[pos] != x.size - 1:
        return False
    return (np.array_equal(np.delete(now, pos), np.delete(smaller, pos))
            and all(np.array_equal(o, now) for o in others))


def shape_follows_input(node, an, x, in_shape, pos, repeat, split) -> bool:
    """True when a Reshape's run-time shape is computed from Shape(x) and follows x's channel count.

    The shape is evaluated with x's real channel count and with one unit fewer; the entry at
    `pos` must move exactly as pruning requires and the others must stay.
    """
    evaluate = shape_evaluator([node.input[1]], an, x)
    if evaluate is None:
        return False
    # one unit less: a split (new or inherited) loses one inner index in every outer slice
    step = split[0] if split else (x.split[0] if x.split else 1)
    try:
        (now,), (fewer,) = evaluate(x.size), evaluate(x.size - step)
    except Exception:
        return False
    if pos >= now.size:
        return False
    expect_now = x.size // split[0] if split else x.size * repeat
    expect_fewer = (x.size - step) // split[0] if split else (x.size - step) * repeat
    same_elsewhere = np.array_equal(np.delete(now, pos), np.delete(fewer, pos))
    ok_now = now[pos] in (expect_now, -1)
    ok_fewer = fewer[pos] in (expect_fewer, -1) and (now[pos] == -1) == (fewer[pos] == -1)
    return bool(same_elsewhere and ok_now and ok_fewer)


def onnx_value(name):
    """An untyped ValueInfo (graph output of a helper model)."""
    import onnx

    return onnx.ValueInfoProto(name=name)
