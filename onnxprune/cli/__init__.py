"""Command line: the click group (`main`), its commands, and `bench` registered on it.

The console script `onnxprune` is `onnxprune.cli:main`. Heavy modules are imported inside the
commands so `--help` is instant.
"""

from __future__ import annotations

from .bench import bench
from .main import CRITERIA, main, prune  # noqa: F401  (the package's API)

main.add_command(bench)
