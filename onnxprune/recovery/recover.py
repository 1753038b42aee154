"""Training-free recovery (criteria.md §9), each step kept only if held-out fidelity improves.

Steps, in order:
1. mean compensation (§9.1): a removed input channel c of a Conv/Gemm is replaced by its
   calibration mean ``m_c``, folded into the consumer's bias: ``b'_o += m_c * sum_{kh,kw} W'_{o,c}``
   (done by the rewrite rules when given the means);
2. BatchNormalization re-estimation (§9.4): every BN's running mean/variance set to the
   empirical statistics of its input in the pruned network (two sweeps of one pass each);
3. moment matching where BN was folded (§9.4): for each Conv/Gemm whose inputs lost channels and
   whose output feeds no BN, output channel o gets ``a_o = clip(sigma_T / sigma_S, 0.5, 2)``,
   ``c_o = mu_T - a_o mu_S``: ``W_o <- a_o W_o``, ``b_o <- a_o b_o + c_o`` (T: original network,
   S: pruned network, pre-activation statistics on the scoring split).
The fidelity loss (evaluate.fidelity_loss) is measured on the held-out split after each step.
Least-squares reconstruction of consumer weights (§9.3) lives in reconstruct.py; the pipeline
(`pipeline._recover`) runs it between mean compensation and BN re-estimation.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..calibration import activations
from ..calibration.calib import CalibData
from ..analysis.segments import OverBudget, Walker
from ..verification.evaluate import fidelity_loss
from ..analysis.graph import GraphIndex, batch_axes, remove_dead, unique_name
from ..analysis.ops import is_batchnorm, rule_for, rule_or_default


def held_out_loss(model: onnx.ModelProto, data: CalibData, reference: list[np.ndarray], loss=fidelity_loss) -> float:
    """Fidelity loss (or another `loss` of the same signature) of `model` against the original's
    outputs on the held-out split."""
    return loss(reference, activations.outputs(model, data, "holdout"), data.split_labels("holdout"))


def _set_initializer(model: onnx.ModelProto, node: onnx.NodeProto, slot: int, value: np.ndarray, names: set) -> None:
    name = unique_name(names, f"{node.input[slot] if slot < len(node.input) and node.input[slot] else node.output[0]}_rec")
    model.graph.initializer.append(numpy_helper.from_array(value, name))
    while len(node.input) <= slot:
        node.input.append("")
    node.input[slot] = name


def _all_names(model: onnx.ModelProto) -> set:
    names = {i.name for i in model.graph.initializer}
    for n in model.graph.node:
        names.update(n.input)
        names.update(n.output)
    return names


def reestimate_bn(model: onnx.ModelProto, data: CalibData, sweeps: int = 2) -> onnx.ModelProto | None:
    """A copy of `model` whose BN statistics equal the empirical ones of their inputs (None: no BN).

    The network is walked once in node order (segments.Walker): each BN's statistics are set from
    its inputs as the BNs before it already changed them, so one pass of the 'score' split gives
    every BN the statistics of the final model. Where the walk's cached tensors exceed its memory
    budget, `sweeps` whole-network passes (each setting every BN from the model the last one
    left) instead, exact for chains of at most `sweeps` BNs.
    """
    bns = [n for n in model.graph.node if is_batchnorm(n)]
    if not bns:
        return None
    result = onnx.ModelProto()
    result.CopyFrom(model)
    try:
        _reestimate_walking(result, data)
    except OverBudget:
        result.CopyFrom(model)
        for _ in range(sweeps):
            stats = activations.collect(result, {n.input[0]: 1 for n in bns}, data, "score", label="BN re-estimation")
            for node in [n for n in result.graph.node if is_batchnorm(n)]:
                _set_bn_statistics(result, node, stats[node.input[0]])
    remove_dead(result)    # the replaced statistics would otherwise stay in the file, unread
    return result


def _reestimate_walking(model: onnx.ModelProto, data: CalibData) -> None:
    """Set every BN's statistics in node order from one walk of the 'score' split (raises OverBudget)."""
    walker = Walker(model, list(data.batches("score")))
    batch_axis = batch_axes(model, {spec.name: [1, *spec.sample_shape] for spec in data.specs})
    for position, node in enumerate(list(model.graph.node)):
        if not is_batchnorm(node):
            continue
        walker.advance(model, position)
        st = activations.ChannelStats(1, frozenset({"sumsq"}), batch_axis.get(node.input[0], 0))
        for value in walker.values(node.input[0]):
            st.update(value)
        _set_bn_statistics(model, model.graph.node[position], st)


