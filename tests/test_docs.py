"""The documentation's code blocks are checked, so that what README.md and docs/*.md tell a user to
type stays true:

- every `onnxprune ...` command parses against the click commands (options, choices, types), and
  every repository file it names exists;
- the cheap ones run (`analyse`, `eval`, `bench`, `--help`; outputs of earlier steps, such as the
  quick start's `fmnist_pruned.onnx`, are replaced by a quickly pruned model); the expensive prune
  commands stop at parsing (the README's first command is run by tests/test_readme.py);
- `python benchmarks/X.py --flag` names a script that exists and a flag it defines; `pip install`
  names extras that pyproject.toml defines;
- every ```python block of docs/python-api.md runs;
- docs/cli.md is what docs/gen_cli.py generates from the commands.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs"))
import gen_cli  # noqa: E402  (docs/gen_cli.py, the CLI reference generator)

DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REPO_DIRS = ("models/", "calib_data/", "tests/", "benchmarks/", "scripts/", "docs/")
CHEAP = ("analyse", "eval", "bench")


def code_blocks(path: Path, lang: str) -> list[str]:
    """The bodies of the ```lang fenced blocks of a Markdown file."""
    return re.findall(rf"^```{lang}\n(.*?)^```", path.read_text(), re.S | re.M)


def shell_commands(block: str) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments dropped, `&&` split."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:cut])
            words = words[cut + 1:]
    return [c for c in commands if c]


def all_commands() -> list[tuple[str, list[str]]]:
    """(file name, words) of every command in a ```bash block of the docs."""
    return [(path.relative_to(ROOT).as_posix(), words)
            for path in DOC_FILES for block in code_blocks(path, "bash") for words in shell_commands(block)]


def onnxprune_args(words: list[str]) -> list[str] | None:
    """The arguments after `onnxprune` / `python -m onnxprune`, or None for another program."""
    if words[0] == "onnxprune":
        return words[1:]
    if words[:3] == ["python", "-m", "onnxprune"]:
        return words[3:]
    return None


ONNXPRUNE = [(doc, args) for doc, words in all_commands() if (args := onnxprune_args(words)) is not None]


def test_the_docs_have_commands_to_check():
    assert len(ONNXPRUNE) >= 10
    assert {args[0] for _, args in ONNXPRUNE} >= {"eval", "bench", "sweep", "models/fmnist_resnet.onnx"}


def resolve(args: list[str]) -> tuple[str, click.Command, list[str]]:
    """(command name, click command, its arguments), as the CLI's default group dispatches them."""
    group = gen_cli.load_group()
    if args[0] not in group.commands:
        args = ["prune", *args]
    return args[0], group.commands[args[0]], args[1:]


@pytest.mark.parametrize("doc,args", ONNXPRUNE, ids=[f"{d}:{' '.join(a)[:60]}" for d, a in ONNXPRUNE])
def test_doc_command_parses(doc, args):
    name, command, rest = resolve(args)
    parent = click.Context(gen_cli.load_group(), info_name="onnxprune")
    try:
        command.make_context(name, list(rest), parent=parent)
    except click.exceptions.Exit as exc:   # --help
        assert exc.exit_code == 0
    except click.UsageError as exc:
        pytest.fail(f"{doc}: `onnxprune {' '.join(args)}`: {exc.format_message()}")
    for word in rest:
        if word.startswith(REPO_DIRS) and not word.endswith(".png"):
            assert (ROOT / word).exists(), f"{doc}: `onnxprune {' '.join(args)}` names {word}, which does not exist"


