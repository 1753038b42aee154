"""`--report report.html`: one self-contained page, opened in a real headless Chromium.

The page comes from a real run (the tiny resnet-style test model, 32 random calibration inputs,
--bench, and --finetune for 2 epochs where torch is installed) on a copy of the model whose node
names hold `<`, `&` and quotes. Chromium loads a copy of the page with a probe script appended
(the page itself has no script): it records errors and the drawn size and element count of every
chart into the DOM, which `--dump-dom` returns; `--enable-logging=stderr` shows console messages;
`--screenshot` takes the picture. Without a Chromium binary the browser tests skip, saying so.
"""

import html
import importlib.util
import json
import os
import re
import shutil
import subprocess

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxprune.cli import main
from onnxprune.report.html import render_html

HERE = os.path.dirname(__file__)
RESNET = os.path.join(HERE, "models", "resnet_style.onnx")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell")
PROBE = """<script>
(function () {
  var errors = (window.__probeErrors || []).slice();
  var charts = {};
  document.querySelectorAll("svg.chart").forEach(function (s) {
    var box = s.getBoundingClientRect();
    charts[s.id] = {width: box.width, height: box.height, bars: s.querySelectorAll("rect.bar").length,
                    series: s.querySelectorAll("polyline.series").length, cells: s.querySelectorAll("rect.cell").length};
  });
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({errors: errors, charts: charts, height: document.documentElement.scrollHeight,
                                    width: document.documentElement.scrollWidth});
  document.body.appendChild(out);
})();
</script>"""
RECORDER = ("<script>window.__probeErrors = []; window.addEventListener('error', function (e) "
            "{ window.__probeErrors.push(String(e.message)); });</script>")


def browser() -> str | None:
    """The Chromium (or Chrome) binary: $ONNXPRUNE_CHROMIUM, else the first of BROWSERS on PATH."""
    given = os.environ.get("ONNXPRUNE_CHROMIUM")
    if given:
        return given
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def need_browser() -> str:
    found = browser()
    if found is None:
        pytest.skip("no Chromium binary found (looked for $ONNXPRUNE_CHROMIUM and " + ", ".join(BROWSERS)
                    + " on PATH); install one, e.g. apt-get install chromium")
    return found


