"""Fuzzing campaign: check the issue-6 properties on many random graphs and shrink the failures.

    python benchmarks/fuzz.py --n 5000 --out fuzz_failures/ [--start 0] [--workers 2] [--no-shrink]

For each seed, tests/fuzzgen.py builds a random valid CNN and tests/test_fuzz.check_model checks
the properties (valid + runnable, interface unchanged, pruned == masked oracle, ratio 0 exact).
Prints the counts (valid, pruned, nothing-to-prune, property failures by stage, crashes) and the
distinct failure signatures. Each failing graph is shrunk while it fails the same way
(fewer blocks of the same seed, single blocks left out, then graph outputs dropped, tail nodes
deleted and shape-preserving nodes bypassed) and saved as `seed_<n>.onnx` with `seed_<n>.txt`
(the error, traceback, options and how it was shrunk).
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import re
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

SHRINK_SECONDS = 90


def _setup_worker():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import warnings

    warnings.filterwarnings("ignore")


def signature(stage: str, exc: BaseException) -> str:
    """A failure's kind: the stage, the exception type and its message with numbers and names blanked."""
    msg = str(exc).splitlines()[0] if str(exc) else ""
    msg = re.sub(r"'[^']*'", "'*'", msg)
    msg = re.sub(r"\b[A-Za-z_]+\d+(_\d+)?\b", "#", msg)
    msg = re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "#", msg)
    return f"{stage}: {type(exc).__name__}: {msg[:120]}"


def kind(stage: str, exc: BaseException) -> str:
    """Coarse bucket of a failure: which property failed, or 'crash' for an exception out of onnxprune."""
    if stage == "original":
        return "generator"  # the generated model itself does not run: a generator bug
    if stage in ("checker", "verification", "run"):
        return "invalid"
    if stage == "signature":
        return "interface"
    if stage in ("oracle", "ratio0") and isinstance(exc, AssertionError):
        return stage
    return "crash"


def evaluate(model, seed):
    """(outcome, stage, exception) for `model` checked with the options of `seed`."""
    from test_fuzz import check_model

    stages = []
    try:
        return check_model(model, seed, stages), None, None
    except Exception as exc:  # noqa: BLE001 - everything is a finding here
        return "fail", stages[-1] if stages else "?", exc


# ---- shrinking ---------------------------------------------------------------------------------

def _still_fails(model, seed, sig) -> bool:
    from fuzzgen import validate

    if validate(model) is not None:
        return False
    out, stage, exc = evaluate(model, seed)
    return out == "fail" and signature(stage, exc) == sig


def _outputs_shapes(model):
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    return {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}


def _dead_code(model):
    """Drop nodes nobody reads and initializers no node reads (in place)."""
    g = model.graph
    needed = {o.name for o in g.output}
    alive = []
    for node in reversed(g.node):
        if any(o in needed for o in node.output):
            alive.append(node)
            needed.update(i for i in node.input if i)
    alive.reverse()
    del g.node[:]
    g.node.extend(alive)
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)


