"""`--target-latency`: the budget bisection (with a fake clock), the allocator set up once, the
`--round-to` default when pruning for speed, `--plot-groups`, and one real end-to-end run."""

import json
import os

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune.allocation import latency
from onnxprune.runtime import providers
from onnxprune.cli import main
from onnxprune.errors import OnnxPruneError
from onnxprune.allocation.latency import Candidate, Measurement, search

HERE = os.path.dirname(__file__)
RESNET = os.path.join(HERE, "models", "resnet_style.onnx")
MOBILENET = os.path.join(HERE, "models", "mobilenetv3_style.onnx")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- the search, with latency a known function of the budget ------------------------------------

def linear(budget, efficiency=0.8):
    """A fake model: it removes exactly `budget` of the MACs; latency falls `efficiency` as fast."""
    return 1.0 - efficiency * budget


def fake(step=None, efficiency=0.8, floor=0.0):
    """propose/measure pair; `step` discretises the budget (as round_to and integer counts do)."""
    measured = []

    def propose(budget):
        removed = budget if step is None else min(np.ceil(budget / step) * step, 0.99)
        return Candidate(key=round(removed, 9), macs_removed=removed, payload=removed)

    def measure(removed):
        measured.append(removed)
        ratio = max(linear(removed, efficiency), floor)
        return Measurement(ratio, 10.0, 10.0 * ratio)

    return propose, measure, measured


@pytest.mark.parametrize("target", [0.3, 0.5, 0.6, 0.9])
def test_bisection_finds_the_smallest_budget_meeting_the_target(target):
    propose, measure, measured = fake()
    result = search(target, propose, measure, tol=0.01, max_steps=20, confirm=False)
    exact = (1.0 - target) / 0.8                      # where 1 - 0.8 b = target
    assert result.met
    assert result.latency_ratio <= target
    assert exact <= result.budget <= exact + 0.01     # the smallest, within the tolerance
    assert result.choice == result.budget and result.macs_removed == result.budget
    # the first step is the largest budget, every later one halves the interval
    assert result.steps[0].budget == latency.MAX_BUDGET
    assert len(result.steps) == len(measured) == result.measurements
    assert [s.meets for s in result.steps] == [s.latency_ratio <= target for s in result.steps]
    assert result.budget == min(s.budget for s in result.steps if s.meets)
    doc = result.to_dict()
    assert doc["met"] and doc["target"] == target and len(doc["steps"]) == len(result.steps)
    assert set(doc["steps"][0]) == {"budget", "macs_removed", "latency_ratio", "meets", "ratios", "cached",
                                    "original_ms", "pruned_ms"}


def test_default_tolerance_and_step_limit():
    propose, measure, measured = fake()
    result = search(0.6, propose, measure)
    distinct = set(measured)
    assert result.met and len(distinct) <= latency.MAX_STEPS
    assert 0.5 <= result.budget <= 0.5 + latency.TOLERANCE
    # confirmation: every plan that met the target was measured twice, the others once
    for s in result.steps:
        assert len(s.ratios) == (2 if s.meets else 1) and measured.count(s.macs_removed) == len(s.ratios)
    assert result.measurements == len(measured)
    propose, measure, measured = fake()
    result = search(0.6, propose, measure, tol=1e-9, max_steps=4)
    assert len(set(measured)) == 4 and result.met and result.latency_ratio <= 0.6


def test_a_lucky_measurement_is_not_enough():
    """A burst of other work during the original's runs makes a too-slow plan look fast once."""
    propose, _, _ = fake()
    seen = {}

    def measure(removed):
        seen[removed] = seen.get(removed, 0) + 1
        true = linear(removed)
        return true * 0.5 if seen[removed] == 1 and 0.45 < removed < 0.5 else true

    result = search(0.6, propose, measure, tol=0.01)
    assert result.met and 0.5 <= result.budget <= 0.51 and result.latency_ratio <= 0.6
    fooled = [s for s in result.steps if 0.45 < s.macs_removed < 0.5]
    assert fooled and all(not s.meets and len(s.ratios) == 2 and min(s.ratios) <= 0.6 for s in fooled)
    unconfirmed = search(0.6, propose, lambda b: linear(b) * 0.5 if 0.45 < b < 0.5 else linear(b), tol=0.01,
                         confirm=False)
    assert unconfirmed.budget < 0.5   # what confirmation protects against


def test_identical_plans_are_measured_once():
    propose, measure, measured = fake(step=0.25)      # only 0.25, 0.5, 0.75, 0.99 exist
    result = search(0.55, propose, measure, tol=0.01, max_steps=20, confirm=False)
    assert result.met and result.macs_removed == 0.75 and result.latency_ratio == pytest.approx(0.4)
    assert sorted(measured) == sorted(set(measured)) and len(measured) <= 4
    assert any(s.cached for s in result.steps)
    assert all(s.macs_removed == 0.75 for s in result.steps if s.cached and s.meets)


