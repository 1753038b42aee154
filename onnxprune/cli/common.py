"""What every command shares: parsing --input-shape and running work with one-line errors."""

from __future__ import annotations

import sys

import click

from ..errors import OnnxPruneError


def parse_input_shapes(values: tuple[str, ...]) -> dict[str, list[int]]:
    """'NAME:1,3,224,224' (repeatable) -> {NAME: [1, 3, 224, 224]}."""
    shapes = {}
    for value in values:
        name, sep, dims = value.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.replace("x", ",").split(",")]
            if any(d <= 0 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise click.BadParameter(f"'{value}': expected NAME:D0,D1,... with positive sizes",
                                     param_hint="--input-shape") from None
    return shapes


def fail(exc: Exception, debug: bool) -> None:
    """Print `exc` as one error line and exit with its code (1; 2 for a usage error; re-raise it
    under --debug)."""
    if debug:
        raise exc
    click.echo(f"error: {exc}", err=True)
    sys.exit(getattr(exc, "exit_code", 1))


def run_guarded(debug: bool, fn):
    """Call `fn()`; a failure becomes one line on stderr and exit code 1 (130 when interrupted),
    with the traceback only under --debug."""
    try:
        return fn()
    except OnnxPruneError as exc:
        fail(exc, debug)
    except MemoryError:
        fail(OnnxPruneError("out of memory"), debug)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: still one line, but say so
        if debug:
            raise
        click.echo(f"error: internal error ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                   f"rerun with --debug for the traceback", err=True)
        sys.exit(1)
