"""Least-squares reconstruction of consumer weights after pruning (criteria.md §9.3).

For a consumer Conv (group 1; any number of spatial axes) or Gemm whose input lost channels,
sample P output locations (n, y, x) per batch and gather the im2col rows ``X_S`` of its kept inputs (stride, dilation and
padding honoured) from the *pruned* network, and the *original* network's outputs ``Y`` at the
same locations. Then solve, with the bias free and the weights pulled towards their current
values ``W0`` (ridge anchored at the original weights):

    min_{W, b}  || Y - X_S W^T - 1 b^T ||^2 + lam * || W - W0 ||^2
    [W^T; b^T] = (G + lam D)^{-1} (H + lam D [W0^T; 0]),  G = X~^T X~, H = X~^T Y, D = diag(1..1, 0)

with ``X~ = [X_S, 1]`` and ``lam = eta * tr(G) / d``. G and H are accumulated batch by batch (X
is never stored). In *sequential* mode layers are repaired in topological order and each layer's
inputs come from the network repaired so far, so accumulated error is corrected too.
Layers with ``d = |S| * kh * kw`` above `max_dim` (default 4608 = 512 * 3 * 3, a 170 MB Gram
matrix) are skipped (reported).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..calibration.activations import progress, with_outputs
from ..calibration.calib import CalibData
from ..analysis.graph import GraphIndex, attr, remove_dead, unique_name
from ..analysis.ops import rule_or_default
from ..analysis.segments import OverBudget, Walker, prefix
from ..runtime.sessions import session


def solve_ridge(G: np.ndarray, H: np.ndarray, w0: np.ndarray, eta: float) -> np.ndarray:
    """Solve the anchored ridge problem from accumulated G = X~'X~ and H = X~'Y.

    Args:
        G: [d+1, d+1] Gram matrix of the design with a trailing ones column.
        H: [d+1, O] cross products with the targets.
        w0: [O, d] anchor weights.
        eta: relative ridge strength.
    Returns:
        [d+1, O]: the weights (transposed) with the bias as the last row.
    """
    d = G.shape[0] - 1
    lam = eta * float(np.trace(G[:d, :d])) / max(d, 1)
    D = np.eye(d + 1)
    D[d, d] = 0.0
    rhs = H + lam * D @ np.vstack([w0.T, np.zeros((1, w0.shape[0]))])
    A = G + lam * D
    try:
        return np.linalg.solve(A, rhs)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(A, rhs, rcond=None)[0]


def _conv_geometry(node, x_shape, w_shape):
    """(kernel, strides, dilations, pads) of a Conv over the spatial axes of `x_shape` (any
    number: Conv1d, Conv2d, Conv3d); pads as ONNX orders them, every begin then every end."""
    kernel = list(w_shape[2:])
    r = len(kernel)
    strides = list(attr(node, "strides", [1] * r))
    dil = list(attr(node, "dilations", [1] * r))
    pads = list(attr(node, "pads", [0] * (2 * r)))
    auto = attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        lo_hi = []
        for i, (size, k) in enumerate(zip(x_shape[2:], kernel)):
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (k - 1) * dil[i] + 1 - size)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            lo_hi.append((lo, total - lo))
        pads = [lo for lo, _ in lo_hi] + [hi for _, hi in lo_hi]
    elif auto == "VALID":
        pads = [0] * (2 * r)
    return kernel, strides, dil, pads


def im2col_rows(x: np.ndarray, node, w_shape, positions) -> np.ndarray:
    """Rows ``[P, C*prod(kernel)]`` of the conv input `x` ([N, C, *spatial], any number of spatial
    axes) at output `positions` (n, then one coordinate array per spatial axis)."""
    kernel, s, d, p = _conv_geometry(node, x.shape, w_shape)
    r = len(kernel)
    xp = np.pad(x, ((0, 0), (0, 0)) + tuple((p[i], p[i + r]) for i in range(r)))
    n, coords = positions[0], positions[1:]
    # index arrays broadcast to [P, C, k_1, ..., k_r]
    lead = (1,) * r
    index = [n.reshape((-1, 1) + lead), np.arange(x.shape[1]).reshape((1, -1) + lead)]
    for i in range(r):
        shape = [1] * (r + 2)
        shape[0], shape[2 + i] = -1, kernel[i]
        taps = coords[i][:, None] * s[i] + np.arange(kernel[i])[None, :] * d[i]       # [P, k_i]
        index.append(taps.reshape(shape))
    return xp[tuple(index)].reshape(len(n), -1)


def _targets(model: onnx.ModelProto, kept: dict, max_dim: int) -> tuple[list, list]:
    index = GraphIndex(model)
    chosen, skipped = [], []
    for node in model.graph.node:
        rule = rule_or_default(node)
        if node.input and node.input[0] in kept and rule.dense_filter(node):
            w = index.const(node.input[1])
            refusal = rule.refit_refusal(node)
            if refusal:
                skipped.append((node.output[0], refusal))
                continue
            if rule.convolves and w.shape[1] != len(kept[node.input[0]]):   # ECA's Conv1d reads its channels along a spatial axis
                skipped.append((node.output[0], "reads its input channels on another axis"))
                continue
            d = rule.filters(node, w).shape[1]     # inputs per output: a filter row's length
            if d > max_dim:
                skipped.append((node.output[0], f"{d} inputs per output exceed {max_dim}"))
                continue
            chosen.append(node.output[0])
    return chosen, skipped


def reconstruct(original: onnx.ModelProto, pruned: onnx.ModelProto, kept: dict[str, np.ndarray], data: CalibData,
                eta: float = 1e-2, per_image: int = 16, max_dim: int = 4608, seed: int = 0,
                sequential: bool = True) -> tuple[onnx.ModelProto, list]:
    """Repair every eligible consumer of pruned channels by anchored least squares (module docstring).

    Returns:
        The repaired copy of `pruned`, and a list of (layer, reason) that were skipped.
    """
    model = onnx.ModelProto()
    model.CopyFrom(pruned)
    targets, skipped = _targets(model, kept, max_dim)
    if not targets:
        return model, skipped
    by_output = {n.output[0]: n for n in model.graph.node}
    inputs = {o: by_output[o].input[0] for o in targets}
    names = _tensor_names(model)
    # the original network's targets at fixed sampled locations (one pass, shared through the data)
    teacher = Teacher.of(original, data, per_image, seed)
    wanted = {o: (by_output[o], GraphIndex(model).const(by_output[o].input[1]).shape) for o in targets}
    y_samples = teacher.samples(targets, data)
    for o in targets:
        if o in kept:                           # the consumer's own outputs were pruned too
            y_samples[o] = [np.take(y, kept[o], axis=1) for y in y_samples[o]]
    positions = {n.output[0]: k for k, n in enumerate(model.graph.node)}

    def design(o, x, k):
        """(G, H) of layer `o` from its input batch `x` (the k-th score batch)."""
        node, w_shape = wanted[o]
        if rule_or_default(node).patch_rows:
            out_shape = (x.shape[0], 0) + out_spatial(node, x.shape, w_shape)
            rows = im2col_rows(x, node, w_shape, _positions(node, out_shape, per_image, (seed, k, teacher.layer_index[o])))
        else:
            rows = x.reshape(x.shape[0], -1)
        d = np.hstack([rows.astype(np.float64), np.ones((len(rows), 1))])
        return d.T @ d, d.T @ y_samples[o][k].astype(np.float64)

    def solve(o, acc):
        _solve_layer(model, by_output[o], acc, eta, names)

    todo = list(targets)
    if sequential:
        # walk the network once: the cut before each layer is cached, so every layer's inputs come
        # from the network repaired so far without re-running its prefix (beyond the memory
        # budget, the remaining layers each re-run their prefix instead)
        try:
            walker = Walker(model, list(data.batches("score")))
            while todo:
                o = todo[0]
                walker.advance(model, positions[o])
                acc = None
                for k, x in enumerate(walker.values(inputs[o])):
                    g, h = design(o, x, k)
                    acc = (g, h) if acc is None else (acc[0] + g, acc[1] + h)
                solve(o, acc)
                todo.pop(0)
        except OverBudget:
            pass
    for group in ([[o] for o in todo] if sequential else [todo]):
        wanted_inputs = [inputs[o] for o in group]
        student = session(prefix(model, wanted_inputs))
        acc = {o: None for o in group}
        for k, feeds in enumerate(progress(data.batches("score"), data.size("score"), data.config.batch_size,
                                           f"least squares {group[0] if len(group) == 1 else ''}")):
            s_in = dict(zip(wanted_inputs, student.run(wanted_inputs, feeds)))
            for o in group:
                g, h = design(o, s_in[inputs[o]], k)
                acc[o] = (g, h) if acc[o] is None else (acc[o][0] + g, acc[o][1] + h)
        for o in group:
            solve(o, acc[o])
    remove_dead(model)
    return model, skipped


class Teacher:
    """The original network's outputs at the sampled locations (`_positions`) of every layer least
    squares may refit, over the 'score' split of one calibration set.

    Recorded during the calibration pass (`recorder`), or else computed in one pass of the original
    for all such layers at the first request, and kept on the data (`CalibData.shared`, which its
    views share): the order check's candidate repairs and the final recovery read it instead of
    running the original once per repair (each candidate refits a different set of layers). A
    layer outside that set (none in practice) costs a pass of its own. Memory: per_image samples
    per image and output channel of each layer, as one repair held before. `passes` counts the
    image passes of the original spent here (not those of the calibration pass)."""

    def __init__(self, original: onnx.ModelProto, per_image: int, seed: int):
        self.original, self.per_image, self.seed = original, per_image, seed
        nodes = list(original.graph.node)
        self.layer_index = {n.output[0]: k for k, n in enumerate(nodes)}
        self.by_output = {n.output[0]: n for n in nodes}
        graph_inputs = {i.name for i in original.graph.input}
        self.candidates = [n.output[0] for n in nodes if n.input and n.input[0] not in graph_inputs
                           and rule_or_default(n).dense_filter(n) and not rule_or_default(n).refit_refusal(n)]
        self.values: dict[str, list[np.ndarray]] = {}     # per score batch of the whole split
        self.passes = 0

    @staticmethod
    def of(original: onnx.ModelProto, data: CalibData, per_image: int = 16, seed: int = 0) -> "Teacher":
        """The teacher for `original` on `data`'s calibration set (made on first use). Keyed by the
        graph's structure, not the object's identity, so a copy of the data sent to a worker
        process (runtime.pool) finds the teacher recorded here."""
        nodes = original.graph.node
        key = ("least squares teacher", per_image, seed, len(nodes), tuple(n.output[0] for n in nodes if n.output),
               tuple((i.name, tuple(i.dims)) for i in original.graph.initializer))
        entry = data.shared.get(key)
        if entry is None:
            entry = data.shared[key] = Teacher(original, per_image, seed)
        return entry

    def samples(self, layers: list[str], data: CalibData) -> dict[str, list[np.ndarray]]:
        """{layer: its sampled original outputs per score batch of `data`} (all output channels)."""
        whole = data.unlimited()
        size, batch = data.size("score"), data.feed_batch
        if size < whole.size("score") and size % batch:
            # a view whose last batch is not one of the whole split's: its own pass, not cached
            return self._collect(layers, data)
        missing = [o for o in layers if o not in self.values]
        if missing:
            self.values = self._collect(sorted(set(missing) | set(self.candidates) | set(self.values),
                                               key=self.layer_index.get), whole)
        batches = -(-size // batch)
        return {o: self.values[o][:batches] for o in layers}

    def recorder(self, data: CalibData):
        """(layers, record) for `activations.collect(..., also=...)`: a pass of the original over
        `data`'s whole 'score' split that already runs (the calibration pass) fills the teacher
        on the way, so least squares never runs the original itself."""
        values = {o: [] for o in self.candidates}

        def record(k: int, outputs: dict[str, np.ndarray]) -> None:
            for o, y in outputs.items():
                values[o].append(self._sampled(o, y, k))
            if k + 1 == -(-data.size("score") // data.feed_batch):
                self.values = values

        return self.candidates, record

    def _sampled(self, o: str, y: np.ndarray, k: int) -> np.ndarray:
        pos = _positions(self.by_output[o], y.shape, self.per_image, (self.seed, k, self.layer_index[o]))
        return y if pos is None else y[(pos[0], slice(None), *pos[1:])]

    def _collect(self, layers: list[str], data: CalibData) -> dict[str, list[np.ndarray]]:
        teacher = session(with_outputs(self.original, layers))
        values = {o: [] for o in layers}
        for k, feeds in enumerate(progress(data.batches("score"), data.size("score"), data.config.batch_size,
                                           "least squares: targets")):
            for o, y in zip(layers, teacher.run(layers, feeds)):
                values[o].append(self._sampled(o, y, k))
            self.passes += len(next(iter(feeds.values())))
        return values


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor name the graph uses (node inputs and outputs, initializers)."""
    names = set()
    for n in model.graph.node:
        names.update(n.input)
        names.update(n.output)
    return names | {i.name for i in model.graph.initializer}


