"""One frozen `PruneConfig` for a pruning run, built from API keywords or CLI flags.

A config is made of small parts (scoring, budget, selection, calibration, recovery, latency,
verification, runtime), each a frozen dataclass whose fields are `prune`'s keywords of the same name.
`PRESETS` is the one table of what each preset changes; `resolved()` applies it. `validate()`
checks every option and every incompatible pair before any file is read, with the message the
CLI prints too. `to_dict()` / `from_dict()` give the plain-data form (the report's `options`):
`prune(model, config=PruneConfig.from_dict(report["options"]))` repeats a run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields

from .errors import UsageError

ALLOCATORS = ("uniform", "global", "sensitivity", "utilization", "redundancy")
DATA_ALLOCATORS = ("sensitivity", "utilization", "redundancy")
VARIETIES = ("cluster", "gate", "soft", "off")
ENSEMBLE_MODES = ("group", "joint")

# preset -> the defaults it sets for options the user left unset (None). "default" is criteria.md §10.
# blend_pool: the data-driven criteria families the blend adds to the weight criteria (with data);
# blend_search: the blend's weights are searched instead of uniform.
PRESETS = {
    "fast": {"allocate": "uniform", "variety": "off", "order_check": False, "blend_pool": ()},
    "default": {"order_check": True, "blend_pool": ("activation", "thinet")},
    "thorough": {"order_check": True, "blend_pool": ("activation", "thinet", "ensemble"), "blend_search": True},
}


@dataclass(frozen=True)
class Scoring:
    """How units are scored."""

    criterion: str = "blend"
    preset: str = "default"
    ensemble_mode: str = "group"
    seed: int = 0


@dataclass(frozen=True)
class Budget:
    """How much is removed: a channel ratio, a MAC fraction, or a latency ratio."""

    ratio: float = 0.5
    target_macs: float | None = None
    target_latency: float | None = None


@dataclass(frozen=True)
class Selection:
    """Per-group limits, allocation and the choice of units."""

    global_pruning: bool = False
    max_ratio: float = 1.0
    min_channels: int = 1
    round_to: int | None = None
    ignore: tuple[str, ...] = ()
    plan: str | None = None
    save_plan: str | None = None
    allocate: str | None = None
    variety: str | None = None
    order_check: bool | None = None
    # prune through ops whose result changes with the channel count (LayerNorm over channels, a
    # mean/max over channels, GRN): not exact, so the rewrite's fidelity is measured and reported
    approximate: bool = False


@dataclass(frozen=True)
class Calibration:
    """Calibration data and its preprocessing."""

    calib: str | None = None
    calib_samples: int = 512
    batch_size: int = 32
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0 / 255.0
    holdout: float = 0.25


@dataclass(frozen=True)
class Recovery:
    """Training-free recovery and fine-tuning."""

    recover: bool | None = None
    finetune: bool = False
    epochs: int = 20
    lr: float = 1e-3
    finetune_batch: int = 32
    augment: str | tuple = "default"
    device: str = "cpu"          # fine-tuning's torch device and onnxruntime's for every pass (runtime.sessions)


@dataclass(frozen=True)
class Latency:
    """Where latency is measured, and whether the result is meant to be faster."""

    latency_provider: str = "cpu"
    latency_batch: int | None = None
    latency_threads: int = 0
    for_speed: bool = False


@dataclass(frozen=True)
class Verification:
    """Checks of the result."""

    verify: bool = True
    min_fidelity: float | None = None


@dataclass(frozen=True)
class Runtime:
    """Where the independent forward passes run (runtime.pool): in-process, worker processes or Ray."""

    workers: int = 1             # worker processes (with `ray`: actors; 1 there means one per cluster CPU/GPU)
    ray: str | None = None       # a Ray cluster's address, or "auto"


PARTS = {"scoring": Scoring, "budget": Budget, "selection": Selection, "calibration": Calibration,
         "recovery": Recovery, "latency": Latency, "verification": Verification, "runtime": Runtime}
TUPLES = {"ignore", "mean", "std"}


@dataclass(frozen=True)
class PruneConfig:
    """Every option of a pruning run (see `onnxprune.prune` for what each keyword does)."""

    scoring: Scoring = field(default_factory=Scoring)
    budget: Budget = field(default_factory=Budget)
    selection: Selection = field(default_factory=Selection)
    calibration: Calibration = field(default_factory=Calibration)
    recovery: Recovery = field(default_factory=Recovery)
    latency: Latency = field(default_factory=Latency)
    verification: Verification = field(default_factory=Verification)
    runtime: Runtime = field(default_factory=Runtime)
    input_shape: dict | None = None

    @classmethod
    def from_keywords(cls, **kw) -> "PruneConfig":
        """A config from `prune`'s keywords (unknown ones are a TypeError, as for a function)."""
        input_shape = kw.pop("input_shape", None)
        parts = {}
        for name, part in PARTS.items():
            names = {f.name for f in fields(part)}
            given = {k: kw.pop(k) for k in list(kw) if k in names}
            for key in TUPLES & given.keys():
                given[key] = tuple(given[key])
            parts[name] = part(**given)
        if kw:
            raise TypeError(f"prune() got unexpected keyword arguments: {', '.join(sorted(kw))}")
        return cls(**parts, input_shape=dict(input_shape) if input_shape else None)

    def keywords(self) -> dict:
        """The flat keyword form: {keyword: value} for every option."""
        flat = {f.name: getattr(getattr(self, part), f.name) for part in PARTS for f in fields(PARTS[part])}
        return {**flat, "input_shape": self.input_shape}

    def replace(self, **kw) -> "PruneConfig":
        """A copy with some keywords changed."""
        return PruneConfig.from_keywords(**{**self.keywords(), **kw})

    def to_dict(self) -> dict:
        """Plain data (lists for tuples), the inverse of `from_dict`."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.keywords().items()}

    @classmethod
    def from_dict(cls, data: dict) -> "PruneConfig":
        """The config `to_dict` wrote (keys it does not know, such as a report's resolution notes, are ignored)."""
        known = {f.name for part in PARTS.values() for f in fields(part)} | {"input_shape"}
        kw = {k: v for k, v in data.items() if k in known}
        if "finetune" in kw:     # a report's options hold the fine-tuning config in effect (or None)
            kw["finetune"] = bool(kw["finetune"])
        if isinstance(kw.get("augment"), list):
            kw["augment"] = tuple(kw["augment"])
        return cls.from_keywords(**kw)

    def preset_value(self, key: str, default=None):
        """What the preset says for `key` (None where it says nothing)."""
        return PRESETS[self.scoring.preset].get(key, default)

    def resolved(self) -> "PruneConfig":
        """The config with the preset's defaults filled into the options left unset."""
        s = self.selection
        return dataclasses.replace(self, selection=dataclasses.replace(
            s, allocate=s.allocate or self.preset_value("allocate"), variety=s.variety or self.preset_value("variety"),
            order_check=self.preset_value("order_check") if s.order_check is None else s.order_check))

    def validate(self) -> "PruneConfig":
        """Check every option and pair of options without reading any file; returns self.

        Raises:
            UsageError (an OnnxPruneError): the first problem found, in the words the CLI prints.
        """
        for check in (_check_scoring, _check_budget, _check_selection, _check_verification, _check_runtime):
            check(self)
        return self


def check_ratio_given(config: PruneConfig) -> None:
    """An explicit ratio conflicts with any other way of saying how much is removed (the ratio has
    a default, so only a ratio the user gave is checked: the API's `ratio=` or the CLI's --ratio)."""
    b = config.budget
    other = next((flag for flag, value in (("--target-macs", b.target_macs), ("--target-latency", b.target_latency),
                                           ("--plan", config.selection.plan)) if value is not None), None)
    if other:
        raise UsageError(f"give --ratio or {other}, not both ({other} decides how much is removed)")


def _fail_unless(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def _check_scoring(c: PruneConfig) -> None:
    from . import criteria     # the registry: importing it costs numpy, not I/O

    _fail_unless(c.scoring.preset in PRESETS, f"unknown preset '{c.scoring.preset}'; choose fast, default or thorough")
    if c.selection.plan is not None:
        return
    name = c.scoring.criterion
    _fail_unless(name in criteria.names(), f"unknown criterion '{name}'; choose from {', '.join(criteria.names())}")
    _fail_unless(c.scoring.ensemble_mode in ENSEMBLE_MODES,
                 f"unknown ensemble mode '{c.scoring.ensemble_mode}'; choose group or joint")


def _check_budget(c: PruneConfig) -> None:
    b = c.budget
    if c.selection.plan is None and b.target_macs is None and b.target_latency is None:
        _fail_unless(0.0 <= b.ratio < 1.0 and not math.isnan(b.ratio), f"ratio must be in [0, 1), got {b.ratio}")
    if c.selection.plan is None and b.target_latency is None and b.target_macs is not None:
        _fail_unless(0.0 < b.target_macs < 1.0, f"--target-macs must be in (0, 1), got {b.target_macs}")


def _check_selection(c: PruneConfig) -> None:
    s = c.resolved().selection
    if c.selection.plan is not None:
        return
    if s.variety is not None and s.variety != "off":
        _fail_unless(s.variety in VARIETIES, f"unknown --variety '{s.variety}'; choose cluster, gate, soft or off")
    method = s.allocate or ("global" if s.global_pruning else "sensitivity" if c.calibration.calib else "uniform")
    if method == "sensitivity" and not c.calibration.calib:
        raise UsageError("--allocate sensitivity needs calibration data: give --calib PATH")
    _fail_unless(method in ALLOCATORS, f"unknown allocator '{method}'; choose uniform, global, sensitivity, "
                                       f"utilization or redundancy")
    _fail_unless(method not in DATA_ALLOCATORS or bool(c.calibration.calib),
                 f"--allocate {method} needs calibration data: give --calib PATH")


def _check_verification(c: PruneConfig) -> None:
    m = c.verification.min_fidelity
    _fail_unless(m is None or 0.0 <= m <= 1.0, f"--min-fidelity must be in [0, 1], got {m}")


def _check_runtime(c: PruneConfig) -> None:
    r = c.runtime
    _fail_unless(str(c.recovery.device).lower() in ("cpu", "cuda"),
                 f"unknown device '{c.recovery.device}'; choose cpu or cuda")
    _fail_unless(isinstance(r.workers, int) and not isinstance(r.workers, bool) and r.workers >= 1,
                 f"--workers must be a whole number of at least 1, got {r.workers!r}")
    _fail_unless(r.ray is None or (isinstance(r.ray, str) and r.ray.strip() != ""),
                 "--ray needs a cluster address (host:port, ray://host:port) or auto")
