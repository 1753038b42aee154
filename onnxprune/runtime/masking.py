"""Channel masks inside the graph (criteria.md §1.3): evaluate many prunings without rewriting.

Every tensor of the chosen groups is multiplied by a mask input ``[batch, C, 1, ...]`` (channels
on the tensor's axis), which is the same as removing the masked channels (the pruning oracle).
One onnxruntime call evaluates r masks at once: the image batch is repeated r times and each
block of rows gets its own mask (inference graphs have no cross-sample operations). Masks are
given per *unit* of a group and expanded to every tensor here.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..calibration.activations import join_batches
from ..verification.evaluate import fidelity_loss
from ..analysis.graph import batch_axes, output_batch_axes, real_inputs, sync_initializer_inputs
from ..analysis.groups import Analysis
from ..analysis.segments import Walker, clean_cuts, submodel
from .sessions import session

MAX_ROWS = 256   # rows (repeated samples) per onnxruntime call: bounds the activations held at once


class MaskRunner:
    """Runs the model with per-sample unit masks on a subset of groups.

    Args:
        analysis: the groups (its `model` is the network to mask).
        group_ids: the groups whose units may be masked.
        start: run only nodes[start:] (a suffix sub-model, onnxprune/analysis/segments.py); `run` is then
            fed the tensors live at that cut instead of the graph inputs.
        input_types: dtypes of those live tensors (name -> numpy dtype), needed when `start` > 0.
    """

    def __init__(self, analysis: Analysis, group_ids: list[int], start: int = 0,
                 input_types: dict | None = None):
        self.analysis = analysis
        self.group_ids = list(group_ids)
        self.start = start
        self.input_types = input_types or {}
        self.tensors = sorted({t for gid in self.group_ids for t in analysis.groups[gid].tensors},
                              key=lambda t: analysis.tensors[t].base)
        self.positions = {(gid, t): analysis.positions(gid, t) for gid in self.group_ids
                          for t in analysis.groups[gid].tensors}
        self.axes = tensor_batch_axes(analysis)
        self.model = self._masked_model()
        self.session = session(self.model)
        self.static_batch = fixed_batch(analysis.model)
        self.unaligned = False   # an output's axis 0 is not the batch (detections): one mask per call
        self.output_names = [o.name for o in analysis.model.graph.output]
        self.output_axes = [self.axes.get(o, 0) for o in self.output_names]
        self.calls = 0
        self.samples = 0

    def _masked_model(self) -> onnx.ModelProto:
        an = self.analysis
        if self.start:
            model = submodel(an.model, self.start, len(an.model.graph.node), self.input_types,
                             [o.name for o in an.model.graph.output])
        else:
            model = onnx.ModelProto()
            model.CopyFrom(an.model)
        renames, after = {}, {}
        for name in self.tensors:
            t = an.tensors[name]
            rank = len(an.shapes[name])
            shape = [1] * rank
            shape[self._batch_axis(name)] = "mask_batch"
            if t.split:
                shape[t.axis], shape[t.axis + 1] = t.split
            else:
                shape[t.axis] = t.size
            mask_name, out_name = f"__mask__{name}", f"__masked__{name}"
            model.graph.input.append(helper.make_tensor_value_info(mask_name, onnx.TensorProto.FLOAT, shape))
            after[name] = helper.make_node("Mul", [name, mask_name], [out_name], name=f"__maskmul__{name}")
            renames[name] = out_name
        for node in model.graph.node:
            for i, inp in enumerate(node.input):
                if inp in renames:
                    node.input[i] = renames[inp]
        nodes = []
        for node in model.graph.node:
            nodes.append(node)
            nodes.extend(after[o] for o in node.output if o in after)
        nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        sync_initializer_inputs(model)
        return model

    def tensor_masks(self, unit_masks: list[dict[int, np.ndarray]], rows_per_mask: int) -> dict[str, np.ndarray]:
        """Expand unit masks (one dict group -> 0/1 per unit, per mask) into the mask inputs."""
        an = self.analysis
        feeds = {}
        for name in self.tensors:
            t = an.tensors[name]
            rank = len(an.shapes[name])
            per_mask = np.ones((len(unit_masks), t.size), dtype=np.float32)
            for gid in self.group_ids:
                pos = self.positions.get((gid, name))
                if pos is None:
                    continue
                valid = pos >= 0
                for m, masks in enumerate(unit_masks):
                    if gid in masks:
                        per_mask[m, valid] *= masks[gid][pos[valid]]
            rows = np.repeat(per_mask, rows_per_mask, axis=0)
            axis = self._batch_axis(name)
            shape = [1] * rank
            shape[axis] = rows.shape[0]
            if t.split:
                shape[t.axis], shape[t.axis + 1] = t.split
            else:
                shape[t.axis] = t.size
            if axis > t.axis:   # the batch after the channels ([C, N, ...]): rows go last in memory
                rows = np.ascontiguousarray(rows.T)
            feeds[f"__mask__{name}"] = rows.reshape(shape)
        return feeds

    def _batch_axis(self, name: str) -> int:
        """Where tensor `name` carries the batch (`tensor_batch_axes`), never its channel axis."""
        t = self.analysis.tensors[name]
        axis = self.axes.get(name, 0)
        return 0 if axis in (t.axis, t.axis + 1 if t.split else t.axis) else axis

    def run(self, feeds: dict[str, np.ndarray], unit_masks: list[dict[int, np.ndarray]]) -> list[list[np.ndarray]]:
        """Outputs of the network for each mask (a list per mask of its graph outputs)."""
        batch = len(next(iter(feeds.values())))
        if self.static_batch and batch != self.static_batch:  # a fixed batch dim: run it in chunks of that size
            b = self.static_batch
            parts = [self.run({k: v[i:i + b] for k, v in feeds.items()}, unit_masks)
                     for i in range(0, batch - batch % b, b)]
            return [[join_batches([p[m][j] for p in parts], self.output_axes[j]) for j in range(len(parts[0][m]))]
                    for m in range(len(unit_masks))]
        per_call = 1 if self.static_batch or self.unaligned else max(1, MAX_ROWS // batch)
        results = []
        for start in range(0, len(unit_masks), per_call):
            chunk = unit_masks[start:start + per_call]
            inputs = {k: np.concatenate([v] * len(chunk)) for k, v in feeds.items()}
            inputs.update(self.tensor_masks(chunk, batch))
            outs = self.session.run(self.output_names, inputs)
            self.calls += 1
            self.samples += batch * len(chunk)
            if len(chunk) == 1:
                results.append(list(outs))
                continue
            axes = self.output_axes
            if any(o.ndim <= a or o.shape[a] != batch * len(chunk) for o, a in zip(outs, axes)):
                # rows that are not the batch's (a data-dependent count of detections) cannot be
                # cut per mask: from here on every mask runs alone, this chunk included
                self.unaligned = True
                return results + self.run(feeds, unit_masks[start:])
            for i in range(len(chunk)):
                results.append([o[(slice(None),) * a + (slice(i * batch, (i + 1) * batch),)]
                                for o, a in zip(outs, axes)])
        return results

    def losses(self, feeds, unit_masks, reference: list[np.ndarray], labels=None) -> np.ndarray:
        """Fidelity loss (evaluate.fidelity_loss) of each mask on `feeds`."""
        return np.array([fidelity_loss(reference, outs, labels) for outs in self.run(feeds, unit_masks)])


def group_starts(analysis: Analysis, group_ids) -> dict[int, int]:
    """Where each group's suffix sub-model starts: the latest clean cut (segments.clean_cuts) at or
    before the group's first producer (node index; 0 when a tensor is a graph input)."""
    made = {out: pos for pos, node in enumerate(analysis.model.graph.node) for out in node.output}
    clean = clean_cuts(analysis.model)
    starts = {}
    for gid in group_ids:
        cut = min((made.get(t, 0) for t in analysis.groups[gid].tensors), default=0)
        while not clean[cut]:
            cut -= 1
        starts[gid] = cut
    return starts


