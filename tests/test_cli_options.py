"""The CLI's promised error paths, and one test per public option that it changes what it says.

Error paths (docs/safety.md, "What is refused, and how"): an invalid pruned model is not written (exit 1, one line), an
unexpected exception is one line naming an internal error (exit 1) and `--debug` shows it with
its traceback, MemoryError is "out of memory" (exit 1).
Options: `--mean/--std/--scale` (prune, eval, sweep) reach the image loader and normalise as
``(pixel*scale - mean)/std``; `--holdout` sets the held-out share; `--preset thorough` adds
`ensemble` to the blend pool and searches the weights; `--variety gate|soft` change the choice;
`--latency-batch/--latency-threads` reach the `--bench` timing; `bench --spin` turns spinning on.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from onnxprune.calibration import calib as calib_mod
from onnx import numpy_helper

from onnxprune import rewrite
from onnxprune.cli import main
from test_calibration import conv_bn_relu_conv, npz_data

HERE = os.path.dirname(__file__)
RESNET = os.path.join(HERE, "models", "resnet_style.onnx")
COLOURS = [(200, 100, 50), (10, 240, 128)]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def model_file(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_relu_conv(), path)
    return path


def colour_folder(tmp_path, n=8):
    """`n` uniform-colour 8x8 PNGs in two class folders: resizing and cropping keep their pixels exact."""
    folder = tmp_path / "imgs"
    for i in range(n):
        sub = folder / f"class{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), COLOURS[i % 2], np.uint8)).save(sub / f"{i}.png")
    return folder


@pytest.fixture
def loaded(monkeypatch):
    """Every array the image loader returns, in order."""
    seen = []
    real = calib_mod.load_image

    def spy(path, spec, config):
        arr = real(path, spec, config)
        seen.append(arr)
        return arr
    monkeypatch.setattr(calib_mod, "load_image", spy)
    return seen


NORM = ["--mean", "0.5,0.25,0.125", "--std", "2,4,0.5", "--scale", "0.01"]


def expected_pixels():
    mean, std = np.array([0.5, 0.25, 0.125]), np.array([2, 4, 0.5])
    return [((np.array(c) * 0.01 - mean) / std).astype(np.float32) for c in COLOURS]


def assert_normalised(seen):
    assert seen
    want = expected_pixels()
    for arr in seen:                                    # NCHW: every pixel of channel k is the same value
        per_channel = arr.reshape(3, -1)
        assert np.ptp(per_channel, axis=1).max() == 0
        assert any(np.allclose(per_channel[:, 0], w, rtol=1e-6) for w in want), per_channel[:, 0]


# ---- error paths -----------------------------------------------------------------------------------

def test_invalid_pruned_model_is_not_written(tmp_path, monkeypatch):
    """A rewrite bug (the last Conv keeps one input channel too few) makes verification fail: exit 1, one line,
    no file."""
    real = rewrite.apply

    def broken(*args, **kwargs):
        model = real(*args, **kwargs)
        conv = [n for n in model.graph.node if n.op_type == "Conv"][-1]
        init = next(i for i in model.graph.initializer if i.name == conv.input[1])
        w = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w[:, :-1]), init.name))
        return model
    monkeypatch.setattr(rewrite, "apply", broken)
    out = tmp_path / "p.onnx"
    # --no-recover: the data-free repair would run the broken model first (an internal error there)
    result = invoke(RESNET, "--criterion", "l1", "--ratio", "0.5", "--no-recover", "-o", out)
    assert result.exit_code == 1
    assert "error: pruned model is invalid, nothing written" in result.stderr
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.iterdir())


def _raise(exc):
    def fn(*args, **kwargs):
        raise exc
    return fn


def test_internal_error_is_one_line_and_debug_shows_it(tmp_path, monkeypatch):
    import onnxprune.pipeline
    monkeypatch.setattr(onnxprune.pipeline, "prune", _raise(RuntimeError("boom\nsecond line")))
    out = tmp_path / "p.onnx"
    result = invoke(RESNET, "-o", out)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: internal error (RuntimeError: boom); rerun with --debug for the traceback"]
    result = invoke(RESNET, "-o", out, "--debug")
    assert isinstance(result.exception, RuntimeError) and str(result.exception) == "boom\nsecond line"
    assert result.exc_info[2] is not None                # the traceback reaches the caller
    assert not out.exists()


def test_debug_reraises_clear_errors_too(tmp_path):
    result = invoke(tmp_path / "missing.onnx", "--debug")
    assert type(result.exception).__name__ == "OnnxPruneError"
    assert invoke(tmp_path / "missing.onnx").exit_code == 1


def test_memory_error_is_out_of_memory(tmp_path, monkeypatch):
    import onnxprune.pipeline
    monkeypatch.setattr(onnxprune.pipeline, "prune", _raise(MemoryError()))
    result = invoke(RESNET, "-o", tmp_path / "p.onnx")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: out of memory"


# ---- normalisation options ---------------------------------------------------------------------------

def test_prune_mean_std_scale_normalise_calibration_images(tmp_path, loaded):
    rep = tmp_path / "r.json"
    result = invoke(model_file(tmp_path), "--calib", colour_folder(tmp_path), "--criterion", "l1", "--ratio", "0.5",
                    "--allocate", "uniform", "--no-recover", "--no-order-check", "-o", tmp_path / "p.onnx",
                    "--report", rep, *NORM)
    assert result.exit_code == 0, result.output
    assert_normalised(loaded)


def test_eval_mean_std_scale_normalise_images(tmp_path, loaded):
    path = model_file(tmp_path)
    result = invoke("eval", path, path, "--data", colour_folder(tmp_path), "--json", *NORM)
    assert result.exit_code == 0, result.output
    assert_normalised(loaded)
    metrics = json.loads(result.stdout)
    assert metrics["samples"] == 8, metrics


def test_sweep_mean_std_scale_normalise_images(tmp_path, loaded):
    result = invoke("sweep", model_file(tmp_path), "--ratios", "0.5", "--calib", colour_folder(tmp_path),
                    "--no-latency", *NORM)
    assert result.exit_code == 0, result.output
    assert_normalised(loaded)


def test_default_normalisation_is_pixel_over_255(tmp_path, loaded):
    path = model_file(tmp_path)
    assert invoke("eval", path, path, "--data", colour_folder(tmp_path), "--json").exit_code == 0
    want = [np.array(c, np.float32) / 255 for c in COLOURS]
    assert all(any(np.allclose(a.reshape(3, -1)[:, 0], w, rtol=1e-6) for w in want) for a in loaded)
    assert {int(np.argmin([np.abs(a.reshape(3, -1)[:, 0] - w).max() for w in want])) for a in loaded} == {0, 1}


# ---- calibration and search options ------------------------------------------------------------------

@pytest.mark.parametrize("holdout,expect", [(None, 8), ("0.5", 16)])
def test_holdout_sets_the_held_out_share(tmp_path, holdout, expect):
    rep = tmp_path / "r.json"
    args = ["--holdout", holdout] if holdout else []
    result = invoke(model_file(tmp_path), "--calib", npz_data(tmp_path, n=32), "--criterion", "l1", "--allocate",
                    "uniform", "--no-order-check", "-o", tmp_path / "p.onnx", "--report", rep, *args)
    assert result.exit_code == 0, result.output
    assert json.load(open(rep))["calibration"]["holdout"] == expect


def test_preset_thorough_adds_ensemble_and_searches_blend_weights(tmp_path):
    reports = {}
    for preset in ("default", "thorough"):
        rep = tmp_path / f"{preset}.json"
        result = invoke(model_file(tmp_path), "--calib", npz_data(tmp_path, n=32), "--preset", preset,
                        "-o", tmp_path / f"{preset}.onnx", "--report", rep)
        assert result.exit_code == 0, result.output
        reports[preset] = json.load(open(rep))
    assert "ensemble" not in reports["default"]["scoring"]["blend"]["pool"]
    assert "blend_search" not in reports["default"]["forward_passes"]
    assert "ensemble" in reports["thorough"]["scoring"]["blend"]["pool"]
    assert reports["thorough"]["forward_passes"]["blend_search"] > 0


def test_variety_gate_and_soft_change_the_choice():
    """Scores prefer removing 0 and 1; 0 is unique, 2 and 3 are near-duplicates (R 0.95), 1 is rare too."""
    from onnxprune.criteria.variety import choose

    sim = np.eye(5)
    sim[2, 3] = sim[3, 2] = 0.95
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.9])
    blocked = np.zeros(5, dtype=bool)
    off = set(np.argsort(scores)[:1].tolist())
    gate = set(choose("gate", sim, scores, 1, blocked).tolist())
    assert off == {0} and gate == {2}                       # gate takes the lower of the duplicate pair
    # soft: rank blended with rarity (weight 0.3): unique 0/1 gain, duplicates 2/3 lose
    soft2 = choose("soft", sim, scores, 2, blocked).tolist()
    assert sorted(soft2) == [0, 2]                           # off would remove 0 and 1
    assert sorted(np.argsort(scores)[:2].tolist()) == [0, 1]


@pytest.mark.parametrize("variety", ["gate", "soft"])
def test_variety_option_reaches_the_pipeline(tmp_path, variety):
    rep = tmp_path / "r.json"
    result = invoke(model_file(tmp_path), "--calib", npz_data(tmp_path, n=32), "--criterion", "l1", "--variety",
                    variety, "--allocate", "uniform", "--no-order-check", "-o", tmp_path / "p.onnx", "--report", rep)
    assert result.exit_code == 0, result.output
    assert json.load(open(rep))["allocation"]["variety"] == variety


# ---- timing options --------------------------------------------------------------------------------

@pytest.fixture
def sessions(monkeypatch):
    """(intra-op threads, spinning entry, batch of the first feed) of every bench session run."""
    import onnxprune.runtime.bench as bench_mod
    seen = []
    real = bench_mod._session

    def spy(m, provider, cfg, profile_prefix=None):
        sess = real(m, provider, cfg, profile_prefix)
        opts = sess.get_session_options()
        entry = opts.get_session_config_entry("session.intra_op.allow_spinning")
        seen.append((opts.intra_op_num_threads, entry))
        return sess
    monkeypatch.setattr(bench_mod, "_session", spy)
    return seen


def test_latency_batch_and_threads_reach_the_bench(tmp_path, sessions):
    out = tmp_path / "p.onnx"
    result = invoke(RESNET, "--criterion", "l1", "--ratio", "0.5", "-o", out, "--bench", "--latency-batch", "3",
                    "--latency-threads", "1")
    assert result.exit_code == 0, result.output
    assert sessions and all(threads == 1 for threads, _ in sessions)
    assert "cpu, batch 3, threads 1: latency in ms" in result.stdout, result.stdout


@pytest.mark.parametrize("spin,entry", [(False, "0"), (True, "1")])
def test_bench_spin_turns_spinning_on(tmp_path, sessions, spin, entry):
    args = ["bench", RESNET, RESNET, "--repeat", "2", "--warmup", "1", "--threads", "2"] + (["--spin"] if spin else [])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert sessions and all(e == entry and t == 2 for t, e in sessions)


def test_latency_batch_and_threads_reach_the_latency_search(tmp_path, monkeypatch):
    """--target-latency measures where --latency-batch/--latency-threads say (a fake meter records them)."""
    from onnxprune.allocation import latency
    from test_latency import MacMeter, macs

    made = []

    def make(original, provider="cpu", batch=None, threads=0, *args, **kwargs):
        m = MacMeter()
        m.total = macs(onnx.load(original) if isinstance(original, str) else original)
        m.describe = lambda: {"provider": provider, "batch": batch, "threads": threads, "warmup": 0, "repeat": 0}
        made.append((provider, batch, threads))
        return m
    monkeypatch.setattr(latency, "Meter", make)
    rep = tmp_path / "r.json"
    result = invoke(RESNET, "--criterion", "l1", "--target-latency", "0.7", "--latency-batch", "3",
                    "--latency-threads", "1", "-o", tmp_path / "p.onnx", "--report", rep)
    assert result.exit_code == 0, result.output
    assert made == [("cpu", 3, 1)]
    doc = json.load(open(rep))["latency_search"]
    assert (doc["batch"], doc["threads"]) == (3, 1) and doc["met"]
