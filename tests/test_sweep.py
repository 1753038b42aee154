"""`onnxprune sweep`: one scoring, many ratios, a monotone MACs column, a table, JSON and a PNG."""

import json
import os

import pytest
from click.testing import CliRunner

from onnxprune.cli import main
from onnxprune.errors import OnnxPruneError
from onnxprune.sweep import parse_ratios

RESNET = os.path.join(os.path.dirname(__file__), "models", "resnet_style.onnx")


def test_parse_ratios():
    assert parse_ratios("0.1:0.5:0.2") == [0.1, 0.3, 0.5]
    assert parse_ratios("0.3,0.5") == [0.3, 0.5]
    for bad in ("0.5:1.2:0.5", "a,b", "1.0"):
        with pytest.raises(OnnxPruneError):
            parse_ratios(bad)


def test_sweep_table_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out_json, out_png = tmp_path / "s.json", tmp_path / "s.png"
    result = CliRunner().invoke(main, ["sweep", RESNET, "--ratios", "0.2:0.6:0.2", "--json", str(out_json),
                                       "--plot", str(out_png)])
    assert result.exit_code == 0, result.output
    rows = json.load(open(out_json))["rows"]
    assert [r["ratio"] for r in rows] == [0.0, 0.2, 0.4, 0.6]
    macs = [r["macs_kept"] for r in rows]
    assert macs == sorted(macs, reverse=True) and macs[-1] < macs[0]
    assert all(r["latency_ms"] > 0 for r in rows)
    assert out_png.stat().st_size > 1000
    assert "ratio sweep" in result.output
