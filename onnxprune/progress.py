"""Progress of the long stages on stderr: one bar per running stage, named as the report names it.

The pipeline calls `stage(name, total)` around every loop that can take more than a second
(calibration passes, sensitivity probes, the order check, recovery steps, fine-tuning epochs); the
bars are drawn only when stderr is a terminal, so a pipe, a log file or a test sees nothing, and
`quiet()` turns them off for a block. All stages share one rich `Progress` display: rich allows a
single live display at a time, and stages nest (a calibration pass inside a recovery step), so a
nested stage adds a line to the running display instead of opening a second one.
"""

from __future__ import annotations

import contextlib
import sys

_display = {"progress": None, "tasks": [], "off": 0}


class _Stage:
    """What a running stage can do: `advance` its bar and change the text after it (`note`)."""

    def __init__(self, progress, task):
        self._progress, self._task = progress, task

    def advance(self, steps: float = 1) -> None:
        """Count `steps` more units of work done."""
        if self._progress is not None:
            self._progress.advance(self._task, steps)

    def note(self, text: str) -> None:
        """Show `text` after the bar (e.g. the current losses)."""
        if self._progress is not None:
            self._progress.update(self._task, note=text)

    def total(self, total: float) -> None:
        """Change the number of units once it is known."""
        if self._progress is not None:
            self._progress.update(self._task, total=total)


def enabled() -> bool:
    """Whether bars are drawn: stderr is a terminal and no `quiet()` block is open."""
    return not _display["off"] and sys.stderr.isatty()


@contextlib.contextmanager
def quiet():
    """No bars inside this block (nested runs that would only flicker)."""
    _display["off"] += 1
    try:
        yield
    finally:
        _display["off"] -= 1


@contextlib.contextmanager
def stage(name: str, total: float | None = None):
    """A bar labelled `name` with `total` units (None: a spinner without a count) for the block;
    yields a `_Stage` whose `advance` counts work done. Without a terminal it costs nothing."""
    if not enabled():
        yield _Stage(None, None)
        return
    progress = _display["progress"]
    if progress is None:
        progress = _display["progress"] = _new_display()
        progress.start()
    task = progress.add_task(name, total=total, note="")
    _display["tasks"].append(task)
    try:
        yield _Stage(progress, task)
    finally:
        progress.remove_task(task)
        _display["tasks"].remove(task)
        if not _display["tasks"]:
            progress.stop()
            _display["progress"] = None


def advance(steps: float = 1) -> None:
    """Count `steps` more units done in the innermost running stage (nothing without bars)."""
    if _display["progress"] is not None and _display["tasks"]:
        _display["progress"].advance(_display["tasks"][-1], steps)


def note(text: str) -> None:
    """Show `text` after the bar of the innermost running stage (nothing without bars)."""
    if _display["progress"] is not None and _display["tasks"]:
        _display["progress"].update(_display["tasks"][-1], note=text)


def iterate(items, name: str, total: float | None = None):
    """Yield from `items` under `stage(name, total)`, one unit per item."""
    with stage(name, total) as bar:
        for item in items:
            yield item
            bar.advance()


def _new_display():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[note]}"),
                    console=Console(stderr=True), transient=True)
