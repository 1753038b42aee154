"""The README's first two commands are the truth: CI runs the second, this test runs the first and
checks that the output the README shows under "Reading the output" is what the command prints."""

import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    return re.findall(r"```bash\n(.*?)\n```", text, re.S)[:2]


def test_ci_runs_the_readme_test_command():
    _, tests = readme_commands()
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert tests.strip() in ci


def test_readme_main_command_runs(tmp_path):
    main, _ = readme_commands()
    install, run = [part.strip() for part in main.split("&&", 1)]
    assert install.startswith("pip install")
    args = shlex.split(run)
    assert args[0] == "onnxprune"
    out = tmp_path / "pruned.onnx"
    args[args.index("-o") + 1] = str(out)
    env = {**os.environ, "COLUMNS": "80"}   # the width of the README's copy of the output
    proc = subprocess.run([sys.executable, "-m", "onnxprune", *args[1:]], cwd=ROOT, capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
    assert "verification" in proc.stdout
    shown = readme_output_labels()
    assert len(shown) >= 15
    missing = [label for label in shown if label not in proc.stdout]
    assert not missing, f"the README's output shows lines the command no longer prints: {missing}"


def readme_output_labels() -> list[str]:
    """The labels of the output the README shows: each table row's first cell (a row starts with
    one space, its cells are two or more spaces apart) and each line's 'label:' / 'label (' start
    (wrapped continuation lines have none)."""
    text = open(os.path.join(ROOT, "README.md")).read()
    block = text.split("## Reading the output", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    labels = []
    for line in block.splitlines():
        if row := re.match(r" ([A-Za-z][A-Za-z0-9_ ()|'-]*?)\s{2,}\S", line):
            labels.append(row.group(1))
        elif match := re.match(r"([a-z][a-z_' -]*?)(:| \()", line):
            labels.append(match.group(1))
    return labels
