"""Independent evaluations run one after another, in worker processes or on Ray actors (--workers, --ray).

A probe-heavy stage calls `current().map(fn, tasks, shared)` with a module-level function
`fn(shared, task)`, an iterable of tasks and the state every task reads (`shared`: the analysis,
the reference outputs, the calibration data). The results come back as a list in task order,
whatever ran where, so what the stage computes from them is what the serial run computes: the
same seed gives the same file.

- `Serial` (runtime/serial.py): in this process, one task after another (`--workers 1`, the default).
- `Processes(n)` (runtime/processes.py): n worker processes, each with its own onnxruntime
  sessions on its share of the intra-op threads (the cores / n). `shared` is pickled once per map
  and sent to each worker once; tasks are dealt to workers as they come free, one in flight per
  worker, so a generator of tasks is read lazily and its memory stays bounded.
- `RayActors(address, n)` (runtime/rayactors.py): the same on Ray actors that hold sessions;
  each part of `shared` is put in the object store once per run (ray.put; the analysed model
  serves several stages) and each actor reads it once per map.

A worker or actor that dies (killed, out of memory, its node lost) is replaced and its task run
again, at most MAX_RETRIES times; then the map raises an OnnxPruneError and nothing is returned,
so a stage never goes on with part of its results.
"""

from __future__ import annotations

from contextlib import contextmanager

from . import sessions
from .processes import Processes
from .rayactors import RayActors, require_ray
from .serial import MAX_RETRIES, Serial, cores, share

__all__ = ["MAX_RETRIES", "Processes", "RayActors", "Serial", "active", "cores", "current", "make",
           "require_ray", "share"]


POOLS: list = [Serial()]      # the innermost is the one stages use (`current`)


def current():
    """The pool the running stage hands its independent evaluations to (Serial outside `active`)."""
    return POOLS[-1]


def make(workers: int = 1, ray: str | None = None, device: str = "cpu"):
    """The pool for `--workers`/`--ray`: Serial, Processes or RayActors."""
    if ray:
        return RayActors(ray, workers, device)
    return Processes(workers, device) if workers > 1 else Serial()


@contextmanager
def active(workers: int = 1, ray: str | None = None, device: str = "cpu"):
    """Inside the block, `current()` is the pool for these options and sessions run on `device`;
    the pool's workers are stopped after it (an error included)."""
    pool = make(workers, ray, device)
    pool.start()
    POOLS.append(pool)
    try:
        with sessions.configured(device):
            yield pool
    finally:
        POOLS.remove(pool)
        pool.close()
