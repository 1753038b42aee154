"""Small command-line matters: file modes under the umask, the `analyze` alias, unknown choices
(exit 2 with close matches, before any work), the report's suffixes, the default criteria, and
the recorded command that repeats a run."""

import hashlib
import json
import os
import shlex
import stat

import onnx
import pytest
from click.testing import CliRunner

from onnxprune import io, pipeline
from onnxprune.cli import main, prune
from onnxprune.cli.main import sweep

HERE = os.path.dirname(__file__)
RESNET = os.path.join(HERE, "models", "resnet_style.onnx")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if pruning starts."""
    def refuse(*args, **kwargs):
        raise AssertionError("pruning started")
    monkeypatch.setattr(pipeline, "prune", refuse)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask):
    pytest.importorskip("matplotlib")
    old = os.umask(umask)
    try:
        out = tmp_path / "p.onnx"
        files = [out, tmp_path / "r.json", tmp_path / "r.html", tmp_path / "plan.json", tmp_path / "g.png"]
        for report in files[1:3]:
            result = invoke(RESNET, "--criterion", "l1", "-o", out, "--report", report, "--save-plan", files[3],
                            "--plot-groups", files[4])
            assert result.exit_code == 0, result.output
        big = io.save(onnx.load(RESNET), tmp_path / "ext.onnx", size_limit=1)   # the model + its .data file
        assert len(big) == 2
    finally:
        os.umask(old)
    for path in files + big:
        assert mode(path) == 0o666 & ~umask, (path, oct(mode(path)))


def test_analyze_is_an_alias_of_analyse():
    us, uk = invoke("analyze", RESNET, "--json"), invoke("analyse", RESNET, "--json")
    assert us.exit_code == 0 and us.output == uk.output
    assert json.loads(us.output)["groups"]
    assert invoke("analyze", "--help").exit_code == 0


@pytest.mark.parametrize("args, suggestion", [
    (("--criterion", "l3"), "did you mean 'l2' or 'l1'?"),
    (("--criterion", "fmgp"), "did you mean 'fpgm'?"),
    (("--allocate", "sensitivty"), "did you mean 'sensitivity'?"),
    (("--preset", "fastt"), "did you mean 'fast'?"),
    (("--variety", "clusters"), "did you mean 'cluster'?"),
])
def test_unknown_choice_is_a_usage_error_with_close_matches_before_any_work(tmp_path, no_work, args, suggestion):
    out = tmp_path / "p.onnx"
    result = invoke(RESNET, *args, "-o", out)
    assert result.exit_code == 2, result.output
    assert suggestion in result.output and "is not one of" in result.output
    assert not out.exists()


def test_unknown_choice_without_a_close_match_lists_the_choices(no_work):
    result = invoke(RESNET, "--criterion", "zzzz")
    assert result.exit_code == 2 and "did you mean" not in result.output and "blend" in result.output


def test_sweep_checks_its_criterion_at_parse_time(tmp_path):
    result = invoke("sweep", RESNET, "--criterion", "l3", "--json", tmp_path / "s.json")
    assert result.exit_code == 2 and "did you mean 'l2' or 'l1'?" in result.output
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("name", ["r.txt", "r", "r.htm"])
def test_report_suffix_other_than_json_or_html_is_a_usage_error(tmp_path, no_work, name):
    result = invoke(RESNET, "-o", tmp_path / "p.onnx", "--report", tmp_path / name)
    assert result.exit_code == 2 and ".json (data) or .html (a page)" in result.output
    assert list(tmp_path.iterdir()) == []


def test_default_criteria_and_the_reason_they_differ():
    defaults = {cmd.name: next(p.default for p in cmd.params if p.name == "criterion") for cmd in (prune, sweep)}
    assert defaults == {"prune": "blend", "sweep": "l1"}
    # the difference is explained where a user meets it
    help_text = " ".join(invoke("sweep", "--help").output.split())
    assert "l1, not prune's blend" in help_text and "no order check" in help_text


def test_recorded_command_repeats_the_run(tmp_path):
    out, rep = tmp_path / "p.onnx", tmp_path / "r.json"
    first = invoke(RESNET, "--criterion", "fpgm", "--ratio", "0.4", "--ignore", "*stem*", "--no-recover",
                   "-o", out, "--report", rep)
    assert first.exit_code == 0, first.output
    recorded = json.load(open(rep))["command"]
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    argv = shlex.split(recorded["command"])
    assert argv[:2] == ["onnxprune", "prune"] and "--no-recover" in argv and "*stem*" in argv
    assert recorded["options"]["criterion"] == "fpgm" and recorded["options"]["ratio"] == 0.4
    out.unlink()
    again = CliRunner().invoke(main, argv[1:])
    assert again.exit_code == 0, again.output
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
