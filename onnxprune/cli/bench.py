"""`onnxprune bench`: a thin click layer over `onnxprune.runtime.bench.bench`, and its rich rendering.

Registered on the main group in `onnxprune.cli`. Heavy modules (onnx, onnxruntime, rich) are imported
inside the command so `--help` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..runtime.providers import BENCH_CHOICES
from .common import parse_input_shapes, run_guarded


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=Path))
@click.option("--provider", "providers", multiple=True, default=("cpu",), show_default=True,
              type=click.Choice(BENCH_CHOICES, case_sensitive=False),
              help="Execution provider (repeatable); unavailable ones are skipped with a note.")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(min=1),
              help="Batch size (repeatable) [default: the batch of --input-shape, else 1]. "
                   "Models with a static batch run at their own only.")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="Intra-op threads [default: onnxruntime's].")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed runs per model.")
@click.option("--repeat", type=click.IntRange(min=1), default=30, show_default=True, help="Timed runs per model.")
@click.option("--input-shape", multiple=True, metavar="NAME:DIMS", help="Fix dynamic input dims, e.g. x:1,3,224,224.")
@click.option("--profile", "profile_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write onnxruntime per-node profiles to DIR and print the 10 slowest nodes per model.")
@click.option("--spin", is_flag=True,
              help="Let idle intra-op threads spin (onnxruntime's default; off here so two models timed in turn "
                   "do not steal each other's cores).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (schema_version 1).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def bench(models, providers, batches, threads, warmup, repeat, input_shape, profile_dir, spin, seed, as_json,
          debug):
    """Measure the latency of MODELS side by side (the first is the reference).

    \b
    onnxprune bench model.onnx pruned.onnx --provider cpu --provider cuda --batch 1 --batch 32

    Runs alternate between the models (A B A B ...) after a warm-up; each model gets median, p90
    and min latency, images/s, speedup over the first model, MAC ratio and efficiency
    (speedup / MAC speedup).
    """
    shapes = parse_input_shapes(input_shape)

    def work():
        import json

        from rich.console import Console

        from ..runtime.bench import BenchConfig, bench as run_bench

        config = BenchConfig(providers=tuple(p.lower() for p in providers), batches=tuple(batches), threads=threads,
                             warmup=warmup, repeat=repeat, input_shapes=shapes,
                             profile_dir=str(profile_dir) if profile_dir else None, seed=seed,
                             spin=spin)
        result = run_bench([str(m) for m in models], config, log=lambda msg: click.echo(f"note: {msg}", err=True))
        if as_json:
            click.echo(json.dumps(result.to_dict(), indent=1))
        else:
            render_bench(result, Console())

    run_guarded(debug, work)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render_bench(result, console) -> None:
    """Rich tables: one per provider and batch, then the profiles' top nodes."""
    from rich import box
    from rich.table import Table

    from ..report.render import human

    threads = result.config.threads or "default"
    models = Table(title="models (MACs per sample; ratios below are against the first)", title_justify="left",
                   box=box.SIMPLE_HEAD)
    for col in ("model", "MACs", "params", "batch"):
        models.add_column(col, justify="left" if col == "model" else "right", overflow="fold")
    for m in result.models:
        models.add_row(m.label, human(m.macs), human(m.params), "dynamic" if m.static_batch is None
                       else f"static {m.static_batch}")
    console.print(models)
    groups: dict[tuple[str, int], list] = {}
    for t in result.timings:
        groups.setdefault((t.provider, t.batch), []).append(t)
    for (provider, batch), rows in groups.items():
        table = Table(title=f"{provider}, batch {batch}, threads {threads}: latency in ms, "
                            f"{result.config.repeat} alternating runs after {result.config.warmup} warm-up",
                      title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0))
        table.add_column("model", overflow="fold", min_width=12)
        for col in ("median", "p90", "min", "img/s", "speedup", "MAC ratio", "efficiency"):
            table.add_column(col, justify="right", no_wrap=True)
        for t in rows:
            table.add_row(t.model, f"{t.median_ms:.3f}", f"{t.p90_ms:.3f}", f"{t.min_ms:.3f}", f"{t.throughput:.1f}",
                          "-" if t.speedup is None else f"{t.speedup:.2f}x", _num(t.mac_ratio, ".3f"),
                          _num(t.efficiency, ".2f"))
        console.print(table)
    for p in result.profiles:
        table = Table(title=f"profile {p.model}  {p.provider}  batch {p.batch}: {p.total_ms:.3f} ms of node time "
                            f"per run ({p.runs} runs)  {p.file}", title_justify="left", box=box.SIMPLE_HEAD)
        for col in ("node", "op_type", "ms/run", "share"):
            table.add_column(col, justify="left" if col in ("node", "op_type") else "right")
        for row in p.top:
            table.add_row(row["node"], row["op_type"], f"{row['ms']:.3f}", f"{row['share']:.1%}")
        table.caption = "by op type (ms/run): " + ", ".join(f"{op} {ms:.3f}" for op, ms in p.by_op_type.items())
        table.caption_justify = "left"
        console.print(table)
