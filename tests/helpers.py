"""Test helpers: the pruning oracle and small graph builders.

The oracle (criteria.md §1.3, T1): with recovery off, the pruned model's outputs equal the
original's with the removed channels masked to zero where consumers read them. The masked
model multiplies every tensor that loses channels by a 0/1 mask along its channel axis (after
BN and activation, since each of those tensors is masked), then both run on the same inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune import criteria, rewrite
from onnxprune.analysis import graph
from onnxprune.pipeline import prepare
from onnxprune.allocation.select import SelectConfig, select
from onnxprune.runtime.sessions import random_feeds, session


def masked_model(analysis, removed_units) -> onnx.ModelProto:
    """The analysed (normalised) model with removed channels multiplied by zero where they are read."""
    model = onnx.ModelProto()
    model.CopyFrom(analysis.model)
    kept = analysis.kept_channels(np.asarray(removed_units, dtype=np.int64))
    elem = {vi.name: vi.type.tensor_type.elem_type
            for vi in [*onnx.shape_inference.infer_shapes(model).graph.value_info, *model.graph.input, *model.graph.output]}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    new_nodes = []
    renames = {}
    for name, idx in kept.items():
        t = analysis.tensors[name]
        rank = len(analysis.shapes[name])
        mask = np.zeros(t.size, dtype=np.float32)
        mask[idx] = 1.0
        shape = [1] * rank
        if t.split:
            shape[t.axis], shape[t.axis + 1] = t.split
        else:
            shape[t.axis] = t.size
        mname, oname = f"__mask_{name}", f"__masked_{name}"
        # Where(mask, x, 0): a removed channel reads as exactly 0 even where x is inf (Log, Reciprocal of
        # a zeroed channel), for float and integer (ArgMax) tensors; booleans (comparisons) are and-ed;
        # before opset 9 (no Where) a 0/1 Mul
        dtype = helper.tensor_dtype_to_np_dtype(elem.get(name, onnx.TensorProto.FLOAT))
        keep = mask.reshape(shape) > 0
        if dtype == np.bool_:
            model.graph.initializer.append(numpy_helper.from_array(keep, mname))
            mask_node = helper.make_node("And", [name, mname], [oname], name=f"__maskmul_{name}")
        elif opset < 9:
            model.graph.initializer.append(numpy_helper.from_array(keep.astype(dtype), mname))
            mask_node = helper.make_node("Mul", [name, mname], [oname], name=f"__maskmul_{name}")
        else:
            model.graph.initializer.append(numpy_helper.from_array(keep, mname))
            model.graph.initializer.append(numpy_helper.from_array(np.zeros((), dtype=dtype), f"__zero_{name}"))
            mask_node = helper.make_node("Where", [mname, name, f"__zero_{name}"], [oname], name=f"__maskmul_{name}")
        new_nodes.append((name, mask_node))
        renames[name] = oname
    for node in model.graph.node:
        for i, inp in enumerate(node.input):
            if inp in renames:
                node.input[i] = renames[inp]
    # insert each mask right after its producer to keep topological order
    order = []
    by_tensor = dict(new_nodes)
    graph_inputs = [n for t, n in new_nodes if t not in {o for nd in model.graph.node for o in nd.output}]
    order.extend(graph_inputs)
    for node in model.graph.node:
        order.append(node)
        for out in node.output:
            if out in by_tensor:
                order.append(by_tensor[out])
    del model.graph.node[:]
    model.graph.node.extend(order)
    graph.sync_initializer_inputs(model)
    return model


def run(model, feeds):
    """Outputs of `model` on `feeds` (onnxruntime CPU), by output name."""
    names = [o.name for o in model.graph.output]
    return dict(zip(names, session(model).run(names, feeds)))


def check_oracle(model, criterion="l1", ratio=0.5, input_shape=None, seed=0, rtol=1e-4, min_removed=1, **select_kw):
    """Prune `model` and assert pruned == masked original on seeded inputs. Returns (pruned, analysis, removed).

    At least `min_removed` channels must go (a pruning that removed nothing would pass the
    comparison trivially); pass 0 only where "nothing removed" is itself a correct outcome.
    """
    prep = prepare(model, input_shape)
    an = prep.analysis
    scores = criteria.score(criterion, criteria.ScoreContext(an, seed=seed))
    plan, _ = select(an, scores, SelectConfig(ratio=ratio, **select_kw))
    removed = plan.removed_units(an)
    assert len(removed) >= min_removed, f"{criterion}@{ratio}: {len(removed)} channels removed, want >= {min_removed}"
    pruned = rewrite.apply(an, removed)
    assert_matches_masked(prep.original, an, removed, pruned, prep.input_shapes, seed=seed, rtol=rtol)
    return pruned, an, removed


def assert_matches_masked(original, an, removed, pruned, input_shapes, seed=0, rtol=1e-4):
    """The oracle proper: `pruned` (checked) computes what `original` does with `removed` masked to zero."""
    onnx.checker.check_model(pruned)
    masked = masked_model(an, removed)
    feeds = random_feeds(original, input_shapes, seed=seed)
    ref, out = run(masked, feeds), run(pruned, feeds)
    assert set(ref) == set(out), (sorted(ref), sorted(out))
    for name in ref:
        a, b = ref[name], out[name]
        assert a.shape == b.shape, (name, a.shape, b.shape)
        scale = max(float(np.max(np.abs(a))), 1e-6)
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        assert diff <= rtol * scale + 1e-6, f"{name}: max|diff| {diff:.3g} vs scale {scale:.3g}"


def make_model(nodes, inputs, outputs, initializers=(), opset=13, ir_version=8) -> onnx.ModelProto:
    """A model from onnx.helper pieces; `initializers` maps name -> numpy array."""
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(initializers).items()]
    g = helper.make_graph(nodes, "test", inputs, outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    return m


def tensor(name, shape, dtype=onnx.TensorProto.FLOAT):
    """A graph input/output value info."""
    return helper.make_tensor_value_info(name, dtype, shape)


def conv_weights(rng, c_out, c_in, k=3, groups=1):
    """He-scaled conv weights."""
    return (rng.standard_normal((c_out, c_in // groups, k, k)) * np.sqrt(2.0 / (c_in // groups * k * k))).astype(np.float32)


def bn_params(rng, c, prefix):
    """Random BatchNormalization parameters (scale, bias, mean, var) under `prefix`."""
    return {f"{prefix}_s": rng.uniform(0.5, 1.5, c).astype(np.float32),
            f"{prefix}_b": rng.normal(0, 0.2, c).astype(np.float32),
            f"{prefix}_m": rng.normal(0, 0.5, c).astype(np.float32),
            f"{prefix}_v": rng.uniform(0.5, 2.0, c).astype(np.float32)}
