"""The serial task runner that every pool reproduces, and what the pools share.

`Serial.map(fn, tasks, shared, what)` is [fn(shared, task) for task in tasks], timed per label;
`runtime.processes.Processes` and `runtime.rayactors.RayActors` compute the same list elsewhere
(`runtime.pool` says which one a run uses).
"""

from __future__ import annotations

import os

from ..errors import OnnxPruneError

MAX_RETRIES = 2          # reruns of a task whose worker died, before the run stops with an error


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not Linux
        return os.cpu_count() or 1


def share(workers: int, total: int | None = None) -> int:
    """Intra-op threads of each of `workers` workers: the cores divided between them (at least 1)."""
    return max(1, (total or cores()) // max(1, workers))


class Serial:
    """Every task in this process, in order (what the other pools must reproduce)."""

    name = "serial"
    workers = 1

    def __init__(self):
        self.tasks = 0
        self.retries = 0
        self.seconds: dict[str, float] = {}    # wall time of the maps, per label

    def map(self, fn, tasks, shared=None, what: str = "tasks") -> list:
        """[fn(shared, task) for task in tasks], in task order; `what` names the tasks in messages
        and in `stats()["seconds"]`."""
        import time

        start = time.perf_counter()
        results = self.run(fn, tasks, shared, what)
        self.tasks += len(results)
        self.seconds[what] = self.seconds.get(what, 0.0) + time.perf_counter() - start
        return results

    def run(self, fn, tasks, shared, what: str) -> list:
        """The tasks' results (here: one after another in this process)."""
        return [fn(shared, task) for task in tasks]

    def start(self) -> None:
        """Start the workers ahead of the first map (nothing to start here)."""

    def release(self) -> None:
        """Stop the workers until the next map (they hold a copy of the model each)."""

    def stats(self) -> dict:
        """What ran where, for the report: backend, workers, tasks, retries, seconds per label."""
        return {"backend": self.name, "workers": self.workers, "tasks": self.tasks, "retries": self.retries,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}

    def close(self) -> None:
        """Nothing to stop."""


def unsendable(what: str, exc: BaseException) -> OnnxPruneError:
    """The error for shared state that cannot be pickled (a model above protobuf's 2 GB limit)."""
    return OnnxPruneError(f"the {what} tasks' model cannot be sent to workers ({first_line(exc)}); "
                          f"use --workers 1 without --ray")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (its type where it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
