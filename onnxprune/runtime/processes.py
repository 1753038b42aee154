"""Tasks in worker processes on this machine (`--workers N`).

Each worker is a fresh interpreter (not a fork of a process running onnxruntime's thread pools,
and unlike multiprocessing's spawn it does not import the caller's main module again) with its own
onnxruntime sessions on its share of the intra-op threads (the cores / N). The shared state is
pickled once per map and sent to each worker once; tasks are dealt to workers as they come free,
one in flight per worker, so a generator of tasks is read lazily. A worker that dies is replaced
and its task run again, at most MAX_RETRIES times; then an OnnxPruneError, and no result.
"""

from __future__ import annotations

import itertools
import os
import pickle
import traceback

from ..errors import OnnxPruneError
from . import sessions
from .serial import MAX_RETRIES, Serial, share, unsendable

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")   # numpy's BLAS in a worker


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
        code = (f"from onnxprune.runtime.processes import serve; serve({to_child}, {from_child}, {device!r}, {threads})")
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