def chromium(binary: str, tmp_path, page, *flags) -> subprocess.CompletedProcess:
    """Run headless Chromium on `page` (a file) with `flags`; its own profile under tmp_path."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           "--hide-scrollbars", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           *flags, f"file://{page}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def probed(binary, tmp_path, page_text: str, name: str = "probe.html") -> tuple[dict, str]:
    """(what the probe recorded, Chromium's stderr) for `page_text` loaded with the probe appended."""
    page = tmp_path / name
    page.write_text(page_text.replace("<head>", "<head>" + RECORDER, 1).replace("</body>", PROBE + "</body>", 1))
    run = chromium(binary, tmp_path, page, "--window-size=1280,900", "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', run.stdout, re.S)
    assert found, "the probe did not run: " + run.stdout[-500:]
    return json.loads(html.unescape(found.group(1))), run.stderr


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real prune run of the test model with awkward node names: (report dict, page path, tmp folder)."""
    tmp = tmp_path_factory.mktemp("html")
    model = onnx.load(RESNET)
    for i, node in enumerate(model.graph.node):
        node.name = f"<{node.op_type} & \"{i}\">"      # names are free text; tensors keep theirs
    src = tmp / "odd_names.onnx"
    onnx.save(model, src)
    data = tmp / "cal.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32))
    finetune = ["--finetune", "--epochs", "2"] if importlib.util.find_spec("torch") else []
    common = [str(src), "--calib", str(data), "-o", str(tmp / "p.onnx"), "--bench", *finetune]
    result = CliRunner().invoke(main, common + ["--report", str(tmp / "report.json")])
    assert result.exit_code == 0, result.output
    report = json.load(open(tmp / "report.json"))
    # the same report as a page: render it from the dict (the CLI path is tested below too)
    page = tmp / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    return report, page, tmp


def test_cli_writes_the_page_and_json_is_unchanged(tmp_path):
    out, page = tmp_path / "p.onnx", tmp_path / "r.html"
    result = CliRunner().invoke(main, [RESNET, "--criterion", "l1", "-o", str(out), "--report", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "Channels per group" in text
    assert f"wrote {page}" in result.stderr


def test_page_is_self_contained_and_escapes_names(run):
    report, page, _ = run
    text = page.read_text(encoding="utf-8")
    # no network and no external resource: no script, link, src or url(); the one URL is the SVG namespace
    assert not re.search(r"<script|<link|<img|<iframe|\bsrc=|url\(|@import", text, re.I)
    assert set(re.findall(r"https?://[^\s\"'<>]+", text)) <= {"http://www.w3.org/2000/svg"}
    name = report["groups"][0]["name"]
    assert name.startswith("<") and "&" in name
    assert name not in text                                   # never raw
    assert f"{name}".replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;") in text


def test_page_shows_every_part_of_the_run(run):
    report, page, _ = run
    text = page.read_text(encoding="utf-8")
    for section in ("summary", "groups", "sensitivity", "blend", "order-check", "recovery", "holdout", "latency",
                    "repeat"):
        assert f'<section id="{section}">' in text, section
    assert bool(report["options"]["finetune"]) == ('<section id="finetune">' in text)
    # the data behind the numbers, and the losses' names and scales
    assert "verification inputs (random, seeded, batch 2)" in text
    assert f"{report['calibration']['holdout']} held-out calibration images" in text
    assert "top-1 disagreement with the original" in text and "after / unrepaired" in text
    # the options to repeat the run: a command line and JSON
    shown = html.unescape(text)
    assert "onnxprune prune " in shown and "--calib" in shown and '"calib_samples": 512' in shown


def test_page_renders_in_chromium_without_errors_and_draws_the_charts(run):
    binary = need_browser()
    report, page, tmp = run
    probe, stderr = probed(binary, tmp, page.read_text(encoding="utf-8"))
    assert probe["errors"] == [] and console_lines(stderr) == []
    charts = probe["charts"]
    for chart in charts.values():
        assert chart["width"] > 100 and chart["height"] > 50
    assert charts["chart-groups"]["bars"] == 2 * len(report["groups"])
    assert charts["chart-sensitivity"]["series"] == len(report["allocation"]["curves"])
    assert charts["chart-correlation"]["cells"] == len(report["scoring"]["blend"]["pool"]) ** 2
    assert charts["chart-order-check"]["bars"] == len(report["allocation"]["order_check"]["losses"])
    repairs = [s for s in report["recovery"] if "loss_before" in s and s["step"] != "finetune"]
    assert charts["chart-recovery"]["bars"] == 2 * len(repairs)
    if any(s["step"] == "finetune" for s in report["recovery"]):
        assert charts["chart-finetune"]["series"] == 2
    assert probe["width"] <= 1280            # nothing wider than a normal window

    shot = tmp / "report.png"
    taken = chromium(binary, tmp, page, f"--window-size=1280,{min(int(probe['height']) + 40, 16000)}",
                     f"--screenshot={shot}")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20000
    keep = os.environ.get("ONNXPRUNE_SCREENSHOT")        # a copy to look at, where asked for
    if keep:
        shutil.copy(shot, keep)


def test_the_probe_sees_a_script_error(tmp_path):
    """The error check can fail: a page whose script throws is caught."""
    binary = need_browser()
    broken = "<!DOCTYPE html><html><head></head><body><script>undefinedFunction();</script></body></html>"
    probe, stderr = probed(binary, tmp_path, broken)
    assert any("undefinedFunction" in e for e in probe["errors"])
    assert console_lines(stderr)


def test_non_finite_losses_and_missing_parts_still_make_a_valid_page(run, tmp_path):
    """A collapsed candidate's loss is inf; a data-free run has no curves, blend or held-out data."""
    report, _, _ = run
    broken = json.loads(json.dumps(report))
    broken["allocation"]["order_check"]["losses"]["l2"] = float("inf")
    broken["recovery"][0]["loss_after"] = float("nan")
    text = render_html(broken)
    assert "inf" not in re.sub(r"<title>.*?</title>|<text[^>]*>[^<]*</text>", "", text.split("<svg", 1)[1])
    bare = {k: report[k] for k in ("model", "criterion", "ratio", "before", "after", "groups")}
    page = render_html(bare)
    assert '<section id="groups">' in page and '<section id="sensitivity">' not in page
    binary = browser()
    if binary:
        for i, page_text in enumerate((text, page)):
            probe, stderr = probed(binary, tmp_path, page_text, name=f"edge{i}.html")
            assert probe["errors"] == [] and console_lines(stderr) == []
