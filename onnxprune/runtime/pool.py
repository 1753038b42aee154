"""Independent evaluations run one after another, in worker processes or on Ray actors (--workers, --ray).

A probe-heavy stage calls `current().map(fn, tasks, shared)` with a module-level function
`fn(shared, task)`, an iterable of tasks and the state every task reads (`shared`: the analysis,
the reference outputs, the calibration data). The results come back as a list in task order,
whatever ran where, so what the stage computes from them is what the serial run computes: the
same seed gives the same file.

- `Serial`: in this process, one task after another (`--workers 1`, the default).
- `Processes(n)`: n spawned worker processes, each with its own onnxruntime sessions on its share
  of the intra-op threads (the cores / n). `shared` is pickled once per map and sent to each
  worker once; tasks are dealt to workers as they come free, one in flight per worker, so a
  generator of tasks is read lazily and its memory stays bounded.
- `RayActors(address, n)`: the same on Ray actors that hold sessions; each part of `shared` is
  put in the object store once per run (ray.put; the analysed model serves several stages) and
  each actor reads it once per map.

A worker or actor that dies (killed, out of memory, its node lost) is replaced and its task run
again, at most MAX_RETRIES times; then the map raises an OnnxPruneError and nothing is returned,
so a stage never goes on with part of its results.
"""

from __future__ import annotations

import itertools
import os
import pickle
import traceback
from contextlib import contextmanager

from ..errors import OnnxPruneError, UsageError
from . import sessions

MAX_RETRIES = 2          # reruns of a task whose worker died, before the run stops with an error
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")   # numpy's BLAS in a worker


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