def test_unreachable_target_stops_after_one_measurement():
    propose, measure, measured = fake(floor=0.45)     # fixed costs: never below 0.45 of the original
    result = search(0.3, propose, measure)
    assert not result.met
    assert measured == [latency.MAX_BUDGET] and len(result.steps) == 1
    assert result.budget == latency.MAX_BUDGET and result.latency_ratio == pytest.approx(0.45)
    assert result.choice == latency.MAX_BUDGET        # the fastest candidate measured
    assert result.to_dict()["met"] is False


def test_noisy_non_monotone_measurements_still_return_a_measured_plan_meeting_the_target():
    rng = np.random.default_rng(0)
    propose, _, _ = fake()
    result = search(0.6, propose, lambda b: linear(b) * (1 + 0.05 * rng.standard_normal()), tol=0.01)
    assert result.met and result.latency_ratio <= 0.6
    assert result.budget == min(s.budget for s in result.steps if s.meets)


def test_measure_may_return_a_float_and_log_sees_every_step():
    propose, _, _ = fake()
    seen = []
    result = search(0.5, propose, lambda b: linear(b), log=seen.append)
    assert seen == result.steps and seen[0].original_ms is None and seen[0].ratios == (linear(0.99),) * 2


@pytest.mark.parametrize("target", [0.0, 1.0, -0.5, 1.5])
def test_target_outside_0_1_is_an_error(target):
    propose, measure, _ = fake()
    with pytest.raises(OnnxPruneError, match="--target-latency must be in"):
        search(target, propose, measure)


# --- the pipeline with a fake meter ---------------------------------------------------------------

def macs(proto):
    from onnxprune.analysis import fold, graph, metrics

    norm = fold.normalise(proto)
    return metrics.stats(norm, graph.infer_shapes(norm, graph.fixed_input_shapes(proto, {}, batch=1))).macs


class MacMeter:
    """Latency proportional to MACs, plus a fixed cost: no clock involved."""

    def __init__(self, fixed=0.1):
        self.fixed, self.calls = fixed, 0

    def __call__(self, model):
        self.calls += 1
        return Measurement(self.fixed + (1 - self.fixed) * macs(model) / self.total)

    def describe(self):
        return {"provider": "fake", "batch": 1, "threads": 0, "warmup": 0, "repeat": 0}


@pytest.fixture
def fake_meter(monkeypatch):
    meters = []

    def make(original, *args, **kwargs):
        m = MacMeter()
        m.total = macs(onnxprune.load(original) if isinstance(original, str) else original)
        meters.append(m)
        return m

    monkeypatch.setattr(latency, "Meter", make)
    return meters


def test_prune_meets_the_target_with_mac_proportional_latency(fake_meter):
    result = onnxprune.prune(RESNET, criterion="l1", target_latency=0.5, round_to=1)
    search_doc = result.report["latency_search"]
    assert search_doc["met"] and search_doc["latency_ratio"] <= 0.5
    assert result.report["target_latency"] == 0.5 and result.report["options"]["round_to"] == 1
    # with latency = 0.1 + 0.9 * MACs kept, the target needs MACs kept <= 0.444
    assert result.report["macs_kept"] <= 0.5 / 0.9 - 0.1 / 0.9 + 1e-6
    steps = search_doc["steps"]
    assert steps[0]["budget"] == latency.MAX_BUDGET and fake_meter[0].calls == search_doc["measurements"]
    # no step that met the target used a smaller budget than the one chosen
    assert search_doc["budget"] == min(s["budget"] for s in steps if s["meets"])
    assert result.verification.valid


def test_unreachable_target_is_one_clear_error(fake_meter):
    with pytest.raises(OnnxPruneError, match=r"--target-latency 0.05 cannot be reached on fake at batch 1: with "
                                             r".*% of the MACs removed .* still takes 0\.\d\dx"):
        onnxprune.prune(RESNET, criterion="l1", target_latency=0.05)


def test_sensitivity_curves_are_computed_once(fake_meter, monkeypatch):
    from onnxprune.allocation import allocate

    calls = {"curves": 0, "counts": 0}
    curves, counts = allocate.sensitivity_curves, allocate.sensitivity_counts

    def count_curves(*a, **k):
        calls["curves"] += 1
        return curves(*a, **k)

    def count_counts(*a, **k):
        calls["counts"] += 1
        return counts(*a, **k)

    monkeypatch.setattr(allocate, "sensitivity_curves", count_curves)
    monkeypatch.setattr(allocate, "sensitivity_counts", count_counts)
    result = onnxprune.prune(RESNET, criterion="blend", calib="random", calib_samples=32, recover=False,
                             target_latency=0.6, verify=False)
    assert result.report["allocation"]["method"] == "sensitivity"
    assert calls["curves"] == 1
    assert calls["counts"] == len(result.report["latency_search"]["steps"]) > 1