def suffix_runners(analysis: Analysis, group_ids, feeds: dict[str, np.ndarray], starts: dict[int, int] | None = None):
    """Yield ``(gid, runner, cut_feeds)`` for each group in node order, for probing one group at a time.

    Each runner masks only its group on the suffix sub-model that starts at the cut before the
    group's first producer; `cut_feeds` are the unmasked tensors live at that cut, carried
    forward once through the network (onnxprune/analysis/segments.py), so no probe re-runs the prefix.
    """
    for gid, start, state in suffix_states(analysis, group_ids, feeds, starts):
        yield gid, suffix_runner(analysis, gid, start, state), state


def suffix_states(analysis: Analysis, group_ids, feeds: dict[str, np.ndarray], starts: dict[int, int] | None = None):
    """Yield ``(gid, start, cut_feeds)`` for each group in node order: `suffix_runners` without
    the runners (a worker process builds its own, `suffix_runner`)."""
    starts = starts or group_starts(analysis, group_ids)
    walker = Walker(analysis.model, split_batch(feeds, fixed_batch(analysis.model)))
    for gid in sorted(group_ids, key=lambda g: (starts[g], g)):
        walker.advance(analysis.model, starts[gid])
        yield gid, starts[gid], {k: np.concatenate([part[k] for part in walker.state]) for k in walker.state[0]}


