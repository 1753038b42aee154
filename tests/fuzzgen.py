"""Seeded generator of random, valid CNN graphs built from the ops of the op-rule table (issue 6).

``random_cnn(seed)`` returns an ``onnx.ModelProto``; the same seed always gives the same model.
A graph is a random sequence of *blocks* (see BLOCKS) applied to a pool of live NCHW tensors, so
later blocks read earlier tensors and branches appear: Conv with random group (1, depthwise or a
divisor), kernel 1/3/5, stride 1/2, dilation 1/2, explicit or SAME_UPPER padding, with/without
bias; BatchNormalization; activations (Relu, LeakyRelu, Sigmoid, HardSigmoid, HardSwish at opset
>= 14, Tanh, Clip with min/max inputs, per-channel PRelu, SiLU as Mul+Sigmoid); residual
Add/Sub/Max (also x+x, Sum/Mean of three); Concat on channels (also one tensor twice); Split
(opset-13 split input, opset-11 attribute, equal split; sometimes an unread output); Slice on
channels (negative/INT64_MAX bounds, with or without axes/steps, sometimes step 2); SE gates;
Max/AveragePool; nearest Resize by scales, constant sizes (static batch) or run-time sizes
(Concat(Shape(x)[:2], [H, W]), sometimes the Shape of another tensor); channel-wise
constants; Flatten/GlobalAveragePool + Gemm (or MatMul+Add) heads; convs sharing a weight (and
bias); and, beyond the issue's list, ConvTranspose, channel shuffle, Pad, InstanceNormalization,
ReduceMean/Max gates and channels-last MatMul; then (EXTRA_BLOCKS, their own random stream, so the
graphs above are unchanged with ``extras=False``) ArgMax/ArgMin gates, LpPool/GlobalLpPool, Pow,
comparison and logical gates, ReduceSum with noop_with_empty_axes, barrier ops (DepthToSpace,
SpaceToDepth, Tile, Expand, Einsum, LpNormalization), Gemm heads with a per-row bias, and, in most
opset-17 graphs lifted to opset 18 (Reduce axes as inputs, Split num_outputs), Resize with `axes`.
Constants are initializers or, in some graphs,
Constant nodes. 1-2 inputs [N ('N' dynamic or 1/2), C 2-8, H/W 6-16]; opset 13 (some 11/17);
IR 7/8. Every leaf tensor becomes a graph output (most graphs first end their leaves in a conv
or a head), and a few intermediate tensors do too.

Validity: each candidate is checked with ``onnx.checker`` (full check), strict shape inference
(the inferred output shapes must equal the ones this module tracked) and one onnxruntime run.
A candidate that fails is *discarded* and the generator retries with the next attempt of the
same seed; ``generate`` returns the discards with their reasons so callers can count them.

Shrinking support: ``generate(seed, n_blocks=k)`` builds the first `k` blocks of the same seed
(the prefix is identical), and ``skip={i, ...}`` leaves blocks out (later blocks draw from
their own per-block random streams, so they stay as close as possible to the original).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INT64_MAX = int(np.iinfo(np.int64).max)
MAX_ATTEMPTS = 20
MAX_BLOCKS = 10


@dataclass
class T:
    """A live NCHW tensor of the pool."""

    name: str
    c: int
    h: int
    w: int
    uses: int = 0
    is_input: bool = False
    may_dangle: bool = False  # an unused Split output that need not become a graph output


@dataclass
class Info:
    """How a model was generated: seed, attempt, options, blocks, and the discarded attempts."""

    seed: int
    attempt: int = 0
    opset: int = 13
    ir_version: int = 8
    dynamic_batch: bool = False
    blocks: list[str] = field(default_factory=list)
    discards: list[str] = field(default_factory=list)


class _Gen:
    def __init__(self, rng: np.random.Generator, opset: int, batch, const_node_p: float,
                 xrng: np.random.Generator | None = None):
        self.rng = rng
        self.xrng = xrng  # the stream of the extra ops (None: the graph of the original generator)
        self.opset = opset
        self.batch = batch  # int or "N"
        self.const_node_p = const_node_p
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.pool: list[T] = []
        self.heads: list[tuple[str, list]] = []  # rank-2 graph outputs (name, shape)
        self.n = 0

    # ---- names, constants, nodes -----------------------------------------------------------
    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, value, prefix: str = "w", node_p: float | None = None) -> str:
        """A constant: an initializer, or (sometimes) the output of a Constant node."""
        value = np.asarray(value)
        name = self.name(prefix)
        p = self.const_node_p if node_p is None else node_p
        tensor = numpy_helper.from_array(value, name)
        if self.rng.random() < p:
            self.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_const", value=tensor))
        else:
            self.inits.append(tensor)
        return name

    def f32(self, value, prefix="w"):
        return self.const(np.asarray(value, dtype=np.float32), prefix)

    def i64(self, value, prefix="k"):
        return self.const(np.asarray(value, dtype=np.int64), prefix)

    def node(self, op: str, inputs, prefix: str | None = None, n_out: int = 1, **attrs):
        base = self.name(prefix or op.lower())
        outs = [base] if n_out == 1 else [f"{base}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=base, **attrs))
        return outs[0] if n_out == 1 else outs

    def use(self, *ts: T) -> None:
        for t in ts:
            t.uses += 1

    def add(self, name: str, c: int, h: int, w: int, **kw) -> T:
        t = T(name, c, h, w, **kw)
        self.pool.append(t)
        return t

    # ---- picking inputs ----------------------------------------------------------------------
    def pick(self, cond=None) -> T | None:
        """A pool tensor: usually the newest unread one, sometimes any (a branch)."""
        cands = [t for t in self.pool if cond is None or cond(t)]
        if not cands:
            return None
        r = self.rng.random()
        fresh = [t for t in cands if t.uses == 0]
        if fresh and r < 0.85:
            return fresh[-1] if r < 0.55 else fresh[int(self.rng.integers(len(fresh)))]
        return cands[int(self.rng.integers(len(cands)))]

    def pick_feature(self, cond=None) -> T | None:
        """Like `pick`, but prefers tensors that are not graph inputs."""
        t = self.pick(lambda t: not t.is_input and (cond is None or cond(t)))
        return t if t is not None else self.pick(cond)


# ---- output-size helpers -------------------------------------------------------------------------

def _out_explicit(size, k, s, d, pb, pe, ceil=False):
    eff = (k - 1) * d + 1
    num = size + pb + pe - eff
    if num < 0:
        return 0
    if ceil:
        return -(-num // s) + 1
    return num // s + 1


def _out_same(size, s):
    return -(-size // s)


def _spatial(g: _Gen, h, w, k, s, d, keep=False):
    """Choose padding attributes; returns (attrs, out_h, out_w) or None when the kernel cannot fit.

    `keep` (stride 1, odd kernel): only paddings that keep the spatial size.
    """
    rng = g.rng
    eff = (k - 1) * d + 1
    if d == 1 and rng.random() < 0.25:  # onnxruntime: no dilation with auto_pad SAME_*
        return {"auto_pad": "SAME_UPPER"}, _out_same(h, s), _out_same(w, s)
    lim = eff - 1
    if keep or rng.random() < 0.6:
        p = min((eff - 1) // 2, lim)
        pads = [p, p, p, p]
    else:
        pads = [int(rng.integers(0, lim + 1)) for _ in range(4)]
    oh = _out_explicit(h, k, s, d, pads[0], pads[2])
    ow = _out_explicit(w, k, s, d, pads[1], pads[3])
    if oh < 1 or ow < 1:
        return None
    attrs = {"pads": pads} if any(pads) or rng.random() < 0.5 else {}
    return attrs, oh, ow


# ---- blocks ---------------------------------------------------------------------------------------

def _conv_weight(rng, c_out, c_in_per_group, k):
    fan = c_in_per_group * k * k
    return (rng.standard_normal((c_out, c_in_per_group, k, k)) * np.sqrt(2.0 / fan)).astype(np.float32)


def _channels(rng, lo=2, hi=16):
    return int(rng.integers(lo, hi + 1))


def conv(g: _Gen, x: T | None = None, c_out=None, groups=None, k=None, s=None, d=None,
         weight: str | None = None, bias=None, keep=False) -> T | None:
    rng = g.rng
    x = x or g.pick_feature()
    c_in = x.c
    kind = rng.random() if groups is None else None
    if groups is None:
        if kind < 0.6:
            groups = 1
        elif kind < 0.8:
            groups = c_in  # depthwise
        else:
            divs = [q for q in range(2, c_in) if c_in % q == 0]
            groups = int(rng.choice(divs)) if divs else 1
    if c_out is None:
        if groups == 1:
            c_out = _channels(rng)
        elif groups == c_in:
            c_out = c_in * int(rng.choice([1, 1, 2]))
        else:
            c_out = groups * int(rng.integers(1, max(2, 16 // groups) + 1))
    k = k or int(rng.choice([1, 3, 3, 5]))
    s = s or int(rng.choice([1, 1, 1, 2]))
    d = d or (int(rng.choice([1, 1, 1, 2])) if k > 1 else 1)
    sp = _spatial(g, x.h, x.w, k, s, d, keep)
    if sp is None:  # the kernel does not fit: SAME_UPPER padding always does
        d = 1
        sp = {"auto_pad": "SAME_UPPER"}, _out_same(x.h, s), _out_same(x.w, s)
    attrs, oh, ow = sp
    if weight is None:
        weight = g.f32(_conv_weight(rng, c_out, c_in // groups, k), "W")
    ins = [x.name, weight]
    if isinstance(bias, str):
        ins.append(bias)
    elif bias if bias is not None else rng.random() < 0.6:
        ins.append(g.f32(rng.normal(0, 0.1, c_out), "Bc"))
    attrs = dict(attrs, kernel_shape=[k, k])
    if s != 1 or rng.random() < 0.3:
        attrs["strides"] = [s, s]
    if d != 1:
        attrs["dilations"] = [d, d]
    if groups != 1:
        attrs["group"] = groups
    g.use(x)
    out = g.node("Conv", ins, "conv", **attrs)
    return g.add(out, c_out, oh, ow)


def bn(g: _Gen, x: T | None = None) -> T:
    rng = g.rng
    x = x or g.pick_feature()
    c = x.c
    params = [g.f32(rng.uniform(0.5, 1.5, c), "bn_s"), g.f32(rng.normal(0, 0.2, c), "bn_b"),
              g.f32(rng.normal(0, 0.5, c), "bn_m"), g.f32(rng.uniform(0.5, 2.0, c), "bn_v")]
    g.use(x)
    attrs = {"epsilon": float(rng.choice([1e-5, 1e-3]))} if rng.random() < 0.5 else {}
    out = g.node("BatchNormalization", [x.name, *params], "bn", **attrs)
    return g.add(out, c, x.h, x.w)


ACTS = ["Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "PRelu", "SiLU"]


def act(g: _Gen, x: T | None = None, kind: str | None = None) -> T:
    rng = g.rng
    x = x or g.pick_feature()
    choices = [a for a in ACTS if a != "HardSwish" or g.opset >= 14]
    kind = kind or str(rng.choice(choices))
    g.use(x)
    if kind == "LeakyRelu":
        out = g.node("LeakyRelu", [x.name], "lrelu", alpha=float(rng.choice([0.01, 0.1, 0.2])))
    elif kind == "HardSigmoid":
        out = g.node("HardSigmoid", [x.name], "hsig", alpha=float(rng.choice([0.2, 1 / 6])), beta=0.5)
    elif kind == "Clip":
        lo = g.f32(np.float32(rng.choice([0.0, -1.0])), "clip_lo") if rng.random() < 0.8 else ""
        hi = g.f32(np.float32(rng.choice([1.0, 6.0])), "clip_hi") if rng.random() < 0.8 else ""
        ins = [x.name, lo, hi]
        while ins and ins[-1] == "":
            ins.pop()
        out = g.node("Clip", ins, "clip")
    elif kind == "PRelu":
        r = rng.random()
        slope = rng.uniform(0.05, 0.3, (x.c, 1, 1)) if r < 0.75 else (
            rng.uniform(0.05, 0.3, (1,)) if r < 0.9 else rng.uniform(0.05, 0.3, (1, x.c, 1, 1)))
        out = g.node("PRelu", [x.name, g.f32(slope, "slope")], "prelu")
    elif kind == "SiLU":
        sig = g.node("Sigmoid", [x.name], "sig")
        out = g.node("Mul", [x.name, sig] if rng.random() < 0.5 else [sig, x.name], "silu")
    else:
        out = g.node(kind, [x.name], kind.lower())
    return g.add(out, x.c, x.h, x.w)


def conv_bn_act(g: _Gen) -> T:
    y = conv(g)
    if g.rng.random() < 0.7:
        y = bn(g, y)
    if g.rng.random() < 0.8:
        y = act(g, y)
    return y


def residual(g: _Gen) -> T | None:
    """Add/Sub/Max of two same-shaped tensors: an existing pair, or a fresh conv-bn-act-conv body."""
    rng = g.rng
    op = str(rng.choice(["Add", "Add", "Add", "Sub", "Max"]))
    pairs = [(a, b) for i, a in enumerate(g.pool) for b in g.pool[i + 1:]
             if (a.c, a.h, a.w) == (b.c, b.h, b.w)]
    if pairs and rng.random() < 0.4:
        a, b = pairs[int(rng.integers(len(pairs)))]
    else:
        a = g.pick_feature()
        y = conv(g, a, c_out=a.c, groups=int(rng.choice([1, 1, a.c])), s=1, k=int(rng.choice([1, 3])), keep=True)
        assert (y.h, y.w) == (a.h, a.w)
        if rng.random() < 0.6:
            y = bn(g, y)
        if rng.random() < 0.5:
            y = act(g, y)
        b = y
    r = rng.random()
    if r < 0.08:
        b = a  # x + x
    g.use(a, b)
    ins = [a.name, b.name] if rng.random() < 0.5 else [b.name, a.name]
    if r > 0.9:  # a variadic Sum/Mean with a third operand
        op = str(rng.choice(["Sum", "Mean"]))
        third = [t for t in g.pool if (t.c, t.h, t.w) == (a.c, a.h, a.w)]
        c = third[int(rng.integers(len(third)))]
        g.use(c)
        ins.append(c.name)
    out = g.node(op, ins, op.lower())
    res = g.add(out, a.c, a.h, a.w)
    if rng.random() < 0.5:
        res = act(g, res, "Relu")
    return res


def concat(g: _Gen) -> T | None:
    rng = g.rng
    a = g.pick_feature()
    same = [t for t in g.pool if (t.h, t.w) == (a.h, a.w)]
    n = int(rng.choice([2, 2, 3]))
    parts = [a] + [same[int(rng.integers(len(same)))] for _ in range(n - 1)]
    if rng.random() < 0.15:
        parts = [a, a]  # the same tensor twice
    order = list(rng.permutation(len(parts)))
    parts = [parts[i] for i in order]
    g.use(*parts)
    axis = 1 if rng.random() < 0.8 else -3
    out = g.node("Concat", [p.name for p in parts], "cat", axis=axis)
    return g.add(out, sum(p.c for p in parts), a.h, a.w)


def split(g: _Gen) -> T | None:
    rng = g.rng
    x = g.pick_feature(lambda t: t.c >= 2)
    if x is None:
        return None
    n = int(rng.integers(2, min(3, x.c) + 1))
    equal = x.c % n == 0 and rng.random() < 0.3
    if equal:
        sizes = [x.c // n] * n
    else:
        cuts = sorted(rng.choice(np.arange(1, x.c), size=n - 1, replace=False).tolist())
        sizes = [b - a for a, b in zip([0] + cuts, cuts + [x.c])]
    axis = 1 if rng.random() < 0.8 else -3
    g.use(x)
    if equal:
        outs = g.node("Split", [x.name], "split", n_out=n, axis=axis)
    elif g.opset < 13:
        outs = g.node("Split", [x.name], "split", n_out=n, axis=axis, split=sizes)
    else:
        outs = g.node("Split", [x.name, g.i64(sizes, "split_sizes")], "split", n_out=n, axis=axis)
    ts = [g.add(o, c, x.h, x.w) for o, c in zip(outs, sizes)]
    if n > 1 and rng.random() < 0.3:  # one output nobody reads
        ts[int(rng.integers(n))].may_dangle = True
    return ts[-1]


def slice_(g: _Gen) -> T | None:
    rng = g.rng
    x = g.pick_feature(lambda t: t.c >= 2)
    if x is None:
        return None
    start = int(rng.integers(0, x.c - 1))
    end = int(rng.integers(start + 1, x.c + 1))
    c = end - start
    r = rng.random()
    s_start = start - x.c if r < 0.25 else start  # negative start
    s_end = INT64_MAX if end == x.c and rng.random() < 0.5 else (end - x.c if end < x.c and r > 0.75 else end)
    axis = 1 if rng.random() < 0.75 else -3
    starts, ends, axes = [s_start], [s_end], [axis]
    h, w = x.h, x.w
    if x.h > 2 and rng.random() < 0.25:  # also crop the height
        starts.append(1)
        ends.append(x.h)
        axes.append(2)
        h = x.h - 1
    ins = [x.name, g.i64(starts, "sl_s"), g.i64(ends, "sl_e")]
    r = rng.random()
    if r < 0.08 and c >= 2:  # a channel step of 2 (blocked by the rule, must stay correct)
        ins += [g.i64(axes, "sl_a"), g.i64([2] + [1] * (len(axes) - 1), "sl_st")]
        c = (c + 1) // 2
    elif r < 0.7:
        ins.append(g.i64(axes, "sl_a"))
        if rng.random() < 0.3:
            ins.append(g.i64([1] * len(axes), "sl_st"))
    elif axes != [1] or len(axes) != 1:
        ins.append(g.i64(axes, "sl_a"))
    else:  # no axes input: axes = [0, 1]; slice the batch fully
        ins[1] = g.i64([0, s_start], "sl_s")
        ins[2] = g.i64([INT64_MAX, s_end], "sl_e")
    g.use(x)
    out = g.node("Slice", ins, "slice")
    return g.add(out, c, h, w)


def se(g: _Gen) -> T:
    rng = g.rng
    x = g.pick_feature()
    g.use(x)
    pooled = g.node("GlobalAveragePool", [x.name], "gap")
    p = g.add(pooled, x.c, 1, 1)
    r = max(1, x.c // int(rng.choice([2, 4])))
    hid = conv(g, p, c_out=r, groups=1, k=1, s=1, d=1, bias=True)
    hid = act(g, hid, str(rng.choice(["Relu", "Relu", "SiLU"])))
    gate = conv(g, hid, c_out=x.c, groups=1, k=1, s=1, d=1, bias=True)
    gate = act(g, gate, str(rng.choice(["Sigmoid", "Sigmoid", "HardSigmoid"])))
    for t in (p, hid, gate):
        g.pool.remove(t)
    ins = [x.name, gate.name] if rng.random() < 0.7 else [gate.name, x.name]
    out = g.node("Mul", ins, "se")
    return g.add(out, x.c, x.h, x.w)


def pool(g: _Gen) -> T | None:
    rng = g.rng
    x = g.pick_feature(lambda t: t.h >= 2 and t.w >= 2)
    if x is None:
        return None
    op = str(rng.choice(["MaxPool", "AveragePool"]))
    k = int(rng.choice([2, 3]))
    s = int(rng.choice([1, 2, 2]))
    attrs = {"kernel_shape": [k, k], "strides": [s, s]}
    if rng.random() < 0.2:
        attrs["auto_pad"] = "SAME_UPPER"
        oh, ow = _out_same(x.h, s), _out_same(x.w, s)
    else:
        pads = [int(rng.integers(0, k)) for _ in range(4)] if rng.random() < 0.5 else [0, 0, 0, 0]
        ceil = rng.random() < 0.2
        oh = _out_explicit(x.h, k, s, 1, pads[0], pads[2], ceil)
        ow = _out_explicit(x.w, k, s, 1, pads[1], pads[3], ceil)
        # onnx shape inference and onnxruntime disagree when the last ceil-mode window would start
        # in the end padding (onnxruntime drops it): keep ceil_mode only where both agree
        if ceil and ((oh - 1) * s >= x.h + pads[0] or (ow - 1) * s >= x.w + pads[1]):
            ceil = False
            oh = _out_explicit(x.h, k, s, 1, pads[0], pads[2])
            ow = _out_explicit(x.w, k, s, 1, pads[1], pads[3])
        if oh < 1 or ow < 1:
            return None
        if any(pads):
            attrs["pads"] = pads
        if ceil:
            attrs["ceil_mode"] = 1
        if op == "AveragePool" and any(pads) and rng.random() < 0.5:
            attrs["count_include_pad"] = 1
    g.use(x)
    out = g.node(op, [x.name], op.lower(), **attrs)
    return g.add(out, x.c, oh, ow)


def resize(g: _Gen) -> T | None:
    rng = g.rng
    x = g.pick_feature(lambda t: t.h <= 8 and t.w <= 8)
    if x is None:
        return None
    fh, fw = int(rng.choice([1, 2, 2])), int(rng.choice([2, 2, 1]))
    use_sizes = isinstance(g.batch, int) and rng.random() < 0.3
    roi = g.f32(np.zeros(0, dtype=np.float32), "roi") if g.opset < 13 else ""
    # run-time sizes as F.interpolate(x, size=...) exports them: Concat(Shape(x)[:2], [H, W]);
    # sometimes Shape(y)[:2] of another tensor with as many channels (valid, but not x's own count)
    runtime = not use_sizes and g.opset >= 13 and rng.random() < 0.3
    if runtime:
        other = g.pick(lambda t: t.c == x.c and t is not x) if rng.random() < 0.3 else None
        nc = g.node("Slice", [g.node("Shape", [(other or x).name], "shp"), g.i64([0], "z"), g.i64([2], "two")], "nc")
        sizes = g.node("Concat", [nc, g.i64([x.h * fh, x.w * fw], "hw")], "sizes", axis=0)
        ins = [x.name, "", "", sizes]
    elif use_sizes:
        sizes = g.i64([g.batch, x.c, x.h * fh, x.w * fw], "sizes")
        scales = g.f32(np.zeros(0, dtype=np.float32), "scales") if g.opset < 13 else ""
        ins = [x.name, roi, scales, sizes]
    else:
        ins = [x.name, roi, g.f32([1.0, 1.0, float(fh), float(fw)], "scales")]
    g.use(x)
    out = g.node("Resize", ins, "resize", mode="nearest")
    return g.add(out, x.c, x.h * fh, x.w * fw)


def channel_mul(g: _Gen) -> T:
    rng = g.rng
    x = g.pick_feature()
    r = rng.random()
    shape = (1, x.c, 1, 1) if r < 0.5 else ((x.c, 1, 1) if r < 0.75 else (
        (1,) if r < 0.85 else ((1, x.c, x.h, x.w) if r < 0.95 else ())))
    op = str(rng.choice(["Mul", "Mul", "Mul", "Add", "Sub", "Div", "Max", "Min"]))
    g.use(x)
    k = g.f32(rng.uniform(0.5, 1.5, shape), "cm")
    out = g.node(op, [x.name, k] if rng.random() < 0.7 or op == "Div" else [k, x.name], "cmul")
    return g.add(out, x.c, x.h, x.w)


def head(g: _Gen, x: T | None = None) -> None:
    """Flatten (+ optional GlobalAveragePool before) -> Gemm [-> Relu -> Gemm]: a rank-2 graph output."""
    rng = g.rng
    x = x or g.pick_feature()
    g.use(x)
    name = x.name
    feats = x.c * x.h * x.w
    if feats > 1024 or rng.random() < 0.4:
        name = g.node("GlobalAveragePool", [name], "gap")
        feats = x.c
    flat = g.node("Flatten", [name], "flat", **({"axis": 1} if rng.random() < 0.5 else {}))
    n = int(rng.integers(2, 11))
    h = flat
    for layer in range(int(rng.choice([1, 1, 2]))):
        if layer:
            h = g.node("Relu", [h], "relu")
        if rng.random() < 0.2:  # MatMul + Add instead of Gemm
            b = (rng.standard_normal((feats, n)) / np.sqrt(feats)).astype(np.float32)
            h = g.node("MatMul", [h, g.f32(b, "mm_B")], "matmul")
            if rng.random() < 0.7:
                h = g.node("Add", [h, g.f32(rng.normal(0, 0.1, n), "mm_C")], "add")
            feats, n = n, int(rng.integers(2, 11))
            continue
        trans = int(rng.random() < 0.5)
        b = (rng.standard_normal((n, feats) if trans else (feats, n)) / np.sqrt(feats)).astype(np.float32)
        ins = [h, g.f32(b, "gemm_B")]
        if rng.random() < 0.8:
            shape = n if rng.random() < 0.8 else (1, n)
            if g.xrng is not None and g.batch == 2 and g.xrng.random() < 0.3:
                shape = (2, n)   # a per-row bias (one row per batch row: static batch 2)
            ins.append(g.f32(rng.normal(0, 0.1, shape), "gemm_C"))
        attrs = {"transB": trans} if trans or rng.random() < 0.3 else {}
        if rng.random() < 0.2:
            attrs["alpha"] = 0.5
        h = g.node("Gemm", ins, "gemm", **attrs)
        feats, n = n, int(rng.integers(2, 11))
    g.heads.append((h, [g.batch, feats]))


def shared_conv(g: _Gen) -> T | None:
    """Two convs reading one weight (initializer or Constant node)."""
    rng = g.rng
    x = g.pick_feature()
    k = int(rng.choice([1, 3]))
    c_out = _channels(rng)
    w = g.f32(_conv_weight(rng, c_out, x.c, k), "Wshared")
    b = g.f32(rng.normal(0, 0.1, c_out), "Bshared") if rng.random() < 0.4 else None
    y1 = conv(g, x, c_out=c_out, groups=1, k=k, weight=w, bias=b)
    z = g.pick(lambda t: t.c == x.c and t is not y1) or x
    y2 = conv(g, z, c_out=c_out, groups=1, k=k, weight=w, bias=b)
    return y2 if rng.random() < 0.5 else y1


# ---- extra ops of the rule table (beyond the list) ----------------------------------------

def conv_transpose(g: _Gen) -> T | None:
    rng = g.rng
    x = g.pick_feature(lambda t: t.h <= 10 and t.w <= 10)
    if x is None:
        return None
    c_in = x.c
    r = rng.random()
    if r < 0.6:
        groups, c_out = 1, _channels(rng)
    elif r < 0.8:
        groups, c_out = c_in, c_in * int(rng.choice([1, 2]))
    else:
        divs = [q for q in range(2, c_in) if c_in % q == 0]
        groups = int(rng.choice(divs)) if divs else 1
        c_out = groups * int(rng.integers(1, 4))
    k = int(rng.choice([1, 2, 3, 4]))
    s = int(rng.choice([1, 2]))
    p = int(rng.integers(0, k)) if k > 1 else 0
    op_ = int(rng.integers(0, s)) if s > 1 else 0
    oh = (x.h - 1) * s - 2 * p + k + op_
    ow = (x.w - 1) * s - 2 * p + k + op_
    if oh < 1 or ow < 1:
        return None
    w = (rng.standard_normal((c_in, c_out // groups, k, k)) * np.sqrt(2.0 / (c_in // groups * k * k)))
    ins = [x.name, g.f32(w, "Wt")]
    if rng.random() < 0.6:
        ins.append(g.f32(rng.normal(0, 0.1, c_out), "Bt"))
    attrs = {"kernel_shape": [k, k], "strides": [s, s]}
    if p:
        attrs["pads"] = [p, p, p, p]
    if op_:
        attrs["output_padding"] = [op_, op_]
    if groups != 1:
        attrs["group"] = groups
    g.use(x)
    out = g.node("ConvTranspose", ins, "convt", **attrs)
    return g.add(out, c_out, oh, ow)


def shuffle(g: _Gen) -> T | None:
    """Channel shuffle: Reshape [N, G, C/G, H, W] -> Transpose -> Reshape [N, C, H, W]."""
    rng = g.rng
    x = g.pick_feature(lambda t: any(t.c % q == 0 for q in range(2, t.c)))
    if x is None:
        return None
    q = int(rng.choice([d for d in range(2, x.c) if x.c % d == 0]))
    lead = 0 if rng.random() < 0.5 or not isinstance(g.batch, int) else g.batch
    if not isinstance(g.batch, int) and rng.random() < 0.5:
        lead = -1
    g.use(x)
    a = g.node("Reshape", [x.name, g.i64([lead, q, x.c // q, x.h, x.w], "shp")], "reshape")
    b = g.node("Transpose", [a], "transpose", perm=[0, 2, 1, 3, 4])
    out = g.node("Reshape", [b, g.i64([lead, x.c, x.h, x.w] if lead != -1 else [-1, x.c, x.h, x.w], "shp")],
                 "reshape")
    return g.add(out, x.c, x.h, x.w)


def pointwise_matmul(g: _Gen) -> T:
    """A 1x1 conv written channels-last: Transpose -> MatMul [-> Add] -> Transpose."""
    rng = g.rng
    x = g.pick_feature()
    k = _channels(rng)
    g.use(x)
    a = g.node("Transpose", [x.name], "transpose", perm=[0, 2, 3, 1])
    b = (rng.standard_normal((x.c, k)) / np.sqrt(x.c)).astype(np.float32)
    h = g.node("MatMul", [a, g.f32(b, "mm_B")], "matmul")
    if rng.random() < 0.5:
        h = g.node("Add", [h, g.f32(rng.normal(0, 0.1, k), "mm_C")], "add")
    out = g.node("Transpose", [h], "transpose", perm=[0, 3, 1, 2])
    return g.add(out, k, x.h, x.w)


def pad(g: _Gen) -> T:
    rng = g.rng
    x = g.pick_feature()
    mode = str(rng.choice(["constant", "constant", "reflect", "edge"]))
    lim = 2 if mode != "reflect" else min(2, x.h - 1, x.w - 1)
    sp = [int(rng.integers(0, lim + 1)) for _ in range(4)]
    pads = [0, 0, sp[0], sp[1], 0, 0, sp[2], sp[3]]
    ins = [x.name, g.i64(pads, "pads")]
    if mode == "constant" and rng.random() < 0.5:
        ins.append(g.f32(np.float32(rng.normal()), "padv"))
    g.use(x)
    out = g.node("Pad", ins, "pad", mode=mode)
    return g.add(out, x.c, x.h + sp[0] + sp[2], x.w + sp[1] + sp[3])


def instance_norm(g: _Gen) -> T:
    rng = g.rng
    x = g.pick_feature(lambda t: t.h * t.w > 1)
    if x is None:
        return None
    g.use(x)
    out = g.node("InstanceNormalization", [x.name, g.f32(rng.uniform(0.5, 1.5, x.c), "in_s"),
                                           g.f32(rng.normal(0, 0.2, x.c), "in_b")], "inorm")
    return g.add(out, x.c, x.h, x.w)


def reduce_gate(g: _Gen) -> T:
    """x * Sigmoid(ReduceMean/Max(x) over H, W): a gate without convs."""
    rng = g.rng
    x = g.pick_feature()
    op = str(rng.choice(["ReduceMean", "ReduceMax", "GlobalMaxPool"]))
    g.use(x)
    if op == "GlobalMaxPool":
        r = g.node(op, [x.name], "gmp")
    else:
        r = g.node(op, [x.name], op.lower(), axes=[2, 3] if rng.random() < 0.5 else [-2, -1], keepdims=1)
    gate = g.node("Sigmoid", [r], "sigmoid")
    out = g.node("Mul", [x.name, gate], "gate")
    return g.add(out, x.c, x.h, x.w)


# ---- extra ops (issue 22): ArgMax/ArgMin, LpPool, Pow, comparison and logical gates, ReduceSum with
# noop_with_empty_axes, and barrier ops; drawn from their own stream after the regular blocks -------

def _unsqueeze(g: _Gen, x: str, axis: int) -> str:
    if g.opset >= 13:
        return g.node("Unsqueeze", [x, g.i64([axis], "ax")], "unsq")
    return g.node("Unsqueeze", [x], "unsq", axes=[axis])


def argmax_gate(g: _Gen) -> T:
    """x * Cast(ArgMax/ArgMin(x) over H or W): channels pass, on axis 1 (keepdims) or unsqueezed back."""
    rng = g.rng
    x = g.pick_feature()
    op = str(rng.choice(["ArgMax", "ArgMin"]))
    axis = int(rng.choice([2, 3, -1]))
    keep = int(rng.random() < 0.5)
    g.use(x)
    a = g.node(op, [x.name], op.lower(), axis=axis, keepdims=keep)
    a = g.node("Cast", [a], "cast", to=TensorProto.FLOAT)
    if not keep:
        a = _unsqueeze(g, a, 3 if axis in (3, -1) else 2)
    out = g.node("Mul", [x.name, a], "amul")
    return g.add(out, x.c, x.h, x.w)


def lp_pool(g: _Gen) -> T | None:
    rng = g.rng
    x = g.pick_feature(lambda t: t.h >= 2 and t.w >= 2)
    if x is None:
        return None
    g.use(x)
    if rng.random() < 0.5:
        s = int(rng.choice([1, 2]))
        out = g.node("LpPool", [x.name], "lppool", kernel_shape=[2, 2], strides=[s, s], p=2)
        return g.add(out, x.c, (x.h - 2) // s + 1, (x.w - 2) // s + 1)
    p = g.node("GlobalLpPool", [x.name], "glppool", p=int(rng.choice([1, 2])))
    out = g.node("Mul", [x.name, p], "glpmul")
    return g.add(out, x.c, x.h, x.w)


def pow_(g: _Gen) -> T:
    """Pow(|x|, e) with a per-channel or scalar exponent in [0.5, 2]."""
    rng = g.rng
    x = g.pick_feature()
    g.use(x)
    shape = (1, x.c, 1, 1) if rng.random() < 0.6 else ()
    a = g.node("Abs", [x.name], "abs")
    out = g.node("Pow", [a, g.f32(rng.uniform(0.5, 2.0, shape), "exp")], "pow")
    return g.add(out, x.c, x.h, x.w)


def compare_gate(g: _Gen) -> T:
    """x * Cast(cmp(x, per-channel threshold)) or a logical combination of two comparisons."""
    rng = g.rng
    x = g.pick_feature()
    g.use(x)
    cmps = ["Greater", "Less", "Equal"] + (["GreaterOrEqual", "LessOrEqual"] if g.opset >= 12 else [])
    thr = lambda: g.f32(rng.uniform(-0.5, 0.5, (1, x.c, 1, 1) if rng.random() < 0.7 else ()), "thr")  # noqa: E731
    m = g.node(str(rng.choice(cmps)), [x.name, thr()], "cmp")
    r = rng.random()
    if r < 0.4:
        m2 = g.node(str(rng.choice(cmps)), [x.name, thr()], "cmp")
        m = g.node(str(rng.choice(["And", "Or", "Xor"])), [m, m2], "logic")
    elif r < 0.55:
        m = g.node("Not", [m], "not")
    m = g.node("Cast", [m], "cast", to=TensorProto.FLOAT)
    out = g.node("Mul", [x.name, m] if rng.random() < 0.5 else [m, x.name], "cmul")
    return g.add(out, x.c, x.h, x.w)


def reduce_noop(g: _Gen) -> T | None:
    """ReduceSum with an empty axes input and noop_with_empty_axes=1: the identity (opset >= 13)."""
    if g.opset < 13:
        return None
    x = g.pick_feature()
    g.use(x)
    out = g.node("ReduceSum", [x.name, g.i64(np.zeros(0, np.int64), "axes")], "rsum", noop_with_empty_axes=1)
    return g.add(out, x.c, x.h, x.w)


def barrier(g: _Gen) -> T | None:
    """An op that blocks the channels it reads: DepthToSpace, SpaceToDepth, Tile, Expand, Einsum, LpNormalization
    (the pruned model must stay right around it)."""
    rng = g.rng
    # (MeanVarianceNormalization fails onnx's full-check shape inference here: its fixture is in test_rules.py)
    kinds = ["Tile", "Expand", "LpNormalization", "Einsum", "DepthToSpace", "SpaceToDepth"]
    kind = str(rng.choice(kinds))
    if kind == "DepthToSpace":
        x = g.pick_feature(lambda t: t.c % 4 == 0 and t.h <= 8 and t.w <= 8)
    elif kind == "SpaceToDepth":
        x = g.pick_feature(lambda t: t.h % 2 == 0 and t.w % 2 == 0 and t.c <= 8)
    elif kind == "Tile":
        x = g.pick_feature(lambda t: t.c <= 8)
    else:
        x = g.pick_feature()
    if x is None:
        return None
    g.use(x)
    c, h, w = x.c, x.h, x.w
    if kind == "DepthToSpace":
        out = g.node(kind, [x.name], "d2s", blocksize=2, **({"mode": "CRD"} if rng.random() < 0.5 else {}))
        c, h, w = c // 4, h * 2, w * 2
    elif kind == "SpaceToDepth":
        out = g.node(kind, [x.name], "s2d", blocksize=2)
        c, h, w = c * 4, h // 2, w // 2
    elif kind == "Tile":
        out = g.node(kind, [x.name, g.i64([1, 2, 1, 1], "reps")], "tile")
        c *= 2
    elif kind == "Expand":
        out = g.node(kind, [x.name, g.i64([1, 1, 1, 1], "eshape")], "expand")
    elif kind == "Einsum":
        out = g.node(kind, [x.name, g.f32(rng.uniform(0.5, 1.5, w), "ew")], "einsum", equation="nchw,w->nchw")
    else:
        out = g.node(kind, [x.name], "lpnorm", axis=1, p=2)
    return g.add(out, c, h, w)


def resize_axes(g: _Gen) -> T | None:
    """Resize with an `axes` attribute (opset 18): scales or sizes for the spatial axes only, or sizes for
    [C, H, W] (the channel entry is rewritten)."""
    if g.opset < 18:
        return None
    rng = g.rng
    x = g.pick_feature(lambda t: t.h <= 16 and t.w <= 16)
    if x is None:
        return None
    g.use(x)
    r = rng.random()
    if r < 0.4:
        out = g.node("Resize", [x.name, "", g.f32([2.0, 2.0], "scales")], "resize", mode="nearest", axes=[2, 3])
    elif r < 0.7:
        out = g.node("Resize", [x.name, "", "", g.i64([x.h * 2, x.w * 2], "sizes")], "resize", mode="nearest",
                     axes=[-2, -1])
    else:
        out = g.node("Resize", [x.name, "", "", g.i64([x.c, x.h * 2, x.w * 2], "sizes")], "resize", mode="nearest",
                     axes=[1, 2, 3])
    return g.add(out, x.c, x.h * 2, x.w * 2)


def _to_opset18(g: _Gen) -> None:
    """Lift the regular blocks' nodes to opset 18: Reduce axes become inputs, equal Splits get num_outputs."""
    for node in g.nodes:
        if node.op_type.startswith("Reduce") and node.op_type != "ReduceSum":
            axes = next((a for a in node.attribute if a.name == "axes"), None)
            if axes is not None:
                values = list(axes.ints)
                node.attribute.remove(axes)
                node.input.append(g.i64(values, "raxes"))
        elif node.op_type == "Split" and len(node.input) == 1:
            node.attribute.append(helper.make_attribute("num_outputs", len(node.output)))
    g.opset = 18


