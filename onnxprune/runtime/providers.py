"""The execution providers, as one table, and what depends on the provider: the `round_to`
default when pruning for speed.

`PROVIDERS` is the one place a provider is described: its CLI name, onnxruntime's name, the
provider list a session gets, the hint printed when it is missing, and its display name. bench,
the latency meter and the CLI choices read it.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import OnnxPruneError


class Provider(NamedTuple):
    """One execution provider: everything the program needs to know about it."""

    name: str                      # the CLI name (--provider, --latency-provider)
    ort_name: str                  # onnxruntime's name
    session: tuple[str, ...]       # the providers a session gets, in order (fallbacks last)
    hint: str                      # what to install when onnxruntime does not offer it
    display: str                   # how messages and tables name it
    latency_target: bool           # offered by --latency-provider (a latency target can be measured on it)
    device: str | None             # where bench keeps inputs and outputs (io binding); None: host memory


PROVIDER_TABLE = (
    Provider("cpu", "CPUExecutionProvider", ("CPUExecutionProvider",), "", "CPU", True, None),
    Provider("cuda", "CUDAExecutionProvider", ("CUDAExecutionProvider", "CPUExecutionProvider"),
             "install onnxruntime-gpu", "CUDA", True, "cuda"),
    Provider("tensorrt", "TensorrtExecutionProvider",
             ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
             "install onnxruntime-gpu and the TensorRT libraries", "TensorRT", False, "cuda"),
)
PROVIDERS = {p.name: p for p in PROVIDER_TABLE}
BENCH_CHOICES = tuple(p.name for p in PROVIDER_TABLE)
LATENCY_CHOICES = tuple(p.name for p in PROVIDER_TABLE if p.latency_target)


def provider(name: str, what: str = "") -> Provider:
    """The table's record for `name`.

    Raises:
        OnnxPruneError: an unknown name (`what` prefixes the message, e.g. "--target-latency cannot be measured: ").
    """
    if name not in PROVIDERS:
        raise OnnxPruneError(f"{what}unknown provider '{name}': choose from {', '.join(PROVIDERS)}")
    return PROVIDERS[name]


SPEED_ROUND_TO = 8        # the --round-to default when pruning for speed (resolve_round_to) ...
SPEED_ROUND_TO_AVX512 = 16   # ... on the CPU provider of a CPU with AVX-512 (onnxruntime's NCHWc blocks of 16)


def resolve_round_to(round_to: int | None, for_speed: bool, provider: str = "cpu") -> tuple[int, str]:
    """The `round_to` in effect and where it comes from: as given, else, when pruning for speed (a
    latency target, or the result is benchmarked), 16 on the CPU provider of a CPU with AVX-512
    and 8 elsewhere, else 1.

    Why: onnxruntime's CPU provider runs convs in a blocked NCHWc layout whose block is 8 channels
    with AVX2 and 16 with AVX-512; convs whose channel counts are not multiples of the block fall
    off those kernels. MobileNetV2 at ratio 0.3 kept 52% of the MACs with odd widths and was no
    faster (0.89-0.98x), 1.25-1.5x faster with 8; on this AVX-512 machine 16 beat 8 outright at
    ratio 0.7 (MobileNetV2 12.1 vs 13.6 ms, ResNet-18 45.5 vs 47.6 ms at batch 8, one thread)
    while keeping more channels (docs/speed.md). GPUs: multiples of 8 suit fp16 tensor cores.
    When speed is not the goal, exact ratios (1) are the better default.
    """
    if round_to is not None:
        if round_to < 1:
            raise OnnxPruneError(f"--round-to must be at least 1, got {round_to}")
        return int(round_to), "given"
    if not for_speed:
        return 1, "default"
    if provider == "cpu" and cpu_has_avx512():
        return SPEED_ROUND_TO_AVX512, "default when pruning for speed on an AVX-512 CPU"
    return SPEED_ROUND_TO, "default when pruning for speed"


def cpu_has_avx512() -> bool:
    """Whether this CPU has AVX-512F (read from /proc/cpuinfo; False where that file is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False