def test_option_conflicts_fail_before_any_work(tmp_path):
    for kwargs, message in (({"target_macs": 0.5}, "not both"), ({"plan": str(tmp_path / "p.json")}, "--plan"),
                            ({"latency_provider": "opencl"}, "unknown provider 'opencl'")):
        with pytest.raises(OnnxPruneError, match=message):
            onnxprune.prune(RESNET, criterion="l1", target_latency=0.5, **kwargs)
    with pytest.raises(OnnxPruneError, match=r"must be in \(0, 1\)"):
        onnxprune.prune(RESNET, criterion="l1", target_latency=1.2)


@pytest.mark.parametrize("other", [["--target-latency", "0.5"], ["--target-macs", "0.5"], ["--plan", "p.json"]])
def test_an_explicit_ratio_with_another_amount_is_refused(tmp_path, other):
    # --ratio has a default; only a --ratio typed by the user conflicts (it used to be ignored silently)
    out = tmp_path / "p.onnx"
    result = invoke(RESNET, "--criterion", "l1", "--ratio", "0.3", *other, "-o", out)
    assert result.exit_code == 2     # a usage error
    assert result.stderr.strip() == f"error: give --ratio or {other[0]}, not both ({other[0]} decides how much is removed)"
    assert not out.exists()


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_cuda_without_onnxruntime_gpu_is_one_line():
    result = invoke(RESNET, "--criterion", "l1", "--target-latency", "0.5", "--latency-provider", "cuda")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: --target-latency cannot be measured: CUDA provider not available: "
                                     "install onnxruntime-gpu")


# --- --round-to default ----------------------------------------------------------------------------

REAL_CPU_HAS_AVX512 = providers.cpu_has_avx512


@pytest.fixture(autouse=True)
def no_avx512(monkeypatch):
    """The speed default of --round-to depends on the CPU (16 with AVX-512, else 8): the tests
    here assume a CPU without AVX-512 unless they say otherwise."""
    monkeypatch.setattr(providers, "cpu_has_avx512", lambda: False)


def test_round_to_default_resolution(monkeypatch):
    assert providers.resolve_round_to(None, for_speed=False) == (1, "default")
    assert providers.resolve_round_to(None, for_speed=True) == (8, "default when pruning for speed")
    assert providers.resolve_round_to(4, for_speed=True) == (4, "given")
    assert providers.resolve_round_to(1, for_speed=True) == (1, "given")
    # AVX-512: onnxruntime's CPU kernels block channels by 16; other providers keep 8
    monkeypatch.setattr(providers, "cpu_has_avx512", lambda: True)
    assert providers.resolve_round_to(None, for_speed=True) == (16, "default when pruning for speed on an AVX-512 CPU")
    assert providers.resolve_round_to(None, for_speed=True, provider="cuda") == (8, "default when pruning for speed")
    assert providers.resolve_round_to(None, for_speed=False) == (1, "default")
    assert providers.resolve_round_to(1, for_speed=True) == (1, "given")


def test_cpu_has_avx512_reads_the_cpu_flags():
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    assert REAL_CPU_HAS_AVX512() == (" avx512f" in flags)


def test_round_to_default_in_reports(fake_meter, tmp_path):
    plain = onnxprune.prune(RESNET, criterion="l1", ratio=0.3)
    assert plain.report["options"]["round_to"] == 1 and plain.report["options"]["round_to_source"] == "default"
    fast = onnxprune.prune(RESNET, criterion="l1", target_latency=0.7)
    assert fast.report["options"]["round_to"] == 8
    assert fast.report["options"]["round_to_source"] == "default when pruning for speed"
    assert onnxprune.prune(RESNET, criterion="l1", ratio=0.3, for_speed=True).report["options"]["round_to"] == 8
    given = onnxprune.prune(RESNET, criterion="l1", target_latency=0.7, round_to=1)
    assert given.report["options"]["round_to"] == 1 and given.report["options"]["round_to_source"] == "given"


def _widths_ok(report, k):
    pruned = [g for g in report["groups"] if g["kept"] < g["size"]]
    assert pruned, "nothing was pruned"
    for g in report["groups"]:
        if g["prunable"] and g["size"] > k:
            assert g["kept"] % k == 0 or g["kept"] == g["size"], g
        elif g["size"] <= k:
            assert g["kept"] == g["size"], g     # groups not larger than k are left whole


