"""Write docs/cli.md, the command-line reference, from the click commands themselves.

    python docs/gen_cli.py            # rewrite docs/cli.md
    python docs/gen_cli.py --check    # exit 1 when docs/cli.md is not what the commands say

The click group is found through the `onnxprune` console script named in pyproject.toml (or, without
it, in the installed package's metadata), so the reference follows the CLI wherever its module lives.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "cli.md"
SCRIPT = "onnxprune"


def entry_point() -> str:
    """'module:attribute' of the console script, from pyproject.toml, else from the installed metadata."""
    pyproject = ROOT / "pyproject.toml"
    if pyproject.exists() and sys.version_info >= (3, 11):
        import tomllib

        scripts = tomllib.loads(pyproject.read_text()).get("project", {}).get("scripts", {})
        if SCRIPT in scripts:
            return scripts[SCRIPT]
    from importlib.metadata import entry_points

    (found,) = [ep for ep in entry_points(group="console_scripts") if ep.name == SCRIPT]
    return found.value


def load_group() -> click.Group:
    """Import the click group the console script runs."""
    module, _, attribute = entry_point().partition(":")
    obj = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def _cell(text: str) -> str:
    """Text fit for one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _help_text(command: click.Command) -> str:
    """The docstring of a command, without click's \\b markers, as Markdown paragraphs."""
    text = (command.help or "").replace("\b\n", "")
    return "\n".join(line.strip() for line in text.strip().splitlines())


def render_command(command: click.Command, path: list[str], parent: click.Context) -> list[str]:
    """The section of one command: usage, help, a table of its options."""
    ctx = click.Context(command, info_name=path[-1], parent=parent, terminal_width=100, max_content_width=100)
    usage = " ".join([*path, *command.collect_usage_pieces(ctx)])
    lines = [f"## `{' '.join(path)}`", "", "```", usage, "```", "", _help_text(command), ""]
    rows = []
    for param in command.get_params(ctx):
        if isinstance(param, click.Argument) or set(param.opts) & set(ctx.help_option_names):   # usage line; --help
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, text = record
        rows.append(f"| `{_cell(names)}` | {_cell(text)} |")
    if rows:
        lines += ["| option | description |", "|---|---|", *rows, ""]
    return lines


def render() -> str:
    """The whole reference as Markdown."""
    group = load_group()
    root = click.Context(group, info_name=SCRIPT, terminal_width=100, max_content_width=100)
    lines = ["# Command-line reference", "",
             "Generated from the click commands by `python docs/gen_cli.py`; `tests/test_docs.py` fails when it",
             "is out of date. `onnxprune MODEL ...` is short for `onnxprune prune MODEL ...`, and",
             "`python -m onnxprune ...` is the same CLI. Exit codes: 0 success, 1 one `error:` line",
             "(`--debug` for the traceback), 2 a usage error.", ""]
    lines += ["Commands:", ""]
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        lines.append(f"- [`{SCRIPT} {name}`](#{SCRIPT}-{name}): {_cell(command.get_short_help_str(limit=200))}")
    lines.append("")
    for name in group.list_commands(root):
        lines += render_command(group.get_command(root, name), [SCRIPT, name], root)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str]) -> int:
    """Rewrite docs/cli.md, or with --check say whether it is current."""
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run python docs/gen_cli.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