def _solve_layer(model: onnx.ModelProto, node, acc, eta: float, names: set[str]) -> None:
    """Replace `node`'s weight and bias by the anchored ridge solution of its accumulated (G, H)."""
    w = GraphIndex(model).const(node.input[1])
    rule = rule_or_default(node)
    w0 = rule.filters(node, w).astype(np.float64)
    sol = solve_ridge(acc[0], acc[1], w0, eta)
    new_w = rule.from_filters(node, w, sol[:-1].T)
    _replace(model, node, 1, new_w.astype(w.dtype), names)
    _replace(model, node, 2, sol[-1].astype(w.dtype), names)


def out_spatial(node, x_shape, w_shape) -> tuple[int, ...]:
    """Output size of a Conv on every spatial axis."""
    kernel, s, d, p = _conv_geometry(node, x_shape, w_shape)
    r = len(kernel)
    return tuple((x_shape[2 + i] + p[i] + p[i + r] - d[i] * (kernel[i] - 1) - 1) // s[i] + 1 for i in range(r))


def _positions(node, out_shape, per_image, seed):
    """Sampled output locations (n, then a coordinate per spatial axis) of a Conv for one batch,
    reproducible from `seed`; None for Gemm."""
    if not rule_or_default(node).patch_rows:
        return None
    rng = np.random.default_rng(list(seed))
    n, spatial = out_shape[0], tuple(out_shape[2:])
    size = int(np.prod(spatial, dtype=np.int64))
    take = min(per_image, size)
    flat = np.concatenate([rng.choice(size, take, replace=False) for _ in range(n)])
    return (np.repeat(np.arange(n), take), *np.unravel_index(flat, spatial))


def _replace(model, node, slot, value, names) -> None:
    base = node.input[slot] if slot < len(node.input) and node.input[slot] else f"{node.output[0]}_bias"
    name = unique_name(names, f"{base}_ls")
    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    while len(node.input) <= slot:
        node.input.append("")
    node.input[slot] = name