def suffix_runner(analysis: Analysis, gid: int, start: int, cut_feeds: dict[str, np.ndarray]) -> "MaskRunner":
    """The runner that masks group `gid` on the suffix sub-model from node `start`, fed `cut_feeds`."""
    return MaskRunner(analysis, [gid], start=start, input_types={k: v.dtype for k, v in cut_feeds.items()})


def probes(tasks, shared, what: str) -> list[tuple[int, np.ndarray, int]]:
    """`probe_losses` of every (gid, start, cut_feeds, masks) task, by the pool (--workers, --ray):
    [(gid, losses, sample rows)] in task order. With more than one worker, a group's masks are
    cut into the onnxruntime calls `MaskRunner.run` would make for them (whole calls, so every
    loss is the serial run's), so that the workers share out one large group too."""
    from . import pool

    runner_pool = pool.current()
    pieces = split_probes(tasks, fixed_batch(shared[0].model)) if runner_pool.workers > 1 else tasks
    joined = []
    for gid, losses, samples in runner_pool.map(probe_losses, pieces, shared, what):
        if joined and joined[-1][0] == gid:      # the next piece of the same group
            joined[-1] = (gid, np.concatenate([joined[-1][1], losses]), joined[-1][2] + samples)
        else:
            joined.append((gid, losses, samples))
    return joined


def split_probes(tasks, static_batch: int):
    """Each (gid, start, cut_feeds, masks) task cut into pieces of one `MaskRunner.run` call each."""
    for gid, start, state, masks in tasks:
        rows = len(next(iter(state.values())))
        per_call = 1 if static_batch else max(1, MAX_ROWS // rows)
        for i in range(0, len(masks), per_call):
            yield gid, start, state, masks[i:i + per_call]


def probe_losses(shared, task) -> tuple[int, np.ndarray, int]:
    """One group's probe, as a task of `runtime.pool`: shared = (analysis, reference, labels),
    task = (gid, start, cut_feeds, unit masks) -> (gid, the fidelity loss of each mask, sample rows run)."""
    analysis, reference, labels = shared
    gid, start, cut_feeds, masks = task
    runner = suffix_runner(analysis, gid, start, cut_feeds)
    return gid, runner.losses(cut_feeds, masks, reference, labels), runner.samples


def tensor_batch_axes(analysis: Analysis) -> dict[str, int]:
    """`graph.batch_axes` of the analysed model (its input shapes as analysed), computed once per
    analysis: every probe builds a MaskRunner."""
    cached = analysis.__dict__.get("_batch_axes")
    if cached is None:
        inputs = {vi.name: list(analysis.shapes[vi.name]) for vi in real_inputs(analysis.model)
                  if vi.name in analysis.shapes}
        cached = batch_axes(analysis.model, inputs)
        analysis.__dict__["_batch_axes"] = cached
    return cached


def fixed_batch(model: onnx.ModelProto) -> int:
    """The batch size fixed by the first graph input's shape (0 when dynamic)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim if model.graph.input else []
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else 0


def split_batch(feeds: dict[str, np.ndarray], batch: int) -> list[dict[str, np.ndarray]]:
    """`feeds` cut into runs of `batch` rows (one run when `batch` is 0; a ragged tail is dropped)."""
    rows = len(next(iter(feeds.values())))
    if not batch or batch >= rows:
        return [feeds] if not batch or batch == rows else []
    return [{k: v[i:i + batch] for k, v in feeds.items()} for i in range(0, rows - rows % batch, batch)]


def outputs_of(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's graph outputs on `feeds`, run in chunks of a fixed batch size where the model has one."""
    sess = session(model)
    names = [o.name for o in model.graph.output]
    parts = [sess.run(names, part) for part in split_batch(feeds, fixed_batch(model))]
    if len(parts) == 1:
        return list(parts[0])
    axes = output_batch_axes(model, {k: [1, *v.shape[1:]] for k, v in feeds.items()})
    return [join_batches([p[i] for p in parts], axes[i]) for i in range(len(names))]
