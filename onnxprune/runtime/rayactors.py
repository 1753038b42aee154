"""Tasks on Ray actors (`--ray ADDRESS|auto`, the `[ray]` extra).

Each actor holds onnxruntime sessions on the run's device; each part of the shared state is put in
the object store once per run (ray.put) and each actor reads it once per map. An actor that dies
(or its node) is replaced and its task run again, at most MAX_RETRIES times; a cluster that cannot
be reached or is lost is an OnnxPruneError, and no result.
"""

from __future__ import annotations

import itertools

from ..errors import OnnxPruneError, UsageError
from . import sessions
from .serial import MAX_RETRIES, Serial, first_line, share, unsendable


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