def _candidates(model):
    """Smaller variants of `model`: one graph output dropped, one sink node deleted, one node bypassed."""
    import onnx

    g = model.graph
    values = _outputs_shapes(model)
    outs = [o.name for o in g.output]
    inputs = {i.name for i in g.input}
    consumed = collections.Counter(i for n in g.node for i in n.input)
    # drop a graph output (the node stays when something else reads it)
    if len(outs) > 1:
        for name in reversed(outs):
            m = onnx.ModelProto()
            m.CopyFrom(model)
            keep = [o for o in m.graph.output if o.name != name]
            del m.graph.output[:]
            m.graph.output.extend(keep)
            _dead_code(m)
            yield f"drop output {name}", m
    # delete a sink node (all outputs are graph outputs, read by nobody); its data inputs become outputs
    for idx in reversed(range(len(g.node))):
        node = g.node[idx]
        if node.op_type == "Constant" or any(consumed[o] for o in node.output if o):
            continue
        m = onnx.ModelProto()
        m.CopyFrom(model)
        gone = set(node.output)
        keep = [o for o in m.graph.output if o.name not in gone]
        del m.graph.output[:]
        m.graph.output.extend(keep)
        existing = {o.name for o in m.graph.output}
        inits = {i.name for i in m.graph.initializer}
        producers = {o: n for n in m.graph.node for o in n.output}
        for inp in node.input:
            if (inp and inp not in inputs and inp not in inits and inp not in existing and inp in values
                    and consumed[inp] == 1 and producers.get(inp) is not None
                    and producers[inp].op_type != "Constant"):
                m.graph.output.append(values[inp])
                existing.add(inp)
        del m.graph.node[idx]
        if not m.graph.output:
            continue
        _dead_code(m)
        yield f"delete {node.op_type} {node.name}", m
    # bypass a node by one of its inputs of the output's shape (BN, activations, Add, Mul, ...)
    for idx in range(len(g.node)):
        node = g.node[idx]
        if not node.input or not node.output or len(node.output) != 1 or node.output[0] in outs:
            continue
        dst = node.output[0]
        for src in dict.fromkeys(node.input):
            if not src or (src not in values and src not in inputs) or dst not in values:
                continue
            if _dims(values.get(src) or _input(g, src)) != _dims(values[dst]):
                continue
            m = onnx.ModelProto()
            m.CopyFrom(model)
            del m.graph.node[idx]
            for n in m.graph.node:
                for i, name in enumerate(n.input):
                    if name == dst:
                        n.input[i] = src
            _dead_code(m)
            yield f"bypass {node.op_type} {node.name}", m


def _input(g, name):
    for i in g.input:
        if i.name == name:
            return i
    return None


def _dims(vi):
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def shrink(seed, sig, info, deadline):
    """The smallest model found that still fails with `sig`, and the steps that got there."""
    from fuzzgen import _build, validate

    attempt = info.attempt
    steps = []
    model, _ = _build(seed, attempt, None, frozenset())
    n_total = len(info.blocks)
    # 1. the shortest failing prefix of blocks
    for k in range(0, n_total):
        if time.time() > deadline:
            break
        cand, _ = _build(seed, attempt, k, frozenset())
        if _still_fails(cand, seed, sig):
            model, n_total = cand, k
            steps.append(f"first {k} blocks")
            break
    # 2. leave single blocks out
    skip = set()
    for i in reversed(range(n_total)):
        if time.time() > deadline:
            break
        try:
            cand, _ = _build(seed, attempt, n_total, frozenset(skip | {i}))
        except Exception:
            continue
        if _still_fails(cand, seed, sig):
            skip.add(i)
            model = cand
            steps.append(f"skip block {i}")
    # 3. graph surgery until nothing smaller fails the same way
    progress = True
    while progress and time.time() < deadline:
        progress = False
        for what, cand in _candidates(model):
            if time.time() > deadline:
                break
            try:
                if _still_fails(cand, seed, sig):
                    model = cand
                    steps.append(what)
                    progress = True
                    break
            except Exception:
                continue
    assert validate(model) is None
    return model, steps


# ---- the campaign -------------------------------------------------------------------------------