def worker_main(conn, device: str, threads: int) -> None:
    """A worker process: receives ("shared", key, obj), ("task", index, fn, key, task) and "stop"
    messages (pickled bytes) and answers each task with ("ok", index, result) or ("error", index,
    exception or its text)."""
    store = {}
    with sessions.configured(device, threads):
        while True:
            try:
                message = pickle.loads(conn.recv_bytes())
            except EOFError:       # the parent has gone
                return
            if message == "stop":
                return
            if message[0] == "shared":
                store = {message[1]: message[2]}      # only the current map's state is kept
                continue
            _, index, fn, key, task = message
            try:
                reply = pickle.dumps(("ok", index, fn(store[key], task)), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:      # the task's own failure goes back to the parent as it is
                reply = pickle.dumps(("error", index, picklable(exc)), protocol=pickle.HIGHEST_PROTOCOL)
            conn.send_bytes(reply)


def serve(read_fd: int, write_fd: int, device: str, threads: int) -> None:
    """The entry point of a worker process started by `Worker`: `worker_main` on the pipes it was given."""
    from multiprocessing.connection import Connection

    worker_main(Duplex(Connection(read_fd, writable=False), Connection(write_fd, readable=False)), device, threads)


class Duplex:
    """Two one-way connections used as one: recv from the first, send to the second."""

    def __init__(self, incoming, outgoing):
        self.incoming, self.outgoing = incoming, outgoing

    def recv_bytes(self) -> bytes:
        """The next message."""
        return self.incoming.recv_bytes()

    def send_bytes(self, payload: bytes) -> None:
        """Send one message."""
        self.outgoing.send_bytes(payload)


def picklable(exc: Exception):
    """`exc` itself when it can be pickled, else an OnnxPruneError with its type, text and traceback."""
    try:
        pickle.dumps(exc)
        return exc
    except Exception:
        return OnnxPruneError(f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}")


def worker_environment(threads: int) -> dict:
    """The environment of a worker process: this one's, with this process's import path (the task
    functions are found as here) and numpy's BLAS limited to the worker's threads."""
    import sys

    env = dict(os.environ)
    env.update({k: str(threads) for k in THREAD_VARIABLES})
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    return env


class Worker:
    """One worker process (a fresh interpreter running `serve`: unlike multiprocessing's spawn, it
    does not import the caller's main module again) and the parent's ends of its two pipes."""

    def __init__(self, device: str, threads: int):
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        code = (f"from onnxprune.runtime.pool import serve; serve({to_child}, {from_child}, {device!r}, {threads})")
        self.process = subprocess.Popen([sys.executable, "-c", code], pass_fds=(to_child, from_child),
                                        env=worker_environment(threads), stdin=subprocess.DEVNULL)
        os.close(to_child)        # the child's ends: closed here, so that its death reads as end-of-file
        os.close(from_child)
        self.reader = Connection(to_parent, writable=False)
        self.writer = Connection(from_parent, readable=False)
        self.key = None     # the map whose shared state this worker holds
        self.job = None     # (index, task, attempts) in flight

    def send(self, payload: bytes) -> bool:
        """Send pickled bytes; False when the worker has gone."""
        try:
            self.writer.send_bytes(payload)
            return True
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            return False

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None

    def stop(self) -> None:
        """Ask the worker to stop, then make sure it has."""
        import subprocess

        self.send(pickle.dumps("stop"))
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.reader.close()
        self.writer.close()


class Processes(Serial):
    """`workers` worker processes (started by `start` or the first map, kept until `close`)."""

    name = "processes"

    def __init__(self, workers: int, device: str = "cpu", threads: int | None = None):
        # fresh processes, not forks: a forked copy of a process running onnxruntime's thread pools can hang
        super().__init__()
        self.workers, self.device = workers, device
        self.threads = threads or share(workers)
        self.pool: list[Worker] = []
        self.keys = itertools.count()

    def start(self) -> None:
        """Start the worker processes (they import the package while the parent goes on)."""
        if not self.pool:
            self.pool = [Worker(self.device, self.threads) for _ in range(self.workers)]

    def run(self, fn, tasks, shared, what: str) -> list:
        """The tasks' results, computed by the workers, in task order."""
        from multiprocessing.connection import wait

        self.start()
        key = next(self.keys)
        try:
            shared_bytes = pickle.dumps(("shared", key, shared), protocol=pickle.HIGHEST_PROTOCOL)
        except ValueError as exc:     # protobuf cannot serialize a model above 2 GB
            raise unsendable(what, exc) from None
        source, again, results, errors = enumerate(tasks), [], {}, {}
        try:
            while True:
                for worker in self.pool:
                    if worker.job is None and not errors:
                        job = again.pop(0) if again else next(((i, t, 0) for i, t in source), None)
                        if job is not None:
                            self.give(worker, job, fn, key, shared_bytes, again, what)
                busy = [w for w in self.pool if w.job is not None]
                if not busy:
                    break
                ready = wait([w.reader for w in busy])
                for worker in busy:
                    if worker.reader in ready:
                        self.collect(worker, results, errors, again, what)
            if errors:     # the first failed task's error, as the serial run raises it
                raise errors[min(errors)]
        except BaseException:
            self.close()       # workers may hold stale tasks: none of their results may be used
            raise
        return [results[i] for i in range(len(results))]

    def give(self, worker: Worker, job, fn, key, shared_bytes: bytes, again: list, what: str) -> None:
        """Send `job` (and the map's shared state, once) to `worker`; a worker found dead is replaced."""
        worker.job = job
        ok = worker.key == key or worker.send(shared_bytes)
        worker.key = key if ok else None
        ok = ok and worker.send(pickle.dumps(("task", job[0], fn, key, job[1]), protocol=pickle.HIGHEST_PROTOCOL))
        if not ok:
            self.replace(worker, again, what)

    def collect(self, worker: Worker, results: dict, errors: dict, again: list, what: str) -> None:
        """Read `worker`'s answer: a result, the task's own error (kept in `errors`), or its death."""
        if worker.reader.poll():
            try:
                status, index, value = pickle.loads(worker.reader.recv_bytes())
            except (EOFError, OSError):     # end of file: the worker has gone
                status = None
            if status is not None:
                worker.job = None
                (errors if status == "error" else results)[index] = value
                return
        self.replace(worker, again, what)      # end of file: the worker has gone (or is going)

    def replace(self, worker: Worker, again: list, what: str) -> None:
        """`worker` died: start another in its place and queue its task again, or give up."""
        index, task, attempts = worker.job
        worker.stop()
        code = worker.process.returncode
        self.pool[self.pool.index(worker)] = Worker(self.device, self.threads)
        if attempts >= MAX_RETRIES:
            raise OnnxPruneError(f"a worker process died {attempts + 1} times running {what} task {index} "
                                 f"(exit code {code}); nothing was written: rerun with fewer --workers "
                                 f"(memory?) or --workers 1")
        self.retries += 1
        again.append((index, task, attempts + 1))

    def close(self) -> None:
        """Stop every worker (a later map starts them again)."""
        for worker in self.pool:
            worker.stop()
        self.pool = []

    release = close


def require_ray(flag: str = "--ray"):
    """The ray module, or a one-line UsageError naming the extra."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"{flag} needs Ray: pip install 'onnxprune[ray]'") from None
    return ray


class Holder:
    """A Ray actor's state: the settings of its sessions and the current map's shared state."""

    def __init__(self, device: str, threads: int):
        sessions.SETTINGS.update(device=device, threads=threads)
        self.key, self.shared = None, None

    def load(self, key, is_tuple: bool, *parts) -> None:
        """Hold the shared state of map `key`: its `parts` (Ray resolves the object references it was
        given), a tuple of them when `is_tuple`."""
        self.key, self.shared = key, (tuple(parts) if is_tuple else parts[0])

    def run(self, fn, task):
        """fn(shared, task)."""
        return fn(self.shared, task)


class RayActors(Serial):
    """Tasks on Ray actors (one in flight per actor); `address` is a cluster address or "auto"."""

    name = "ray"

    def __init__(self, address: str, workers: int = 1, device: str = "cpu"):
        super().__init__()
        ray = self.ray = require_ray()
        self.started = not ray.is_initialized()
        try:
            if self.started:
                reachable(address)
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            resources = ray.cluster_resources()
        except Exception as exc:
            raise OnnxPruneError(f"--ray {address}: could not reach a Ray cluster ({first_line(exc)})") from None
        self.address, self.device = address, device
        kind = "GPU" if device == "cuda" else "CPU"
        available = int(resources.get(kind, 0))
        if available < 1:
            self.close()
            raise OnnxPruneError(f"--ray {address}: the cluster has no {kind}s for --device {device}")
        self.workers = workers if workers > 1 else available
        cpus = float(resources.get("CPU", 1))
        self.cpus = share(self.workers, int(cpus))      # each actor's intra-op threads
        # fractions where more actors than CPUs (GPUs) were asked for: an actor that cannot be
        # placed would wait for ever, and its tasks with it
        self.actor_class = ray.remote(num_cpus=min(float(self.cpus), cpus / self.workers),
                                      num_gpus=min(1.0, available / self.workers) if kind == "GPU" else 0,
                                      max_restarts=0)(Holder)
        self.actors = []
        self.keys = itertools.count()
        self.stored: dict[int, tuple] = {}     # id -> (object, its reference): see `put`

    def start(self) -> None:
        """Create the actors (Ray places them while the run goes on)."""
        if not self.actors:
            self.actors = [self.new_actor() for _ in range(self.workers)]

    def new_actor(self):
        """An actor whose sessions run on this pool's device with its share of the CPUs as threads."""
        return self.actor_class.remote(self.device, self.cpus)

    def run(self, fn, tasks, shared, what: str) -> list:
        """The tasks' results, computed on the actors, in task order."""
        ray = self.ray
        self.start()
        try:
            key, refs = next(self.keys), self.put(shared)
        except ValueError as exc:     # protobuf cannot serialize a model above 2 GB
            raise unsendable(what, exc) from None
        loaded, errors = {}, {}
        source, again, results, running, jobs = enumerate(tasks), [], {}, {}, {}
        while True:
            for slot, actor in enumerate(self.actors):
                if slot in running.values() or errors:
                    continue
                job = again.pop(0) if again else next(((i, t, 0) for i, t in source), None)
                if job is None:
                    break
                if loaded.get(slot) != key:
                    actor.load.remote(key, isinstance(shared, tuple), *refs)
                    loaded[slot] = key
                running[actor.run.remote(fn, job[1])] = slot
                jobs[slot] = job
            if not running:
                break
            done, _ = ray.wait(list(running), num_returns=1)
            slot = running.pop(done[0])
            job = jobs.pop(slot)
            try:
                results[job[0]] = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:       # the task's own failure: raised below
                cause = getattr(exc, "cause", None)
                errors[job[0]] = cause if isinstance(cause, Exception) else exc.as_instanceof_cause()
            except ray.exceptions.RayActorError as exc:       # the actor (or its node) died
                self.retry(slot, job, again, what, exc)
                loaded.pop(slot, None)
            except ray.exceptions.RayError as exc:
                raise OnnxPruneError(f"--ray {self.address}: the Ray cluster was lost ({first_line(exc)}); "
                                     f"nothing was written") from None
        if errors:     # the first failed task's error, as the serial run raises it
            raise errors[min(errors)]
        return [results[i] for i in range(len(results))]

    def put(self, shared) -> list:
        """Object references for the parts of `shared` (its items when a tuple): each object is put
        in the object store once per run, however many stages share it (the analysed model)."""
        parts = shared if isinstance(shared, tuple) else (shared,)
        refs = []
        for part in parts:
            if id(part) not in self.stored:      # the object itself is kept, so its id stays its own
                self.stored[id(part)] = (part, self.ray.put(part))
            refs.append(self.stored[id(part)][1])
        return refs

    def retry(self, slot: int, job, again: list, what: str, exc) -> None:
        """The actor in `slot` died: start another and queue its task again, or give up."""
        index, task, attempts = job
        try:
            self.actors[slot] = self.new_actor()
        except Exception as error:
            raise OnnxPruneError(f"--ray {self.address}: the Ray cluster was lost ({first_line(error)}); "
                                 f"nothing was written") from None
        if attempts >= MAX_RETRIES:
            raise OnnxPruneError(f"a Ray actor died {attempts + 1} times running {what} task {index} "
                                 f"({first_line(exc)}); nothing was written")
        self.retries += 1
        again.append((index, task, attempts + 1))

    def release(self) -> None:
        """Stop the actors until the next map (each holds a copy of the model) and drop the
        object store's copies."""
        for actor in getattr(self, "actors", []):
            try:
                self.ray.kill(actor)
            except Exception:      # already gone with its cluster
                pass
        self.actors = []
        self.stored = {}

    def close(self) -> None:
        """Stop the actors, and Ray itself when this pool started it."""
        self.release()
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def reachable(address: str, timeout: float = 5.0) -> None:
    """Raise OSError at once when `address` (host:port or ray://host:port) takes no connection:
    ray.init would retry an unreachable cluster for minutes. "auto" and other forms pass."""
    import re
    import socket

    match = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address.strip())
    if match:
        socket.create_connection((match.group(1), int(match.group(2))), timeout=timeout).close()


def unsendable(what: str, exc: BaseException) -> OnnxPruneError:
    """The error for shared state that cannot be pickled (a model above protobuf's 2 GB limit)."""
    return OnnxPruneError(f"the {what} tasks' model cannot be sent to workers ({first_line(exc)}); "
                          f"use --workers 1 without --ray")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (its type where it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
