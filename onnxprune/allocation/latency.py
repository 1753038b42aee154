"""Pruning to a latency target (`onnxprune MODEL --target-latency 0.5`).

The target F is a latency ratio: the pruned model must run in at most ``F x`` the original's
latency (0.5 = twice as fast) on one execution provider, batch size and thread count. The
search works on the MAC budget (the fraction of MACs removed, what `--target-macs` asks for):

1. The filters are scored once and the allocator does its expensive work once (sensitivity
   curves, utilization or redundancy signals); after that a plan for any budget is cheap.
2. The largest budget (`max_budget`, 0.99: as much as the allocator and the per-group limits
   allow) is measured first. If even that plan misses the target, the search stops: the target
   is unreachable (`prune` then fails with one line naming the best ratio it measured).
3. Otherwise the budget is bisected between 0 (nothing removed, ratio 1 > F, not measured) and
   the last budget that met the target, until the interval is at most `tol` wide (default 0.02,
   i.e. 2% of the MACs) or `max_steps` distinct plans were measured (default 8). The answer is
   the smallest budget that met the target: the fewest channels removed that reach it.

Measuring. Each candidate is rewritten (`rewrite.apply`, cheap) and timed against the original
with `onnxprune.runtime.bench.bench`: after a warm-up, runs alternate original/pruned on the same inputs,
and the candidate's ratio is the median over the rounds of ``pruned run / original run`` (the
pairs share whatever else the machine was doing; `original_ms`/`pruned_ms` are the two medians).
A plan that meets the target is measured a second time and counts as meeting it only if both
measurements do (`confirm`; its ratio is the larger of the two): one burst of other work on the
machine during the original's runs must not pass a plan that is too slow. Identical plans (two
budgets the allocator maps to the same channels, common with `--round-to 8`) are measured once.

Tolerance and noise: the chosen budget is within `tol` of the smallest budget that meets the
target provided latency falls monotonically with the budget. Measured ratios carry noise (on the
project's shared 2-core machine under load, one measurement of 20 rounds had a standard deviation
of about 0.03), so a plan measured just under F may measure just over it in a later
`onnxprune bench`. Recovery after the search (mean compensation, least squares, BN
re-estimation) changes weights, not shapes, so it does not change the latency measured.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Hashable

import numpy as np

from .. import rewrite
from ..errors import OnnxPruneError, UsageError

TOLERANCE = 0.02
MAX_STEPS = 8
MAX_BUDGET = 0.99
WARMUP = 3
REPEAT = 20


@dataclass(frozen=True)
class Measurement:
    """One timing of a candidate against the original: `ratio` (pruned / original, the median of
    the per-round ratios) and the two median latencies in ms."""

    ratio: float
    original_ms: float | None = None
    pruned_ms: float | None = None


@dataclass(frozen=True)
class Candidate:
    """What `propose(budget)` returns: a key identifying the pruned model (equal keys: the same
    model, measured once), the fraction of MACs it removes, and anything the caller wants back."""

    key: Hashable
    macs_removed: float
    payload: Any = None


@dataclass(frozen=True)
class Step:
    """One search step: the budget asked for, what the plan removes, and the latency measured
    (`latency_ratio`: the larger of `ratios`, one per measurement; `cached`: a plan already measured)."""

    budget: float
    macs_removed: float
    latency_ratio: float
    meets: bool
    ratios: tuple[float, ...] = ()
    cached: bool = False
    original_ms: float | None = None
    pruned_ms: float | None = None

    def to_dict(self) -> dict:
        """Plain-data form for the report (rounded)."""
        d = asdict(self)
        for k in ("budget", "macs_removed", "latency_ratio"):
            d[k] = round(d[k], 4)
        d["ratios"] = [round(r, 4) for r in self.ratios]
        for k in ("original_ms", "pruned_ms"):
            d[k] = None if d[k] is None else round(d[k], 4)
        return d


@dataclass
class SearchResult:
    """The outcome of `search`. `choice` is the payload of the chosen candidate: the smallest
    budget that met the target, or, when `met` is False, the fastest candidate measured."""

    target: float
    met: bool
    budget: float
    macs_removed: float
    latency_ratio: float
    choice: Any
    steps: list[Step] = field(default_factory=list)
    tolerance: float = TOLERANCE
    measurements: int = 0

    def to_dict(self) -> dict:
        """Plain-data form for the report (without the payload)."""
        return {"target": self.target, "met": self.met, "budget": round(self.budget, 4),
                "macs_removed": round(self.macs_removed, 4), "latency_ratio": round(self.latency_ratio, 4),
                "tolerance": self.tolerance, "measurements": self.measurements,
                "steps": [s.to_dict() for s in self.steps]}


def search(target: float, propose: Callable[[float], Candidate], measure: Callable[[Any], Any], *,
           tol: float = TOLERANCE, max_steps: int = MAX_STEPS, max_budget: float = MAX_BUDGET,
           confirm: bool = True, log: Callable[[Step], None] | None = None) -> SearchResult:
    """Find the smallest MAC budget whose pruned model meets a latency target, by bisection.

    Args:
        target: the latency ratio to reach, in (0, 1): pruned latency <= target x original latency.
        propose: budget (fraction of MACs removed, in (0, 1)) -> `Candidate`; cheap (allocate,
            select), called for every step.
        measure: a candidate's payload -> its latency ratio against the original, as a float or a
            `Measurement`; expensive, called once per distinct `Candidate.key` (twice when the
            first measurement meets the target and `confirm` is on).
        tol: stop when the bisection interval of budgets is at most this wide.
        max_steps: at most this many distinct plans measured (the first, at `max_budget`, included).
        max_budget: the largest budget tried; measured first to tell whether the target is reachable.
        confirm: a plan meets the target only if a second measurement agrees.
        log: called with every `Step` as it is made (progress output).
    Returns:
        A `SearchResult`: `met`, the chosen budget and its candidate's payload (`choice`), the
        measured ratio and every step. When the target cannot be met even at `max_budget`,
        `met` is False and `choice` is that (fastest) candidate.
    Raises:
        OnnxPruneError: a target outside (0, 1).
    """
    if not 0.0 < target < 1.0:
        raise OnnxPruneError(f"--target-latency must be in (0, 1) (a latency ratio; 0.5 = twice as fast), got {target}")
    steps: list[Step] = []
    cache: dict[Hashable, Step] = {}
    count = [0]

    def timed(payload) -> Measurement:
        count[0] += 1
        m = measure(payload)
        return m if isinstance(m, Measurement) else Measurement(float(m))

    def evaluate(budget: float) -> tuple[Candidate, Step]:
        cand = propose(budget)
        if cand.key in cache:
            step = Step(**{**asdict(cache[cand.key]), "budget": budget, "cached": True})
        else:
            runs = [timed(cand.payload)]
            if confirm and runs[0].ratio <= target:
                runs.append(timed(cand.payload))
            worst = max(runs, key=lambda m: m.ratio)
            step = Step(budget, cand.macs_removed, worst.ratio, worst.ratio <= target,
                        tuple(m.ratio for m in runs), False, worst.original_ms, worst.pruned_ms)
            cache[cand.key] = step
        steps.append(step)
        if log:
            log(step)
        return cand, step

    cand, step = evaluate(max_budget)
    if not step.meets:
        return SearchResult(target, False, max_budget, cand.macs_removed, step.latency_ratio, cand.payload, steps,
                            tol, count[0])
    best = (max_budget, cand, step)
    lo, hi = 0.0, max_budget      # lo: known to miss (nothing removed runs at ratio 1); hi: known to meet
    while hi - lo > tol and len(cache) < max_steps:
        mid = (lo + hi) / 2
        cand, step = evaluate(mid)
        if step.meets:
            hi, best = mid, (mid, cand, step)
        else:
            lo = mid
    budget, cand, step = best
    return SearchResult(target, True, budget, cand.macs_removed, step.latency_ratio, cand.payload, steps, tol,
                        count[0])


def check_provider(provider: str) -> None:
    """Fail early, in one line, when `provider` cannot be used to measure a latency target.

    Raises:
        OnnxPruneError: an unknown provider, or one this onnxruntime does not offer (for CUDA:
            "CUDA provider not available: install onnxruntime-gpu").
    """
    import onnxruntime as ort

    from ..runtime.providers import provider as provider_record

    record = provider_record(provider, "--target-latency cannot be measured: ")
    if record.ort_name not in ort.get_available_providers():
        raise OnnxPruneError(f"--target-latency cannot be measured: {record.display} provider not available: "
                             f"{record.hint}")


class Meter:
    """Times candidates against one original with `onnxprune.runtime.bench` (alternating runs, medians).

    Args:
        original: the original model (a path, so onnxruntime reads external data itself, or a ModelProto).
        provider: "cpu", "cuda" or "tensorrt".
        batch: the batch size timed (None: the batch of `input_shapes`, else 1; a model with a
            static batch runs at its own).
        threads: intra-op threads (0: onnxruntime's default, as in `onnxprune bench`).
        input_shapes: {input name: shape} for dynamic dims other than the batch.
        warmup, repeat: untimed and timed runs per model and measurement.
        log: called with bench's notes (static batch, ...), each note once.
    """

    def __init__(self, original, provider: str = "cpu", batch: int | None = None, threads: int = 0,
                 input_shapes: dict | None = None, warmup: int = WARMUP, repeat: int = REPEAT,
                 log: Callable[[str], None] | None = None):
        from ..runtime.bench import BenchConfig

        self.original = original
        self.config = BenchConfig(providers=(provider,), batches=(batch,) if batch else (), threads=threads,
                                  warmup=warmup, repeat=repeat, input_shapes=dict(input_shapes or {}))
        self._log = log
        self._seen: set[str] = set()
        self.batch = batch   # the batch actually timed, once measured

    def __call__(self, model) -> Measurement:
        """Latency ratio of `model` (path or ModelProto) against the original."""
        from ..runtime.bench import bench

        result = bench([self.original, model], self.config, labels=["original", "candidate"], log=self._note)
        by_model = {t.model: t for t in result.timings}
        if "original" not in by_model or "candidate" not in by_model or len(result.timings) != 2:
            raise OnnxPruneError("--target-latency: the original and the pruned model did not run at the same batch")
        orig, pruned = by_model["original"], by_model["candidate"]
        self.batch = orig.batch
        paired = [p / o for o, p in zip(orig.times_ms, pruned.times_ms) if o > 0]
        return Measurement(statistics.median(paired) if paired else 1.0, orig.median_ms, pruned.median_ms)

    def _note(self, msg: str) -> None:
        if self._log and msg not in self._seen:
            self._seen.add(msg)
            self._log(msg)

    def describe(self) -> dict:
        """Provider, batch, threads and run counts, for the report."""
        c = self.config
        return {"provider": c.providers[0], "batch": self.batch, "threads": c.threads, "warmup": c.warmup,
                "repeat": c.repeat}


def check_options(target, target_macs, plan, provider, batch, threads) -> None:
    """Reject a latency target that cannot be searched before any expensive work (a usage error;
    a provider onnxruntime does not offer is a problem of the machine: `check_provider`)."""
    if not 0.0 < target < 1.0:
        raise UsageError(f"--target-latency must be in (0, 1) (a latency ratio; 0.5 = twice as fast), "
                         f"got {target}")
    if target_macs is not None:
        raise UsageError("give --target-latency or --target-macs, not both")
    if plan is not None:
        raise UsageError("--target-latency searches the plan: it cannot be combined with --plan")
    if (batch is not None and batch < 1) or threads < 0:
        raise UsageError(f"--latency-batch must be >= 1 and --latency-threads >= 0, got {batch} and {threads}")
    check_provider(provider)


def select_for_latency(an, allocator, target: float, meter) -> tuple:
    """The plan with the smallest MAC budget whose pruned model meets the latency target."""
    def propose(budget):
        plan, skipped, info = allocator.plan_for(budget)
        removed = np.sort(plan.removed_units(an))
        return Candidate(tuple(removed.tolist()), info["macs_removed"], (plan, skipped, info, removed))

    def measure(payload):
        return meter(rewrite.apply(an, payload[3]))

    t = time.perf_counter()
    result = search(target, propose, measure)
    where = meter.describe()
    if not result.met:
        raise OnnxPruneError(
            f"--target-latency {target} cannot be reached on {where['provider']} at batch {where['batch']}: with "
            f"{result.macs_removed:.1%} of the MACs removed (the most the allocator and limits allow) the pruned model "
            f"still takes {result.latency_ratio:.2f}x the original's latency; try a looser target")
    plan, skipped, info, _ = result.choice
    info = {**info, "latency_search": {**where, **result.to_dict(), "seconds": round(time.perf_counter() - t, 3)}}
    return plan, skipped, info