@pytest.fixture(scope="module")
def small_pruned(tmp_path_factory):
    """A quickly pruned copy of the bundled model, standing in for the outputs earlier doc steps write."""
    out = tmp_path_factory.mktemp("docs") / "pruned.onnx"
    proc = subprocess.run([sys.executable, "-m", "onnxprune", "models/fmnist_resnet.onnx", "--criterion", "l1",
                           "--ratio", "0.3", "--no-recover", "--no-verify", "-o", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr
    return out


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "COLUMNS": "100"}


def _runnable(args: list[str]) -> bool:
    """A cheap command whose inputs exist (an .onnx that does not is an earlier step's output)."""
    if "--help" in args or "-h" in args:
        return True
    if args[0] not in CHEAP:
        return False
    files = [w for w in args[1:] if not w.startswith("-") and ("/" in w or "." in w)]
    return all(w.endswith(".onnx") or (ROOT / w).exists() for w in files)


RUNNABLE = list({tuple(args): (doc, args) for doc, args in reversed(ONNXPRUNE) if _runnable(args)}.values())[::-1]
# (a command repeated in two files runs once)


def test_some_doc_commands_run():
    assert {args[0] for _, args in RUNNABLE} >= {"eval", "bench"}


@pytest.mark.parametrize("doc,args", RUNNABLE, ids=[f"{d}:{' '.join(a)[:60]}" for d, a in RUNNABLE])
def test_cheap_doc_command_runs(doc, args, small_pruned):
    args = [str(small_pruned) if w.endswith(".onnx") and not (ROOT / w).exists() else w for w in args]
    if args[0] == "bench":   # the same command, fewer timed runs
        args += ["--warmup", "1", "--repeat", "3"]
    proc = subprocess.run([sys.executable, "-m", "onnxprune", *args], cwd=ROOT, capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert proc.returncode == 0, f"{doc}: `onnxprune {' '.join(args)}` exited {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.strip()


BENCHMARKS = [(doc, words) for doc, words in all_commands() if len(words) > 1 and words[0] == "python"
              and words[1].startswith("benchmarks/")]


@pytest.mark.parametrize("doc,words", BENCHMARKS, ids=[f"{d}:{' '.join(w)[:60]}" for d, w in BENCHMARKS])
def test_benchmark_commands_name_real_scripts_and_flags(doc, words):
    script = ROOT / words[1]
    assert script.exists(), f"{doc}: {words[1]} does not exist"
    source = script.read_text()
    for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
        assert f'"{flag}"' in source, f"{doc}: {words[1]} defines no {flag}"


def declared_extras() -> set[str]:
    """The extras pyproject.toml declares (the installed metadata's on Python 3.10, without tomllib)."""
    try:
        import tomllib
    except ImportError:
        from importlib.metadata import metadata

        return set(metadata("onnxprune").get_all("Provides-Extra") or [])
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def test_pip_extras_exist():
    extras = declared_extras()
    named = [(doc, words) for doc, words in all_commands() if words[:2] == ["pip", "install"]]
    assert named
    for doc, words in named:
        for spec in words[2:]:
            if match := re.fullmatch(r"-e|\.|\.\[(.*)\]", spec):
                for extra in filter(None, (match.group(1) or "").split(",")):
                    assert extra in extras, f"{doc}: `{' '.join(words)}` names extra [{extra}], not in pyproject.toml"


PYTHON_BLOCKS = code_blocks(ROOT / "docs" / "python-api.md", "python")


def test_python_api_has_blocks():
    assert len(PYTHON_BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_api_block_runs(index, tmp_path):
    for folder in ("models", "calib_data"):   # the blocks name repository paths; their outputs land in tmp_path
        (tmp_path / folder).symlink_to(ROOT / folder)
    proc = subprocess.run([sys.executable, "-c", PYTHON_BLOCKS[index]], cwd=tmp_path, capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert proc.returncode == 0, f"docs/python-api.md block {index + 1}:\n{PYTHON_BLOCKS[index]}\n{proc.stderr[-2000:]}"


def test_cli_reference_is_current():
    assert (ROOT / "docs" / "cli.md").read_text() == gen_cli.render(), "docs/cli.md is stale: run python docs/gen_cli.py"


def test_cli_reference_covers_every_command_and_option():
    text = (ROOT / "docs" / "cli.md").read_text()
    group = gen_cli.load_group()
    for name, command in group.commands.items():
        assert f"## `onnxprune {name}`" in text
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--"):
                    assert opt in text, f"docs/cli.md lacks {opt} of {name}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_resolve():
    for path in DOC_FILES:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+:", target):
                continue   # a web address
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            assert linked.exists(), f"{path.relative_to(ROOT)} links to {target}, which does not exist"
            if anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.*)$", linked.read_text(), re.M)
                assert anchor in {_anchor(h) for h in headings}, f"{path.relative_to(ROOT)}: no heading for #{anchor}"
