"""Property tests on random valid CNN graphs (issue 6; generator: tests/fuzzgen.py).

For every seed, `random_cnn(seed)` (with the generator's extra ops) is pruned with a criterion drawn
from the data-free ones (`random` twice as often; regression seeds: `random` on the graph as found)
at a ratio drawn from {0.2, 0.5, 0.8} (sometimes with round_to=2 or global pruning), and:
  1. the pruned model passes onnx.checker (full check) and runs in onnxruntime;
  2. graph input/output names, dtypes and shapes are unchanged (dynamic dims kept), and the
     outputs have the same run-time shapes as the original's;
  3. pruned == masked original (tests/helpers.check_oracle);
  4. ratio 0 reproduces the original's outputs exactly (max abs diff 0).
"Nothing to prune" is a valid outcome; `test_fuzz_not_vacuous` prints how many seeds were pruned and
fails below 70%.

Seeds: ONNXPRUNE_FUZZ_SEEDS (default 300) seeds from ONNXPRUNE_FUZZ_START (default 0), plus
every seed in REGRESSIONS (seeds that once exposed a bug, now fixed). tests/fuzz_repro_<k>.onnx
are the shrunk reproducers of those bugs.
More seeds, with shrinking and counts: benchmarks/fuzz.py.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import onnxprune
from fuzzgen import _dims, feeds_for, generate, random_cnn, run_model
from helpers import check_oracle
from onnxprune.errors import OnnxPruneError
from onnxprune.analysis.graph import real_inputs
from onnxprune.pipeline import prepare

N_SEEDS = int(os.environ.get("ONNXPRUNE_FUZZ_SEEDS", "300"))
START = int(os.environ.get("ONNXPRUNE_FUZZ_START", "0"))
SEEDS = range(START, START + N_SEEDS)
MIN_PRUNED_FRACTION = 0.7

HERE = os.path.dirname(os.path.abspath(__file__))

BUG1 = ("fixed: groups._components dropped whole-tensor blocks (graph output, blocking consumer) of a "
        "Concat output that also had partially blocked channels (Concat of a graph input)")
BUG2 = ("fixed: ratio 0 was not bit-exact: rewrite.finalise stored inferred value_info, which changed "
        "onnxruntime's layout optimisations (diffs ~1e-6)")

# seed -> bug it once exposed: every failing seed of `python benchmarks/fuzz.py --n 10000` (seeds 0..9999),
# kept as regression tests
REGRESSIONS: dict[int, str] = {
    **{s: BUG1 for s in (293, 602, 970, 1028, 1303, 1381, 1507, 1942, 2015, 3154, 3545, 3661, 3748, 4137,
                         4338, 4582, 4641, 5077, 5354, 6189, 6658, 7408, 7675, 7827, 8244, 8313, 8614, 8878,
                         9328)},
    **{s: BUG2 for s in (2571, 2728, 4187, 6837, 9354)},
}

# shrunk reproducers: file -> (seed whose options are used, bug, the right outcome, a reason the analysis must give)
REPROS = {
    # Conv -> Concat(input, conv) as graph output: the conv's channels reach the output, so nothing
    "fuzz_repro_1.onnx": (3748, BUG1, "nothing", "reaches graph output 'cat4'"),
    # Conv -> Slice -> Conv -> Conv -> Add, ratio 0 (0.2 of 2 channels removes none)
    "fuzz_repro_2.onnx": (2571, BUG2, "unchanged", None),
    # Concat(conv, input) -> Slice step 2 -> Conv: was a broken model; the stepped Slice blocks it
    "fuzz_repro_3.onnx": (1, BUG1, "nothing", "steps over channels"),
}


CRITERIA = ("random", "random", "l1", "l2", "fpgm", "bn_scale")


def fuzz_criterion(seed: int) -> str:
    """The criterion of `seed`: drawn among the data-free ones; "random" for the regression seeds (as found)."""
    if seed in REGRESSIONS:
        return "random"
    return str(np.random.default_rng([seed, 98]).choice(CRITERIA))


def fuzz_graph(seed: int) -> onnx.ModelProto:
    """The graph of `seed`: with the extra ops, except for regression seeds (the graphs that exposed their bugs)."""
    return random_cnn(seed, extras=seed not in REGRESSIONS)


def fuzz_options(seed: int) -> tuple[float, dict]:
    """The ratio and selection options used for `seed`."""
    rng = np.random.default_rng([seed, 99])
    ratio = float(rng.choice([0.2, 0.5, 0.8]))
    r = rng.random()
    kw = {"round_to": 2} if r < 0.2 else ({"global_pruning": True} if r < 0.4 else {})
    return ratio, kw


def _signature(values) -> list[tuple]:
    return [(v.name, v.type.tensor_type.elem_type, _dims(v)) for v in values]


def check_model(model: onnx.ModelProto, seed: int, stages: list | None = None) -> str:
    """Check the four properties on `model`; returns "pruned", "unchanged" or "nothing".

    Raises AssertionError (a property failed) or any exception onnxprune raised (a crash).
    `stages` (a list) receives the name of each stage as it starts, for failure reports.
    """
    stages = stages if stages is not None else []
    ratio, kw = fuzz_options(seed)
    criterion = fuzz_criterion(seed)
    feeds = feeds_for(model, seed=seed)
    stages.append("original")
    ref = run_model(model, feeds)

    stages.append("prune")
    try:
        result = onnxprune.prune(model, criterion=criterion, ratio=ratio, seed=seed, **kw)
    except OnnxPruneError as exc:
        if "nothing to prune" not in str(exc):
            raise
        return "nothing"
    pruned = result.model

    # 1. valid and runnable
    stages.append("checker")
    onnx.checker.check_model(pruned, full_check=True)
    stages.append("verification")
    ver = result.report["verification"]
    assert ver["valid"], f"verification problems: {ver['problems']}"
    stages.append("run")
    out = run_model(pruned, feeds)

    # 2. interface unchanged
    stages.append("signature")
    assert _signature(real_inputs(pruned)) == _signature(real_inputs(model)), "graph inputs changed"
    assert _signature(pruned.graph.output) == _signature(model.graph.output), "graph outputs changed"
    for name, a in ref.items():
        assert out[name].shape == a.shape and out[name].dtype == a.dtype, \
            f"output {name}: {out[name].dtype}{list(out[name].shape)} vs {a.dtype}{list(a.shape)}"

    # 3. pruned == masked original
    stages.append("oracle")
    _, _, removed = check_oracle(model, criterion, ratio, seed=seed, min_removed=0, **kw)

    # 4. ratio 0 is the identity
    stages.append("ratio0")
    zero = onnxprune.prune(model, ratio=0.0, seed=seed)
    ver0 = zero.report["verification"]
    assert ver0["valid"], f"ratio 0: verification problems: {ver0['problems']}"
    assert set(ver0["outputs"]) == set(ref), f"ratio 0: verified outputs {sorted(ver0['outputs'])}"
    for name, entry in ver0["outputs"].items():
        assert entry.get("max_abs_diff") == 0.0, f"ratio 0: output {name}: {entry}"
    out0 = run_model(zero.model, feeds)
    for name, a in ref.items():
        np.testing.assert_array_equal(out0[name], a, err_msg=f"ratio 0: output {name}")
    stages.append("done")
    return "pruned" if len(removed) else "unchanged"


def check_seed(seed: int, stages: list | None = None) -> str:
    """`check_model` on the graph of `seed`."""
    return check_model(fuzz_graph(seed), seed, stages)


def _params():
    for seed in sorted(set(SEEDS) | set(REGRESSIONS)):
        yield pytest.param(seed, id=f"seed{seed}")


@pytest.mark.parametrize("seed", list(_params()))
def test_fuzz_properties(seed):
    check_seed(seed)


@pytest.mark.parametrize("name", [pytest.param(n, id=n[:-5]) for n in REPROS])
def test_fuzz_repro(name):
    seed, _, outcome, reason = REPROS[name]
    model = onnx.load(os.path.join(HERE, name))
    assert check_model(model, seed) == outcome
    groups = prepare(model).analysis.groups
    if reason is not None:
        assert not any(g.prunable for g in groups)
        assert any(reason in r for g in groups for r in g.reasons), [g.reasons for g in groups]
    else:  # the prunable conv is pruned correctly at a ratio that removes a channel
        assert any(g.prunable for g in groups)
        check_oracle(model, "l1", 0.5)


def test_fuzz_generator_is_deterministic_and_valid():
    """Same seed, same bytes; every generated graph needed at most a few attempts."""
    for seed in list(SEEDS)[:20]:
        a, info = generate(seed)
        assert a.SerializeToString() == random_cnn(seed).SerializeToString()
        # without the extra ops: the graph of the original generator, a prefix of the extended one's blocks
        b, old = generate(seed, extras=False)
        assert info.blocks[:len(old.blocks)] == old.blocks
        assert len(info.discards) <= 2, info.discards


def test_fuzz_not_vacuous():
    """Across the seeds, at least 70% of graphs lose channels with their own ratio and options.

    (Selection only, no rewrite: under pytest-xdist the property tests run in other processes.)
    """
    from onnxprune import criteria
    from onnxprune.pipeline import prepare
    from onnxprune.allocation.select import SelectConfig, select

    pruned = nothing = 0
    ops, crits = set(), set()
    for seed in SEEDS:
        model = fuzz_graph(seed)
        ops |= {n.op_type for n in model.graph.node}
        ops |= {"Resize(axes)" for n in model.graph.node if n.op_type == "Resize" and any(a.name == "axes" for a in n.attribute)}
        an = prepare(model).analysis
        if not any(g.prunable for g in an.groups):
            nothing += 1
            continue
        ratio, kw = fuzz_options(seed)
        crits.add(fuzz_criterion(seed))
        scores = criteria.score(fuzz_criterion(seed), criteria.ScoreContext(an, seed=seed))
        plan, _ = select(an, scores, SelectConfig(ratio=ratio, **kw))
        pruned += len(plan.removed_units(an)) > 0
    print(f"fuzz: {pruned}/{len(SEEDS)} graphs pruned, {nothing} with nothing to prune")
    assert pruned >= MIN_PRUNED_FRACTION * len(SEEDS), \
        f"only {pruned}/{len(SEEDS)} graphs have something pruned ({nothing} have nothing to prune)"
    if len(SEEDS) >= 100:   # the default run draws every extra op and every data-free criterion
        want = {"ArgMax", "ArgMin", "LpPool", "GlobalLpPool", "Pow", "Greater", "Less", "Equal", "And", "Or", "Xor",
                "Not", "ReduceSum", "DepthToSpace", "SpaceToDepth", "Tile", "Expand", "Einsum", "LpNormalization",
                "Resize(axes)"}
        assert want <= ops, sorted(want - ops)
        assert crits == set(CRITERIA), crits