EXTRA_BLOCKS = {
    "argmax_gate": (argmax_gate, 1), "lp_pool": (lp_pool, 1), "pow": (pow_, 1), "compare_gate": (compare_gate, 1),
    "reduce_noop": (reduce_noop, 0.7), "barrier": (barrier, 1.2),
    "resize_axes": (resize_axes, 0),   # once in every opset-18 graph
}


BLOCKS = {
    "conv": (conv, 5), "conv_bn_act": (conv_bn_act, 6), "bn": (bn, 1), "act": (act, 2),
    "residual": (residual, 3), "concat": (concat, 2), "split": (split, 1.5), "slice": (slice_, 1.5),
    "se": (se, 1.5), "pool": (pool, 1.5), "resize": (resize, 1), "channel_mul": (channel_mul, 1),
    "head": (head, 0.7), "shared_conv": (shared_conv, 1),
    "conv_transpose": (conv_transpose, 0.7), "shuffle": (shuffle, 0.7), "pad": (pad, 0.5),
    "instance_norm": (instance_norm, 0.4), "reduce_gate": (reduce_gate, 0.5),
    "pointwise_matmul": (pointwise_matmul, 0.5),
}


def _build(seed: int, attempt: int, n_blocks: int | None, skip: frozenset,
           extras: bool = True) -> tuple[onnx.ModelProto, Info]:
    rng = np.random.default_rng([seed, attempt])
    opset = int(rng.choice([13] * 6 + [11, 17]))
    ir = 7 if opset <= 13 and rng.random() < 0.5 else 8
    dynamic = rng.random() < 0.5
    batch = "N" if dynamic else int(rng.choice([1, 2]))
    g = _Gen(rng, opset, batch, const_node_p=float(rng.choice([0.0, 0.0, 0.2, 0.5])),
             xrng=np.random.default_rng([seed, attempt, 3000]) if extras else None)
    info = Info(seed, attempt, opset, ir, dynamic)
    inputs = []
    n_in = 2 if rng.random() < 0.3 else 1
    h0, w0 = int(rng.integers(6, 17)), int(rng.integers(6, 17))
    for i in range(n_in):
        c = int(rng.integers(2, 9))
        h, w = (h0, w0) if i == 0 or rng.random() < 0.6 else (int(rng.integers(6, 17)), int(rng.integers(6, 17)))
        name = f"input{i}"
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, c, h, w]))
        g.add(name, c, h, w, is_input=True)
    # a stem conv per input so that every input is read
    for t in list(g.pool):
        conv_bn_act_from(g, t)
    total = int(rng.integers(2, MAX_BLOCKS + 1))
    names, weights = list(BLOCKS), np.array([w for _, w in BLOCKS.values()], dtype=float)
    plan = [str(n) for n in rng.choice(names, size=MAX_BLOCKS, p=weights / weights.sum())]
    if n_blocks is not None:
        total = min(total, n_blocks)
    for i in range(total):
        block = plan[i]
        if i in skip:
            continue
        g.rng = np.random.default_rng([seed, attempt, i + 1])
        out = BLOCKS[block][0](g)
        info.blocks.append(block)
        if out is None and block != "head":
            info.blocks[-1] += "(skipped)"
    if g.xrng is not None:   # the extra ops, after the regular blocks (whose graph stays); `skip` MAX_BLOCKS + j
        if opset == 17 and g.xrng.random() < 0.7:
            _to_opset18(g)
            info.opset = 18
        n_extra = int(g.xrng.choice([0, 1, 1, 2, 3]))
        names_x = [n for n in EXTRA_BLOCKS if n != "resize_axes"]
        wx = np.array([EXTRA_BLOCKS[n][1] for n in names_x], dtype=float)
        extra = [str(b) for b in g.xrng.choice(names_x, size=n_extra, p=wx / wx.sum())]
        if g.opset >= 18:
            extra.insert(int(g.xrng.integers(len(extra) + 1)), "resize_axes")
        for j, block in enumerate(extra):
            if MAX_BLOCKS + j in skip:
                continue
            g.rng = np.random.default_rng([seed, attempt, 2000 + j])
            out = EXTRA_BLOCKS[str(block)][0](g)
            info.blocks.append(str(block) + ("(skipped)" if out is None else ""))
    g.rng = np.random.default_rng([seed, attempt, 1000])
    if g.rng.random() < 0.75:  # most graphs end in convs or heads, so the last features are prunable
        for t in [t for t in g.pool if t.uses == 0 and not t.may_dangle and not t.is_input]:
            if g.rng.random() < 0.3:
                head(g, t)
            else:
                conv(g, t, c_out=int(g.rng.integers(2, 11)), groups=1)
    outputs = []
    for t in g.pool:
        if t.is_input:
            continue
        leaf = t.uses == 0 and not t.may_dangle
        if leaf or g.rng.random() < 0.04:
            outputs.append(helper.make_tensor_value_info(t.name, TensorProto.FLOAT, [batch, t.c, t.h, t.w]))
    for name, shape in g.heads:
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    graph = helper.make_graph(g.nodes, f"fuzz_{seed}_{attempt}", inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", g.opset)], ir_version=ir,
                              producer_name="onnxprune-fuzz")
    return model, info


