"""Latency of models side by side on onnxruntime execution providers (`onnxprune bench`).

For each provider and batch size, every model is warmed up, then the timed runs alternate the
models (A B C A B C ...) so that drift (thermal, frequency, other work on the machine) hits all
of them alike. Per model it reports median, p90 and min latency, throughput
(``batch / median``), speedup ``median_first / median_model``, the MAC ratio
``macs_model / macs_first`` and the efficiency ``speedup / (macs_first / macs_model)``: 1.0 means
the latency fell exactly as much as the arithmetic did.

On CUDA and TensorRT the inputs and outputs are bound on the device with IOBinding, so host
copies are not timed. Providers that onnxruntime does not offer are skipped with one line.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import onnx

from ..analysis import fold, graph, metrics
from .. import io
from ..errors import OnnxPruneError
from .providers import provider as provider_record
from .sessions import OrtModel, random_feeds

SCHEMA_VERSION = 1



@dataclass(frozen=True)
class BenchConfig:
    """What to measure.

    Args:
        providers: CLI provider names ("cpu", "cuda", "tensorrt"), in order.
        batches: batch sizes for models with a dynamic batch dim; empty means the batch of
            `input_shapes` when given, else 1. Models with a static batch run at their own.
        threads: intra-op threads (0: onnxruntime's default).
        warmup: untimed runs per model before timing.
        repeat: timed runs per model.
        input_shapes: {input name: shape} for dynamic dims; the batch dim is replaced by each batch.
        profile_dir: write onnxruntime per-node profiles there and summarise them.
        seed: seed of the random inputs (the same inputs for every model).
        spin: let idle intra-op threads spin (onnxruntime's default). Off by default: with
            sessions alternating, one session's spinning workers take the cores the next one
            needs (on 2 busy cores, medians went up to 6x and p90 4x with it on).
    """

    providers: tuple[str, ...] = ("cpu",)
    batches: tuple[int, ...] = ()
    threads: int = 0
    warmup: int = 5
    repeat: int = 30
    input_shapes: dict = field(default_factory=dict)
    profile_dir: str | None = None
    seed: int = 0
    spin: bool = False

    def to_dict(self) -> dict:
        """Plain-data form for reports."""
        return asdict(self)


@dataclass(frozen=True)
class ModelInfo:
    """One benchmarked model: its label, cost per sample and batch handling."""

    label: str
    path: str
    macs: int
    params: int
    static_batch: int | None

    def to_dict(self) -> dict:
        """Plain-data form for reports."""
        return asdict(self)


@dataclass(frozen=True)
class Timing:
    """Latency of one model on one provider at one batch size; ratios are against the first model."""

    model: str
    provider: str
    batch: int
    input_shapes: dict
    times_ms: tuple[float, ...]
    median_ms: float
    p90_ms: float
    min_ms: float
    throughput: float
    speedup: float | None
    mac_ratio: float | None
    efficiency: float | None

    def to_dict(self) -> dict:
        """Plain-data form for reports (times rounded to microseconds)."""
        d = asdict(self)
        d["times_ms"] = [round(t, 3) for t in self.times_ms]
        return d


@dataclass(frozen=True)
class Profile:
    """Per-node kernel times from onnxruntime's profiler, averaged over the profiled runs."""

    model: str
    provider: str
    batch: int
    file: str
    runs: int
    total_ms: float
    top: tuple[dict, ...]  # {"node", "op_type", "ms", "share"} per run, longest first
    by_op_type: dict = field(default_factory=dict)  # op_type -> ms per run, longest first

    def to_dict(self) -> dict:
        """Plain-data form for reports."""
        return {**asdict(self), "top": list(self.top)}


@dataclass(frozen=True)
class BenchResult:
    """Everything `bench` measured, plus the notes (skipped providers, static batches)."""

    config: BenchConfig
    models: tuple[ModelInfo, ...]
    timings: tuple[Timing, ...]
    profiles: tuple[Profile, ...] = ()
    notes: tuple[str, ...] = ()
    onnxruntime: str = ""
    available_providers: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """The JSON document printed by `onnxprune bench --json` (schema_version 1)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "onnxruntime": self.onnxruntime,
            "available_providers": list(self.available_providers),
            "config": self.config.to_dict(),
            "models": [m.to_dict() for m in self.models],
            "results": [t.to_dict() for t in self.timings],
            "profiles": [p.to_dict() for p in self.profiles],
            "notes": list(self.notes),
        }


class RunEvent(NamedTuple):
    """One model run, as reported to the `hook` of `bench` (for tests and progress)."""

    phase: str  # "warmup" or "timed"
    provider: str
    batch: int
    model: str


@dataclass
class _Model:
    info: ModelInfo
    proto: onnx.ModelProto
    source: str | bytes  # the path when there is one: onnxruntime then reads external data itself
    user_shapes: dict
    ort_model: object = None  # keeps a large proto's temporary file (verify.OrtModel) while sessions are built


def resolve_providers(requested: Sequence[str], available: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split the requested providers into the usable ones and a note per missing one.

    Raises:
        OnnxPruneError: an unknown provider name, or none of the requested ones is available.
    """
    usable, notes = [], []
    for name in dict.fromkeys(p.lower() for p in requested):
        record = provider_record(name)
        if record.ort_name in available:
            usable.append(name)
        else:
            notes.append(f"{record.display} provider not available: {record.hint}")
    if not usable:
        raise OnnxPruneError("none of the requested providers is available ("
                             + "; ".join(notes) + f"); onnxruntime offers: {', '.join(available)}")
    return usable, notes


def static_batch(model: onnx.ModelProto) -> int | None:
    """The batch size fixed in the model (dim 0 of every real input static), or None when it is dynamic."""
    sizes = []
    for vi in graph.real_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if not dims:
            continue
        if not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            return None
        sizes.append(dims[0].dim_value)
    return sizes[0] if sizes else None


def _labels(sources: Sequence) -> list[str]:
    names = [Path(s).name if isinstance(s, (str, os.PathLike)) else f"model{i}" for i, s in enumerate(sources)]
    if len(set(names)) == len(names):
        return names
    return [str(s) if isinstance(s, (str, os.PathLike)) else f"model{i}" for i, s in enumerate(sources)]


def _prepare(sources: Sequence, labels: Sequence[str], user_shapes: dict) -> list[_Model]:
    protos = [io.load(src) if isinstance(src, (str, os.PathLike)) else src for src in sources]
    known = {vi.name for proto in protos for vi in graph.real_inputs(proto)}
    unknown = sorted(set(user_shapes) - known)
    if unknown:
        raise OnnxPruneError(f"--input-shape names '{unknown[0]}', but no model has that input "
                             f"(inputs: {', '.join(sorted(known))})")
    models = []
    for src, label, proto in zip(sources, labels, protos):
        names = {vi.name for vi in graph.real_inputs(proto)}
        mine = {k: v for k, v in user_shapes.items() if k in names}
        norm = fold.normalise(proto)
        st = metrics.stats(norm, graph.infer_shapes(norm, graph.fixed_input_shapes(proto, mine, batch=1)))
        is_path = isinstance(src, (str, os.PathLike))
        ort_model = OrtModel(str(src) if is_path else proto)   # bytes, or a temporary file above 2 GB
        models.append(_Model(ModelInfo(label, str(src) if is_path else "<ModelProto>", st.macs, st.params,
                                       static_batch(proto)), proto, ort_model.source, mine, ort_model))
    return models


def _batches_for(m: _Model, requested: Sequence[int]) -> tuple[list[int], str | None]:
    own = m.info.static_batch
    if own is not None:
        skipped = [b for b in requested if b != own]
        note = (f"{m.info.label} has a static batch of {own}: it runs at batch {own} only"
                f" (not at {', '.join(map(str, skipped))})") if skipped else None
        return [own], note
    if requested:
        return list(requested), None
    first = graph.real_inputs(m.proto)[0].name if graph.real_inputs(m.proto) else None
    user = m.user_shapes.get(first)
    return [user[0] if user else 1], None


def _session(m: _Model, provider: str, cfg: BenchConfig, profile_prefix: str | None = None):
    """A session on `provider`; raises OnnxPruneError (one line) when it cannot be created there."""
    import onnxruntime as ort

    record = provider_record(provider)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if cfg.threads:
        opts.intra_op_num_threads = cfg.threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if cfg.spin else "0")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if provider != "cpu" and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception:  # missing DLLs surface below as a session failure, with a better message
            pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sess = ort.InferenceSession(m.source, opts, providers=list(record.session))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxPruneError(f"{provider_record(provider).display} session for {m.info.label} failed: {first[:300]}") from None
    if sess.get_providers()[0] != record.ort_name:
        raise OnnxPruneError(f"{provider_record(provider).display} provider could not be used for {m.info.label} (onnxruntime fell "
                             f"back to {sess.get_providers()[0]}): check the GPU driver, CUDA and cuDNN installation")
    return sess


def _runner(sess, provider: str, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
    """A zero-argument call that runs the model once; on GPUs inputs and outputs stay on the device."""
    device = provider_record(provider).device
    if device is None:
        names = [o.name for o in sess.get_outputs()]
        return lambda: sess.run(names, feeds)
    import onnxruntime as ort

    binding = sess.io_binding()
    on_device = {name: ort.OrtValue.ortvalue_from_numpy(x, device, 0) for name, x in feeds.items()}
    for name, value in on_device.items():
        binding.bind_ortvalue_input(name, value)
    for out in sess.get_outputs():
        binding.bind_output(out.name, device, 0)

    def run(_keep=on_device):  # _keep: the device inputs live as long as the runner
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run


def _feeds(m: _Model, batch: int, seed: int) -> dict[str, np.ndarray]:
    shapes = graph.fixed_input_shapes(m.proto, m.user_shapes, batch=batch)
    return random_feeds(m.proto, shapes, batch=batch, seed=seed)


def summarise(times_ms: Sequence[float], batch: int) -> dict:
    """median, p90, min (ms) and throughput (samples/s) of a list of latencies."""
    median = statistics.median(times_ms)
    return {"median_ms": median, "p90_ms": float(np.percentile(times_ms, 90)), "min_ms": min(times_ms),
            "throughput": batch / (median / 1000.0) if median > 0 else float("inf")}


def _ratios(first: ModelInfo, info: ModelInfo, first_median: float | None, median: float) -> tuple:
    speedup = first_median / median if first_median is not None and median > 0 else None
    mac_ratio = info.macs / first.macs if first.macs and info.macs else None
    efficiency = speedup * mac_ratio if speedup is not None and mac_ratio else None  # speedup / (1 / mac_ratio)
    return speedup, mac_ratio, efficiency


def time_models(runners: Sequence[Callable[[], None]], warmup: int, repeat: int,
                on_run: Callable[[str, int], None] | None = None) -> list[list[float]]:
    """Warm every runner up, then time `repeat` rounds that run each runner once, in order.

    Returns:
        Per runner, its `repeat` latencies in milliseconds.
    """
    for _ in range(warmup):
        for i, run in enumerate(runners):
            if on_run:
                on_run("warmup", i)
            run()
    times: list[list[float]] = [[] for _ in runners]
    clock = time.perf_counter_ns
    for _ in range(repeat):
        for i, run in enumerate(runners):
            if on_run:
                on_run("timed", i)
            t0 = clock()
            run()
            times[i].append((clock() - t0) / 1e6)
    return times


def read_profile(path: str, top: int = 10) -> tuple[int, float, list[dict], dict[str, float]]:
    """Summarise an onnxruntime profile.

    Returns:
        (runs, node time per run in ms, the `top` nodes by time, ms per run per op type). The
        op types are the kernels onnxruntime ran after its graph optimisations (for instance
        `FusedConv` where a Conv could not use the blocked NCHWc layout). The first run is
        dropped when there are several (it includes allocations and caches warming).
    """
    with open(path) as f:
        events = json.load(f)
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    start = runs[1] if len(runs) > 1 else 0
    kept = max(len(runs) - (1 if len(runs) > 1 else 0), 1)
    per_node: dict[str, float] = defaultdict(float)
    op_type: dict[str, str] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e.get("ts", 0) < start:
            continue
        node = e["name"][: -len("_kernel_time")]
        per_node[node] += e.get("dur", 0) / 1000.0
        op_type[node] = e.get("args", {}).get("op_name", "?")
    total = sum(per_node.values()) / kept
    rows = sorted(per_node.items(), key=lambda kv: -kv[1])[:top]
    by_type: dict[str, float] = defaultdict(float)
    for node, ms in per_node.items():
        by_type[op_type[node]] += ms / kept
    return kept, total, [{"node": n, "op_type": op_type[n], "ms": ms / kept,
                          "share": (ms / kept) / total if total else 0.0} for n, ms in rows], \
        dict(sorted(by_type.items(), key=lambda kv: -kv[1]))


def _profile(index: int, m: _Model, provider: str, batch: int, cfg: BenchConfig, feeds) -> Profile:
    """Profile one model in a fresh session (so profiling does not slow the timed runs)."""
    prefix = str(Path(cfg.profile_dir) / f"{index}_{Path(m.info.label).stem}_{provider}_b{batch}")
    sess = _session(m, provider, cfg, profile_prefix=prefix)
    run = _runner(sess, provider, feeds)
    for _ in range(1 + min(cfg.repeat, 10)):
        run()
    file = sess.end_profiling()
    runs, total, top, by_type = read_profile(file)
    return Profile(m.info.label, provider, batch, file, runs, total, tuple(top), by_type)


def _batches_per_model(models, batches, note) -> list:
    """The batches each model runs at (a static batch: its own only, with a note)."""
    per_model = []
    for m in models:
        chosen, msg = _batches_for(m, batches)
        per_model.append(chosen)
        if msg:
            note(msg)
    return per_model


def bench(sources: Sequence, config: BenchConfig | None = None, *, labels: Sequence[str] | None = None,
          log: Callable[[str], None] | None = None, hook: Callable[[RunEvent], None] | None = None) -> BenchResult:
    """Measure the latency of models side by side.

    Args:
        sources: ONNX paths or ModelProtos; the first is the reference for speedup and MAC ratios.
        config: what to measure (see `BenchConfig`).
        labels: display names (default: file names).
        log: called with each note as it happens (skipped providers, static batches).
        hook: called before every run with a `RunEvent` (tests check the alternation with it).
    Returns:
        A `BenchResult`.
    Raises:
        OnnxPruneError: unreadable model, bad --input-shape, no usable provider, a model that
            does not run on the CPU.
    """
    import onnxruntime as ort

    cfg = config or BenchConfig()
    if not sources:
        raise OnnxPruneError("no model to benchmark")
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        if log:
            log(msg)

    available = list(ort.get_available_providers())
    providers, missing = resolve_providers(cfg.providers, available)
    for msg in missing:
        note(msg)
    models = _prepare(sources, list(labels) if labels else _labels(sources), dict(cfg.input_shapes))
    per_model = _batches_per_model(models, cfg.batches, note)
    all_batches = sorted({b for bs in per_model for b in bs})
    if cfg.profile_dir:
        Path(cfg.profile_dir).mkdir(parents=True, exist_ok=True)

    timings: list[Timing] = []
    profiles: list[Profile] = []
    first = models[0].info
    for provider in providers:
        try:
            sessions = [_session(m, provider, cfg) for m in models]
        except OnnxPruneError as exc:
            if provider == "cpu":
                raise
            note(f"{exc}; skipping {provider_record(provider).display}")
            continue
        for batch in all_batches:
            idx = [i for i, bs in enumerate(per_model) if batch in bs]
            feeds = {i: _feeds(models[i], batch, cfg.seed) for i in idx}

            def on_run(phase: str, k: int, _idx=idx, _batch=batch, _provider=provider) -> None:
                if hook:
                    hook(RunEvent(phase, _provider, _batch, models[_idx[k]].info.label))

            try:
                runners = [_runner(sessions[i], provider, feeds[i]) for i in idx]
                times = time_models(runners, cfg.warmup, cfg.repeat, on_run)
            except Exception as exc:  # onnxruntime errors (device out of memory, kernel failures): one line
                first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                raise OnnxPruneError(f"{provider_record(provider).display} run at batch {batch} failed: {first_line}") from exc
            first_median = statistics.median(times[0]) if idx[0] == 0 else None
            for k, i in enumerate(idx):
                s = summarise(times[k], batch)
                speedup, mac_ratio, eff = _ratios(first, models[i].info, first_median, s["median_ms"])
                shapes = {name: list(x.shape) for name, x in feeds[i].items()}
                timings.append(Timing(models[i].info.label, provider, batch, shapes, tuple(times[k]), s["median_ms"],
                                      s["p90_ms"], s["min_ms"], s["throughput"], speedup, mac_ratio, eff))
            if cfg.profile_dir:
                profiles.extend(_profile(i, models[i], provider, batch, cfg, feeds[i]) for i in idx)
        del sessions
    if not timings:
        raise OnnxPruneError("nothing was measured: " + "; ".join(notes))
    return BenchResult(cfg, tuple(m.info for m in models), tuple(timings), tuple(profiles), tuple(notes),
                       ort.__version__, tuple(available))