def run_seed(args):
    seed, out_dir, do_shrink = args
    from fuzzgen import generate

    t = time.time()
    try:
        model, info = generate(seed)
    except Exception as exc:  # noqa: BLE001
        return {"seed": seed, "outcome": "generator", "error": str(exc), "discards": [], "seconds": time.time() - t}
    outcome, stage, exc = evaluate(model, seed)
    row = {"seed": seed, "outcome": outcome, "discards": info.discards, "opset": info.opset,
           "blocks": info.blocks, "nodes": len(model.graph.node)}
    if outcome == "fail":
        sig = signature(stage, exc)
        row.update(stage=stage, kind=kind(stage, exc), signature=sig, error=str(exc)[:2000],
                   traceback="".join(traceback.format_exception(exc))[-4000:])
        small, steps = model, []
        if do_shrink:
            try:
                small, steps = shrink(seed, sig, info, time.time() + SHRINK_SECONDS)
            except Exception as e:  # noqa: BLE001
                steps = [f"shrinking failed: {type(e).__name__}: {e}"]
        row.update(shrunk_nodes=len(small.graph.node), shrink_steps=steps)
        if out_dir:
            import onnx

            from test_fuzz import fuzz_criterion, fuzz_options

            onnx.save(small, os.path.join(out_dir, f"seed_{seed}.onnx"))
            ratio, kw = fuzz_options(seed)
            with open(os.path.join(out_dir, f"seed_{seed}.txt"), "w") as f:
                f.write(f"seed {seed}: {row['kind']} at stage '{stage}'\n")
                f.write(f"signature: {sig}\n")
                f.write(f"options: criterion={fuzz_criterion(seed)} ratio={ratio} {kw} seed={seed}\n")
                f.write(f"generator: opset {info.opset} ir {info.ir_version} dynamic_batch {info.dynamic_batch} "
                        f"attempt {info.attempt} blocks {info.blocks}\n")
                f.write(f"nodes: {len(model.graph.node)} -> {len(small.graph.node)} after shrinking\n")
                f.write("shrink steps: " + "; ".join(steps) + "\n")
                f.write("reproduce: python -c \"import sys; sys.path.insert(0, 'tests'); import onnx, test_fuzz; "
                        f"test_fuzz.check_model(onnx.load('seed_{seed}.onnx'), {seed})\"\n\n")
                f.write(row["error"] + "\n\n" + row["traceback"])
    row["seconds"] = time.time() - t
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="number of seeds")
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--out", default="fuzz_failures", help="folder for the failing graphs")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-shrink", action="store_true")
    ap.add_argument("--json", help="write every row as JSON lines")
    ap.add_argument("--time-limit", type=float, default=0, help="stop submitting seeds after this many seconds")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    t0 = time.time()
    counts = collections.Counter()
    sigs: dict[str, list[int]] = collections.defaultdict(list)
    discards = collections.Counter()
    rows = []
    work = [(s, args.out, not args.no_shrink) for s in range(args.start, args.start + args.n)]
    ctx = mp.get_context("fork")
    with ctx.Pool(args.workers, initializer=_setup_worker, maxtasksperchild=200) as pool:
        for i, row in enumerate(pool.imap_unordered(run_seed, work, chunksize=4)):
            rows.append(row)
            counts[row["outcome"] if row["outcome"] != "fail" else row["kind"]] += 1
            counts["valid"] += row["outcome"] != "generator" and row.get("kind") != "generator"
            for d in row["discards"]:
                discards[re.sub(r"\d+", "#", d)[:100]] += 1
            if row["outcome"] == "fail":
                sigs[row["signature"]].append(row["seed"])
                print(f"  seed {row['seed']}: {row['signature']} "
                      f"({row['nodes']} -> {row.get('shrunk_nodes')} nodes)", flush=True)
            if (i + 1) % 250 == 0:
                print(f"[{i + 1}/{len(work)}] {time.time() - t0:.0f}s {dict(counts)}", flush=True)
            if args.time_limit and time.time() - t0 > args.time_limit:
                pool.terminate()
                break
    if args.json:
        with open(args.json, "w") as f:
            for row in sorted(rows, key=lambda r: r["seed"]):
                f.write(json.dumps({k: v for k, v in row.items() if k != "traceback"}) + "\n")

    n = len(rows)
    fails = sum(len(v) for v in sigs.values())
    print(f"\nseeds {n} in {time.time() - t0:.1f}s ({args.workers} workers)")
    print(f"  valid graphs      {counts['valid']} (discarded candidates: {sum(discards.values())})")
    print(f"  pruned            {counts['pruned']}")
    print(f"  nothing removed   {counts['unchanged']} (prunable, but the ratio removes no channel)")
    print(f"  nothing to prune  {counts['nothing']}")
    print(f"  oracle failures   {counts['oracle']}")
    print(f"  ratio-0 failures  {counts['ratio0']}")
    print(f"  invalid pruned    {counts['invalid']}")
    print(f"  interface changed {counts['interface']}")
    print(f"  crashes           {counts['crash']}")
    print(f"  generator errors  {counts['generator']} (no valid graph, or the generated graph does not run)")
    for d, c in discards.most_common(10):
        print(f"  discard x{c}: {d}")
    print(f"\n{len(sigs)} distinct failure signatures ({fails} failing seeds):")
    for sig, seeds in sorted(sigs.items(), key=lambda kv: -len(kv[1])):
        print(f"  x{len(seeds):<4} {sig}\n        seeds {sorted(seeds)[:12]}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