def _set_bn_statistics(model: onnx.ModelProto, node: onnx.NodeProto, st) -> None:
    """Replace a BN's mean and variance by `st`'s (ChannelStats), channel by channel where they fit."""
    index = GraphIndex(model)
    old_mean, old_var = index.const(node.input[3]), index.const(node.input[4])
    # a channel whose statistics do not fit the BN's dtype (an input blown up by the pruning)
    # keeps its old statistics: an inf variance would silence it, a NaN poison the output
    limit = np.finfo(old_var.dtype).max
    with np.errstate(over="ignore", invalid="ignore"):
        fits = np.isfinite(st.mean) & np.isfinite(st.var) & (np.abs(st.mean) < limit) & (st.var < limit)
    names = _all_names(model)
    _set_initializer(model, node, 3, np.where(fits, st.mean, old_mean).astype(old_mean.dtype), names)
    _set_initializer(model, node, 4, np.where(fits, st.var, old_var).astype(old_var.dtype), names)


def repaired_nodes(pruned: onnx.ModelProto, kept: dict[str, np.ndarray]) -> list[str]:
    """Conv/Gemm nodes (by output name) whose inputs lost channels and whose output feeds no BN."""
    index = GraphIndex(pruned)
    result = []
    for node in pruned.graph.node:
        rule = rule_or_default(node)
        if rule.moment_matched and node.input[0] in kept:
            w = index.const(node.input[1])
            if node.output[0] in kept and (w is None or w.shape[rule.out_axis(node)] != len(kept[node.output[0]])):
                continue   # its kept channels are not its filters (ECA's Conv1d along the channel axis)
            if not any(is_batchnorm(c) for c, _ in index.consumers.get(node.output[0], [])):
                result.append(node.output[0])
    return result


def moment_targets(original: onnx.ModelProto) -> list[str]:
    """Every output `repaired_nodes` can name for some pruning of `original` (a Conv/Gemm whose
    input is not a graph input and whose output feeds no BN): the calibration pass collects their
    statistics too, so moment matching does not run the original again."""
    index = GraphIndex(original)
    graph_inputs = {i.name for i in original.graph.input}
    return [n.output[0] for n in original.graph.node
            if rule_or_default(n).moment_matched and n.input and n.input[0] not in graph_inputs
            and not any(is_batchnorm(c) for c, _ in index.consumers.get(n.output[0], []))]


def match_moments(original: onnx.ModelProto, pruned: onnx.ModelProto, kept: dict[str, np.ndarray],
                  data: CalibData, teacher_stats: dict | None = None) -> tuple[onnx.ModelProto | None, dict]:
    """A copy of `pruned` with affine moment matching on its repaired Conv/Gemm outputs.

    `teacher_stats`: the original's statistics of those outputs on the 'score' split (the
    calibration pass's, `moment_targets`), or None to collect them now.
    Returns the model (None when nothing to match) and the teacher statistics (reusable).
    """
    outs = repaired_nodes(pruned, kept)
    if not outs:
        return None, teacher_stats or {}
    if teacher_stats is None or any(o not in teacher_stats for o in outs):
        teacher_stats = activations.collect(original, {o: 1 for o in outs}, data, "score", label="teacher statistics")
    student = activations.collect(pruned, {o: 1 for o in outs}, data, "score", label="pruned statistics")
    result = onnx.ModelProto()
    result.CopyFrom(pruned)
    index = GraphIndex(result)
    names = _all_names(result)
    for node in result.graph.node:
        if node.output[0] not in student:
            continue
        t, s = teacher_stats[node.output[0]], student[node.output[0]]
        mu_t, sd_t = t.mean, np.sqrt(t.var)
        if node.output[0] in kept:
            mu_t, sd_t = mu_t[kept[node.output[0]]], sd_t[kept[node.output[0]]]
        mu_s, sd_s = s.mean, np.sqrt(s.var)
        a = np.clip(np.where(sd_s > 1e-8, sd_t / np.maximum(sd_s, 1e-12), 1.0), 0.5, 2.0)
        c = mu_t - a * mu_s
        w = index.const(node.input[1])
        out_axis = rule_for(node).out_axis(node)
        shape = [1] * w.ndim
        shape[out_axis] = -1
        _set_initializer(result, node, 1, (w * a.reshape(shape)).astype(w.dtype), names)
        bias = index.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        base = np.zeros(len(a)) if bias is None else np.broadcast_to(bias.reshape(-1) if bias.size in (1, len(a))
                                                                      else bias, (len(a),))
        beta = rule_for(node).bias_scale(node)     # the bias is applied scaled (Gemm's beta)
        if beta == 0:
            continue
        new_bias = (a * base * beta + c) / beta
        _set_initializer(result, node, 2, new_bias.astype(w.dtype), names)
    remove_dead(result)    # the replaced weights and biases would otherwise stay in the file, unread
    return result, teacher_stats

