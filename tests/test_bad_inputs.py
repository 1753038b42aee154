"""The bad-input corpus (tests/bad_inputs/, made by scripts/make_bad_inputs.py) through the real CLI.

Every case in `manifest.json` runs `python -m onnxprune ...` in a subprocess, in a work folder
holding copies of its input files, with the output in an empty folder of its own. Checked for
every case: the exit code; stderr is exactly one line (`error: ...` naming the problem, or
`wrote ...` on success); no traceback anywhere; on failure nothing is written (no output, no
temporary file), on success only the output; the inputs are byte-identical afterwards.

Outside pytest-xdist the subprocesses of the selected cases are started together, a few at a
time, so the file runs in a fraction of the time one-by-one would take.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "bad_inputs")
SCRIPT = os.path.join(ROOT, "scripts", "make_bad_inputs.py")
MANIFEST = json.load(open(os.path.join(CORPUS, "manifest.json")))
CASES = {c["name"]: c for c in MANIFEST["cases"]}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _hashes(folder):
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def _listing(folder):
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, dirs, names in os.walk(folder)
                  for n in [*names, *(x + "/" for x in dirs)])


class _Result:
    def __init__(self, ok: bool, why: str = ""):
        self.ok, self.why = ok, why

    def __bool__(self):
        return self.ok


def _immutable(folder, on: bool) -> _Result:
    """`chattr +i/-i folder`; true when the folder then refuses writes (also checked with os.access)."""
    try:
        proc = subprocess.run(["chattr", "+i" if on else "-i", str(folder)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return _Result(False, f"{type(exc).__name__}: {exc}")
    if proc.returncode != 0:
        return _Result(False, proc.stderr.strip()[:200])
    return _Result(not os.access(folder, os.W_OK) if on else True, "os.access still reports the folder writable")


def execute(case: dict, base) -> dict:
    """Run one manifest case in `base` (a fresh folder); returns what the test checks."""
    work, outdir = base / "work", base / "out"
    work.mkdir()
    outdir.mkdir()
    for name in case["files"]:
        shutil.copy(os.path.join(CORPUS, name), work / name)
    for step in case.get("setup", []):
        if step.startswith("mkdir:"):
            (work / step.split(":", 1)[1]).mkdir()
        elif step == "readonly_outdir":
            outdir.chmod(stat.S_IRUSR | stat.S_IXUSR)
            if IS_ROOT:   # root ignores permission bits, not the immutable flag
                immutable = _immutable(outdir, True)
                if not immutable:
                    return {"skip": f"running as root and `chattr +i` is not available here: {immutable.why}"}
        else:
            raise ValueError(f"unknown setup step {step}")
    out = outdir / "pruned.onnx"
    args = [a.replace("{out}", str(out)).replace("{outdir}", str(outdir)) for a in case["args"]]
    before, listing_before = _hashes(work), _listing(work)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "COLUMNS": "120"}
    try:
        proc = subprocess.run([sys.executable, "-m", "onnxprune", *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=300)
    finally:
        if IS_ROOT and "readonly_outdir" in case.get("setup", []):
            _immutable(outdir, False)
        outdir.chmod(stat.S_IRWXU)
    return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "before": before,
            "after": _hashes(work), "listing_before": listing_before, "listing_after": _listing(work),
            "outdir": _listing(outdir), "out": out, "work": work}


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory):
    """name -> outcome of that case, run on first use (all selected cases at once outside xdist)."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if getattr(item, "callspec", None) and item.module is request.module and "name" in item.callspec.params]
    together = "PYTEST_XDIST_WORKER" not in os.environ
    pool = ThreadPoolExecutor(max_workers=3 if together else 1)
    futures = {}

    def submit(name):
        if name not in futures:
            futures[name] = pool.submit(execute, CASES[name], tmp_path_factory.mktemp(name.replace(".", "_")))

    def get(name):
        if together and not futures:
            for n in selected:
                submit(n)
        submit(name)
        return futures[name].result()

    yield get
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("name", list(CASES))
def test_case(outcomes, name):
    case = CASES[name]
    r = outcomes(name)
    if "skip" in r:
        pytest.skip(r["skip"])
    context = f"rc={r['rc']}\nstderr:\n{r['stderr']}\nstdout (tail):\n{r['stdout'][-1500:]}"
    assert r["rc"] == case["exit"], context
    assert "Traceback" not in r["stderr"] and "Traceback" not in r["stdout"], context
    lines = r["stderr"].splitlines()
    assert len(lines) == 1 and lines[0].strip(), context
    if case["exit"] == 0:
        assert lines[0].startswith("wrote "), context
    else:
        assert lines[0].startswith("error: ") and "internal error" not in lines[0], context
    assert case["stderr"] in lines[0], context
    if "stdout" in case:
        assert case["stdout"] in " ".join(r["stdout"].split()), context
    # the inputs are untouched and nothing appeared next to them (no temporary files, no default output)
    assert r["after"] == r["before"]
    assert r["listing_after"] == r["listing_before"]
    if case["exit"] == 0:
        assert r["outdir"] == ["pruned.onnx"], r["outdir"]
        onnx.checker.check_model(onnx.load(str(r["out"])))
    else:
        assert r["outdir"] == [], r["outdir"]


def _ort_outputs(path, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_ratio_zero_computes_exactly_what_the_input_computes(outcomes):
    r = outcomes("ratio_zero")
    assert r["rc"] == 0, r["stderr"]
    original = r["work"] / CASES["ratio_zero"]["files"][0]
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    for a, b in zip(_ort_outputs(original, feeds), _ort_outputs(r["out"], feeds)):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_custom_op_branch_is_left_alone_and_the_rest_pruned(outcomes):
    r = outcomes("custom_op_branch")
    assert r["rc"] == 0, r["stderr"]
    model = onnx.load(str(r["out"]))
    assert any(n.op_type == "Mystery" and n.domain == "com.example" for n in model.graph.node)
    dims = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = next(i for i in model.graph.initializer if i.name == node.input[1])
            dims[node.name] = list(w.dims)
    assert dims["conv_a"][0] == 8          # read by the unknown op: blocked, kept whole
    assert dims["conv_b"][0] < 8           # the other branch is pruned
    assert dims["stem"][0] < 8


def _generator():
    spec = importlib.util.spec_from_file_location("make_bad_inputs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_reproduces_the_committed_corpus(tmp_path):
    """The corpus cannot drift from its script: regenerating gives the same files, byte for byte."""
    target = tmp_path / "bad_inputs"
    names = _generator().write(str(target))
    assert names == sorted(os.listdir(CORPUS)), "rerun: python scripts/make_bad_inputs.py"
    for name in names:
        assert (target / name).read_bytes() == open(os.path.join(CORPUS, name), "rb").read(), \
            f"{name} differs from the generator's output; rerun: python scripts/make_bad_inputs.py"


def test_manifest_uses_every_file_and_stays_small():
    used = {f for c in MANIFEST["cases"] for f in c["files"]}
    files = set(os.listdir(CORPUS)) - {"manifest.json"}
    assert used == files
    assert sum(os.path.getsize(os.path.join(CORPUS, f)) for f in os.listdir(CORPUS)) < 200_000
    assert len(CASES) == len(MANIFEST["cases"])
    for c in MANIFEST["cases"]:
        assert c["exit"] in (0, 1, 2) and c["stderr"] and isinstance(c["args"], list)   # 2: usage errors