def conv_bn_act_from(g: _Gen, x: T) -> T:
    y = conv(g, x, groups=1)
    if g.rng.random() < 0.6:
        y = bn(g, y)
    if g.rng.random() < 0.7:
        y = act(g, y)
    return y


def validate(model: onnx.ModelProto, run: bool = True) -> str | None:
    """None when `model` is valid (checker, strict shape inference matching its outputs, one ORT run); else why not."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        return f"checker: {str(exc).splitlines()[0][:400]}"
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        return f"shape inference: {str(exc).splitlines()[0][:200]}"
    declared = {o.name: _dims(o) for o in model.graph.output}
    for o in inferred.graph.output:
        if _dims(o) != declared[o.name]:
            return f"shape inference: output {o.name} inferred {_dims(o)} declared {declared[o.name]}"
    if not run:
        return None
    try:
        outs = run_model(model, feeds_for(model))
    except Exception as exc:
        return f"onnxruntime: {str(exc).splitlines()[0][:200]}"
    for o in model.graph.output:
        want = [d if isinstance(d, int) else 2 for d in declared[o.name]]
        if list(outs[o.name].shape) != want:
            return f"onnxruntime: output {o.name} has shape {list(outs[o.name].shape)}, declared {want}"
        if not np.all(np.isfinite(outs[o.name])):
            return f"onnxruntime: output {o.name} is not finite"
    return None


def _dims(vi) -> list:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]


def feeds_for(model: onnx.ModelProto, batch: int = 2, seed: int = 0) -> dict:
    """Seeded normal inputs; dynamic dims become `batch`."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d if isinstance(d, int) else batch for d in _dims(vi)]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def run_model(model: onnx.ModelProto, feeds: dict) -> dict:
    """Outputs of `model` (onnxruntime CPU, one thread) by name."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    return dict(zip(names, sess.run(names, feeds)))


def generate(seed: int, n_blocks: int | None = None, skip=(), run: bool = True,
             extras: bool = True) -> tuple[onnx.ModelProto, Info]:
    """The model of `seed` and how it was made; retries (counting discards) until a candidate is valid.

    `extras=False` gives the graph the generator made before the extra ops (issue 22) existed: the
    regression seeds of test_fuzz.py keep the graphs that exposed their bugs.
    """
    discards = []
    for attempt in range(MAX_ATTEMPTS):
        try:
            model, info = _build(seed, attempt, n_blocks, frozenset(skip), extras)
        except Exception as exc:  # a generator bug: report it as a discard, do not hide it
            discards.append(f"build error: {type(exc).__name__}: {exc}")
            continue
        why = validate(model, run=run)
        if why is None:
            info.discards = discards
            return model, info
        discards.append(why)
    raise RuntimeError(f"seed {seed}: no valid graph in {MAX_ATTEMPTS} attempts: {discards[-3:]}")


def random_cnn(seed: int, extras: bool = True) -> onnx.ModelProto:
    """A random valid CNN graph for `seed` (deterministic)."""
    return generate(seed, extras=extras)[0]
