"""What `onnxprune` prints: every figure names its data and its loss, tables fit 80 columns, and the
long stages show progress on a terminal (and nothing when stderr is not one)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys

import pytest
from click.testing import CliRunner
from rich.console import Console

from onnxprune import progress
from onnxprune.report import render as report
from onnxprune.cli import main

FMNIST = "models/fmnist_resnet.onnx"
CALIB = "calib_data/fmnist_calib.npz"


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """One calibrated prune of the demo model (64 images), its printed output at 80 columns and its report."""
    tmp = tmp_path_factory.mktemp("out")
    rep = tmp / "r.json"
    result = CliRunner().invoke(main, [FMNIST, "--ratio", "0.5", "--calib", CALIB, "--calib-samples", "64",
                                       "--show", "groups", "-o", str(tmp / "p.onnx"), "--report", str(rep)],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output, json.loads(rep.read_text())


def test_output_fits_80_columns_and_cuts_nothing(calibrated):
    text, _ = calibrated
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    assert "…" not in text                      # no header or name cut with an ellipsis
    # every group's name is printed whole: long ones fold onto a second line, not cut
    for group in calibrated[1]["groups"]:
        assert group["name"][:25] in text and group["name"][-10:] in text, group["name"]


def test_every_figure_names_its_data_and_loss(calibrated):
    text, rep = calibrated
    flat = " ".join(text.split())
    assert "verification: valid (onnx checker, the original's inputs and outputs, runs in onnxruntime on 2 random " \
           "inputs)" in flat
    holdout = rep["calibration"]["holdout"]
    assert f"fidelity: no collapse on {holdout} held-out calibration inputs" in flat
    assert rep["fidelity"]["inputs"] == "held-out calibration"
    # the bundled images have labels: the recovery's loss is the cross-entropy, the order check's the disagreement
    assert rep["losses"] == {"fidelity": "cross-entropy with the labels",
                             "choice": "top-1 disagreement with the original + 0.01 x (cross-entropy with the labels)"}
    assert "recovery (each step kept only if it lowers the held-out cross-entropy with the labels):" in flat
    assert "order check (which ranking prunes): held-out top-1 disagreement with the original" in flat
    assert f"held-out calibration images ({holdout}), pruned model against the original" in flat
    assert "top-1 agreement with the original" in flat


def test_names_without_data_say_random_and_synthetic_inputs():
    rep = {"model": "m.onnx", "criterion": "l1", "ratio": 0.5, "target_macs": None, "allocation": {"method": "uniform"},
           "before": {"params": 10, "macs": 100, "bytes": 1000, "convs": 2},
           "after": {"params": 5, "macs": 50, "bytes": 500, "convs": 2},
           "groups": [{"id": 0, "name": "a", "size": 8, "kept": 4, "sources": [0], "prunable": True, "blocked": 0,
                       "reasons": []}],
           "verification": {"valid": True, "outputs": {"y": {"shape": [2, 10], "cosine": 0.9, "max_abs_diff": 1.0}}},
           "fidelity": {"inputs": "random", "samples": 96, "collapsed": [],
                        "outputs": {"y": {"cosine": 0.95, "collapsed": False}}},
           "recovery": [{"step": "linear_reconstruction", "inputs": "synthetic", "loss_before": 0.5,
                         "loss_after": 0.2, "kept": True}]}
    console = Console(width=80, record=True)
    report.render_prune(rep, console)
    flat = " ".join(console.export_text().split())
    assert "fidelity: no collapse on 96 random inputs ('y' cosine 0.95)" in flat
    assert "recovery (each step kept only if it lowers the relative output error on synthetic inputs):" in flat
    assert "linear_reconstruction 0.5 -> 0.2 kept" in flat


def test_metrics_of_many_outputs_continue_in_further_tables():
    outputs = {f"a_rather_long_output_name_{i}": {"cosine": 0.5, "rel_sq_error": 0.1} for i in range(7)}
    console = Console(width=80, record=True)
    report.render_metrics(outputs, console, "held-out calibration images (8)")
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert text.count("relative squared error") > 1          # more than one table
    assert all(name in "".join(text.split()) for name in outputs)


def test_progress_is_silent_without_a_terminal(capsys):
    with progress.stage("sensitivity probes (groups)", 3) as bar:
        bar.advance()
        progress.advance()
        progress.note("x")
    assert list(progress.iterate(range(3), "order check", 3)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_stages_draw_bars_on_a_terminal(tmp_path):
    """On a pseudo-terminal the long stages are named on stderr while they run."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "onnxprune", FMNIST, "--target-macs", "0.5", "--calib", CALIB,
                             "--calib-samples", "64", "-o", str(tmp_path / "p.onnx")],
                            stdout=subprocess.DEVNULL, stderr=slave, env={**os.environ, "COLUMNS": "100"})
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:        # the child closed its end
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=300)
    os.close(master)
    assert proc.returncode == 0, seen[-2000:]
    text = seen.decode("utf-8", "replace")
    for label in ("calibration", "sensitivity probes (groups)", "order check (candidates)", "recovery (steps)"):
        assert label in text, (label, text[-2000:])