@pytest.mark.parametrize("args", [["--ratio", "0.3"], ["--target-macs", "0.4"], ["--ratio", "0.7", "--global"]])
@pytest.mark.parametrize("model", [RESNET, MOBILENET])
def test_round_to_8_gives_multiples_of_8(tmp_path, model, args):
    rep = tmp_path / "r.json"
    result = invoke(model, "--criterion", "l1", *args, "--round-to", "8", "-o", tmp_path / "p.onnx", "--report", rep)
    assert result.exit_code == 0, result.output
    report = json.load(open(rep))
    assert report["options"]["round_to"] == 8
    _widths_ok(report, 8)


def test_round_to_8_with_the_sensitivity_allocator(tmp_path):
    rep = tmp_path / "r.json"
    result = invoke(RESNET, "--calib", "random", "--calib-samples", "32", "--no-recover", "--target-macs", "0.5",
                    "-o", tmp_path / "p.onnx", "--report", rep, "--round-to", "8", "--no-verify")
    assert result.exit_code == 0, result.output
    report = json.load(open(rep))
    assert report["allocation"]["method"] == "sensitivity"
    _widths_ok(report, 8)


def test_cli_round_to_default_with_bench(tmp_path):
    rep = tmp_path / "r.json"
    result = invoke(RESNET, "--criterion", "l1", "--ratio", "0.3", "-o", tmp_path / "p.onnx", "--report", rep,
                    "--bench")
    assert result.exit_code == 0, result.output
    report = json.load(open(rep))
    assert report["options"]["round_to"] == 8
    _widths_ok(report, 8)
    result = invoke(RESNET, "--criterion", "l1", "--ratio", "0.3", "-o", tmp_path / "q.onnx", "--report", rep)
    assert result.exit_code == 0, result.output
    assert json.load(open(rep))["options"]["round_to"] == 1


# --- --plot-groups ---------------------------------------------------------------------------------

def test_plot_groups_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "groups.png"
    result = invoke(RESNET, "--criterion", "l1", "--ratio", "0.5", "-o", tmp_path / "p.onnx", "--plot-groups", png)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert f"wrote {png}" in result.stderr


def test_plot_groups_without_matplotlib_is_one_line_before_pruning(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    out = tmp_path / "p.onnx"
    result = invoke(RESNET, "--criterion", "l1", "-o", out, "--plot-groups", tmp_path / "g.png")
    assert result.exit_code == 1
    # the installed-package form and the clone form (the README's), as the [finetune] hint gives them
    assert result.stderr.strip() == ("error: plots need matplotlib: pip install 'onnxprune[plot]' "
                                     "(or pip install -e '.[plot]' in a clone)")
    assert not out.exists()


def test_sweep_plot_groups(tmp_path):
    pytest.importorskip("matplotlib")
    png, js = tmp_path / "g.png", tmp_path / "s.json"
    result = invoke("sweep", RESNET, "--ratios", "0.3,0.6", "--no-latency", "--plot-groups", png, "--json", js)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 1000
    rows = json.load(open(js))["rows"]
    assert all(len(r["kept_channels"]) == len(rows[0]["kept_channels"]) for r in rows)
    assert sum(rows[2]["kept_channels"]) < sum(rows[1]["kept_channels"]) < sum(rows[0]["kept_channels"])


# --- one real run ------------------------------------------------------------------------------------

def test_end_to_end_target_latency_cli(tmp_path):
    """Real timing on a tiny model with a loose target. Timing is real, so a loaded machine can miss even
    0.95: that outcome is the documented failure (one line with the ratio reached, nothing written),
    checked as such, never skipped."""
    rep, out = tmp_path / "r.json", tmp_path / "p.onnx"
    result = invoke(RESNET, "--criterion", "l1", "--target-latency", "0.95", "-o", out, "--report", rep)
    if result.exit_code == 1:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "cannot be reached" in lines[0], result.output
        assert "of the MACs removed" in lines[0] and "x the original's latency" in lines[0], lines[0]
        assert not out.exists() and not rep.exists()
        return
    assert result.exit_code == 0, result.output
    assert out.exists()
    report = json.load(open(rep))
    search_doc = report["latency_search"]
    assert search_doc["provider"] == "cpu" and search_doc["batch"] == 1 and search_doc["met"]
    assert search_doc["steps"] and all(s["original_ms"] > 0 and s["pruned_ms"] > 0 for s in search_doc["steps"])
    assert report["options"]["round_to"] == 8
    assert "latency search (cpu, batch 1):" in result.stdout
