"""The README's first two commands are the truth: CI runs the second, this test runs the first."""

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
    proc = subprocess.run([sys.executable, "-m", "onnxprune", *args[1:]], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
    assert "verification" in proc.stdout
