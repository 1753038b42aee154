"""Command line: a thin click layer over `onnxprune.prune` and friends.

Exit codes: 0 success; 1 a failure or a user error, printed as one line (no traceback unless
--debug); 2 a usage error (click). Heavy modules are imported inside the commands so `--help`
is instant.
"""

from __future__ import annotations

import difflib
import shlex
import sys
from pathlib import Path

import click

from ..errors import OnnxPruneError
from ..runtime.providers import LATENCY_CHOICES
from .common import parse_input_shapes, run_guarded

# kept in step with onnxprune.criteria.REGISTRY (a test checks it); listed here so --help needs no numpy
CRITERIA = ("l1", "l2", "fpgm", "bn_scale", "random", "mean_act", "apoz", "entropy", "hrank", "thinet", "ensemble", "functional", "interactions", "blend")


REPORT_SUFFIXES = (".json", ".html")


class SuggestChoice(click.Choice):
    """click.Choice whose usage error (exit 2, at parse time) names the close matches."""

    def convert(self, value, param, ctx):
        """The choice `value` stands for; a usage error with "did you mean ..." otherwise."""
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            typed = str(value).lower()
            close = difflib.get_close_matches(typed, [c.lower() for c in self.choices], n=3, cutoff=0.5)
            # only the matches about as close as the closest ('fastt': fast, not default)
            top = max((difflib.SequenceMatcher(None, typed, c).ratio() for c in close), default=0.0)
            close = [c for c in close if difflib.SequenceMatcher(None, typed, c).ratio() >= top - 0.15]
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            self.fail(f"'{value}' is not one of {', '.join(self.choices)}{hint}", param, ctx)


def check_report_suffix(ctx, param, value):
    """--report must end in .json or .html (a usage error at parse time, before any work)."""
    if value is not None and value.suffix.lower() not in REPORT_SUFFIXES:
        raise click.BadParameter(f"'{value}': the report is .json (data) or .html (a page); got "
                                 f"'{value.suffix or 'no suffix'}'")
    return value


def repeat_options(ctx: click.Context) -> dict:
    """What repeats this command: "command" (the arguments and the options given on the command
    line, as a shell line) and "options" (every parameter's value, defaults included, as JSON data)."""
    argv = []
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        if isinstance(p, click.Argument):
            argv.append(str(value))
            continue
        if ctx.get_parameter_source(p.name) != click.core.ParameterSource.COMMANDLINE:
            continue
        if p.is_flag:
            argv += [p.opts[0]] if value else list(p.secondary_opts[:1])
        else:
            argv += [item for v in (value if p.multiple else (value,)) for item in (p.opts[-1], str(v))]
    plain = {p.name: ([str(v) for v in ctx.params.get(p.name)] if p.multiple else
                      str(ctx.params.get(p.name)) if isinstance(ctx.params.get(p.name), Path) else ctx.params.get(p.name))
             for p in ctx.command.params}
    return {"command": shlex.join(["onnxprune", ctx.command.name, *argv]), "options": plain}


class DefaultGroup(click.Group):
    """A group whose first argument, when it is not a command, goes to the `prune` command;
    `analyze` (US spelling) is `analyse`."""

    ALIASES = {"analyze": "analyse"}

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in self.ALIASES and args[0] not in (
                "--help", "-h", "--version"):
            args = ["prune", *args]
        return super().parse_args(ctx, args)

    def get_command(self, ctx, cmd_name):
        """The command called `cmd_name`, or the one it is an alias of."""
        return super().get_command(ctx, self.ALIASES.get(cmd_name, cmd_name))


def parse_floats(value: str, flag: str) -> tuple[float, ...]:
    """'0.5' or '0.485,0.456,0.406' -> a tuple of floats."""
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"'{value}': expected a number or comma-separated numbers", param_hint=flag) from None


def parse_fraction(value: str | None, flag: str) -> float | None:
    """A number in [0, 1], or None; anything else is a usage error: one line, exit 2."""
    if value is None:
        return None
    try:
        number = float(value)
        if not 0.0 <= number <= 1.0:
            raise ValueError
    except ValueError:
        click.echo(f"error: {flag} must be a number in [0, 1], got '{value}'", err=True)
        sys.exit(2)
    return number


def finetune_options(command):
    """The fine-tuning options shared by `prune --finetune` and `finetune`."""
    options = [
        click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True,
                     help="Fine-tuning epochs over the calibration data (the best held-out epoch is kept)."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
                     help="Fine-tuning learning rate (Adam, cosine decay)."),
        click.option("--finetune-batch", type=click.IntRange(min=1), default=32, show_default=True,
                     help="Fine-tuning batch size."),
        click.option("--augment", default="default", show_default=True,
                     help="Image augmentation in fine-tuning: default (shift), none, or a list of shift,crop,flip."),
        click.option("--device", type=SuggestChoice(["cpu", "cuda"], case_sensitive=False), default="cpu",
                     show_default=True,
                     help="Where the passes run: onnxruntime's calibration, probes, order check, recovery and "
                          "verification (prune; cuda needs the [gpu] extra and a GPU) and torch's fine-tuning."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxprune")
def main():
    """Structured channel pruning for ONNX CNNs.

    \b
    onnxprune MODEL.onnx --criterion l1 --ratio 0.5 -o pruned.onnx   (same as `onnxprune prune ...`)
    onnxprune analyse MODEL.onnx   (or analyze)
    """


@main.command()
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file [default: MODEL_pruned.onnx].")
@click.option("--criterion", type=SuggestChoice(CRITERIA), metavar="NAME", default="blend", show_default=True,
              help=f"Filter importance: {', '.join(CRITERIA)}.")
@click.option("--ratio", type=float, default=0.5, show_default=True,
              help="Fraction of channels removed in each prunable group, in [0, 1).")
@click.option("--global", "global_pruning", is_flag=True, help="One threshold across groups (normalised scores).")
@click.option("--max-ratio", type=float, default=1.0, show_default=True, help="Cap on the fraction removed per group.")
@click.option("--min-channels", type=click.IntRange(min=1), default=1, show_default=True,
              help="Channels every group keeps at least.")
@click.option("--round-to", type=click.IntRange(min=1), default=None,
              help="Round kept channel counts up to a multiple of N [default with --target-latency or --bench: 16 "
                   "on the CPU provider of an AVX-512 CPU, else 8 (multiples of onnxruntime's channel blocks run "
                   "faster); else 1].")
@click.option("--ignore", multiple=True, metavar="PATTERN", help="Leave groups of matching node names alone (fnmatch).")
@click.option("--approximate", is_flag=True,
              help="Also prune channels read by ops whose result changes with the channel count (LayerNorm "
                   "over channels, a mean or max over channels, GRN): not exact; the report lists these groups "
                   "and the measured fidelity of the rewrite against the masked original.")
@click.option("--plan", "plan", type=click.Path(path_type=Path), help="Apply a saved plan instead of scoring.")
@click.option("--save-plan", type=click.Path(path_type=Path), help="Write the plan (kept channels per group) as JSON.")
@click.option("--input-shape", multiple=True, metavar="NAME:DIMS", help="Fix dynamic input dims, e.g. x:1,3,224,224.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), callback=check_report_suffix,
              help="Write the report: .json (the data) or .html (a self-contained page with charts).")
@click.option("--show", type=SuggestChoice(["groups"]), multiple=True, help="Also print the per-group table.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random criteria and test inputs.")
@click.option("--no-verify", is_flag=True, help="Skip the onnx.checker/onnxruntime verification.")
@click.option("--calib", metavar="PATH", help="Calibration data: image folder, .npy/.npz of inputs, 'random', or "
              "'synthetic' (made from the model's BN statistics; needs the [finetune] extra).")
@click.option("--calib-samples", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--mean", default="0", show_default=True, help="Image normalisation mean, one value or one per channel (a,b,c).")
@click.option("--std", default="1", show_default=True, help="Image normalisation std, one value or one per channel.")
@click.option("--scale", type=float, default=1 / 255, show_default="1/255", help="Pixel scale applied before mean/std.")
@click.option("--holdout", type=click.FloatRange(0.0, 0.9), default=0.25, show_default=True,
              help="Fraction of calibration samples held out for accept/reject decisions.")
@click.option("--recover/--no-recover", default=None,
              help="Training-free recovery [default: on; without --calib the data-free steps].")
@click.option("--min-fidelity", metavar="X",
              help="Exit 1 and write nothing when an output collapsed on the check inputs or its cosine with "
                   "the original's there is below X (0..1).")
@click.option("--allocate", type=SuggestChoice(["uniform", "global", "sensitivity", "utilization", "redundancy"]),
              help="Per-group ratios [default: sensitivity with --calib, else uniform].")
@click.option("--target-macs", type=float, help="Fraction of MACs to remove (instead of --ratio), e.g. 0.5.")
@click.option("--preset", type=SuggestChoice(["fast", "default", "thorough"]), default="default", show_default=True,
              help="fast: data-free, uniform; default: blend + sensitivity + variety + order check; thorough: + ensemble, "
                   "searched blend.")
@click.option("--variety", type=SuggestChoice(["cluster", "gate", "soft", "off"]),
              help="Keep filter variety when choosing within a group [default: cluster for blend, else off; "
                   "where the order check runs (blend, --calib, no --target-latency) it keeps the default cluster "
                   "only if that lowers the held-out loss].")
@click.option("--order-check/--no-order-check", default=None,
              help="blend with --calib: prune by whichever of the blend and its representative criteria alone "
                   "loses least on held-out data after cheap recovery [default: on, off with --preset fast].")
@click.option("--ensemble-mode", type=SuggestChoice(["group", "joint"]), default="group", show_default=True,
              help="--criterion ensemble: one mask game per group, or one over all units (scores comparable "
                   "across groups; pair with --allocate global).")
@click.option("--target-latency", type=float,
              help="Latency ratio to reach instead of --ratio/--target-macs, e.g. 0.5 = twice as fast: the smallest "
                   "MAC budget whose pruned model meets it, found by timing candidates.")
@click.option("--latency-provider", type=SuggestChoice(LATENCY_CHOICES, case_sensitive=False), default="cpu",
              show_default=True, help="Where --target-latency (and --bench) measure.")
@click.option("--latency-batch", type=click.IntRange(min=1), default=None,
              help="Batch size of the --target-latency (and --bench) measurements [default: the batch of "
                   "--input-shape, else 1].")
@click.option("--latency-threads", type=click.IntRange(min=0), default=0,
              help="Intra-op threads of the --target-latency (and --bench) measurements [default: onnxruntime's].")
@click.option("--bench", "then_bench", is_flag=True,
              help="After pruning, time the original and the pruned model (onnxprune bench on --latency-provider, "
                   "--latency-batch).")
@click.option("--plot-groups", type=click.Path(path_type=Path),
              help="Write a PNG bar chart of channels before/after per group (needs [plot]).")
@click.option("--finetune", is_flag=True,
              help="Then fine-tune against the original on the --calib data (distillation, no labels needed; "
                   "needs the [finetune] extra).")
@finetune_options
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes for the independent forward passes (sensitivity probes, order-check "
                   "candidates), each with its share of the CPU threads; the same file as with 1. With --ray: "
                   "actors [default there: one per cluster CPU, or GPU with --device cuda].")
@click.option("--ray", "ray_address", metavar="ADDRESS", default=None,
              help="Run those passes on Ray actors: a cluster address or auto (needs the [ray] extra).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def prune(model, output, criterion, ratio, global_pruning, max_ratio, min_channels, round_to, ignore, approximate, plan,
          save_plan, input_shape, report_path, show, seed, no_verify, calib, calib_samples, batch_size, mean, std,
          scale, holdout, recover, allocate, target_macs, preset, variety, target_latency, latency_provider,
          latency_batch, latency_threads, then_bench, plot_groups, ensemble_mode, order_check, finetune, epochs, lr,
          finetune_batch, augment, device, min_fidelity, workers, ray_address, debug):
    """Prune MODEL and write the smaller model."""
    shapes = parse_input_shapes(input_shape)
    min_fidelity = parse_fraction(min_fidelity, "--min-fidelity")
    mean, std = parse_floats(mean, "--mean"), parse_floats(std, "--std")

    ctx = click.get_current_context()
    ratio_given = ctx.get_parameter_source("ratio") == click.core.ParameterSource.COMMANDLINE

    def work():
        from rich.console import Console

        from .. import io, pipeline
        from ..report import render as report

        out = output or model.with_name(model.stem + "_pruned.onnx")
        io.check_output_path(out, [model])
        for extra in (report_path, save_plan, plot_groups):
            if extra is not None:
                io.check_output_path(extra, [model])
        if plot_groups is not None:
            from ..report.plots import pyplot
            pyplot()   # fail before pruning when matplotlib is missing
        result = pipeline.prune(
            str(model), criterion=criterion, ratio=ratio if ratio_given else None,   # only a typed --ratio conflicts
            global_pruning=global_pruning, max_ratio=max_ratio,
            min_channels=min_channels, round_to=round_to, ignore=ignore, approximate=approximate,
            plan=str(plan) if plan else None,
            save_plan=str(save_plan) if save_plan else None, input_shape=shapes, seed=seed, verify=not no_verify,
            calib=calib, calib_samples=calib_samples, batch_size=batch_size, mean=mean, std=std, scale=scale,
            holdout=holdout, recover=recover, allocate=allocate, target_macs=target_macs, variety=variety,
            preset=preset, target_latency=target_latency, latency_provider=latency_provider.lower(),
            latency_batch=latency_batch, latency_threads=latency_threads, for_speed=then_bench,
            ensemble_mode=ensemble_mode, order_check=order_check, finetune=finetune, epochs=epochs, lr=lr,
            finetune_batch=finetune_batch, augment=augment, device=device.lower(),
            min_fidelity=min_fidelity, workers=workers, ray=ray_address)
        console = Console()
        report.render_prune(result.report, console, show_groups="groups" in show)
        if result.verification is not None and not result.verification.valid:
            raise OnnxPruneError("pruned model is invalid, nothing written: " + "; ".join(result.verification.problems))
        written = io.save(result.model, out)
        result.report["output"] = str(written[0])
        result.report["command"] = repeat_options(ctx)
        click.echo(f"wrote {written[0]}" + (f" (+ {written[1].name})" if len(written) > 1 else ""), err=True)
        if plot_groups is not None:
            from ..report.plots import groups as plot_group_bars
            plot_group_bars(result.report["groups"], str(plot_groups),
                            title=f"{model.name}: channels per group")
            click.echo(f"wrote {plot_groups}", err=True)
        if then_bench:
            from ..runtime.bench import BenchConfig, bench as run_bench
            from .bench import render_bench

            config = BenchConfig(providers=(latency_provider.lower(),),
                                 batches=(latency_batch,) if latency_batch else (), threads=latency_threads,
                                 input_shapes=shapes, warmup=3, repeat=20)
            timing = run_bench([str(model), str(written[0])], config,
                               log=lambda msg: click.echo(f"note: {msg}", err=True))
            render_bench(timing, console)
            result.report["bench"] = timing.to_dict()
        if report_path:   # last, so that it holds the --bench timings
            if report_path.suffix.lower() == ".html":
                from ..report.html import write_html
                write_html(result.report, str(report_path))
            else:
                report.write_json(result.report, str(report_path))
            click.echo(f"wrote {report_path}", err=True)

    run_guarded(debug, work)


@main.command()
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--input-shape", multiple=True, metavar="NAME:DIMS", help="Fix dynamic input dims, e.g. x:1,3,224,224.")
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
@click.option("--approximate", is_flag=True,
              help="The groups as `prune --approximate` sees them (channel statistics do not block).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def analyse(model, input_shape, as_json, approximate, debug):
    """Print MODEL's channel groups (what could be pruned, and why not) without pruning."""
    shapes = parse_input_shapes(input_shape)

    def work():
        import json

        from rich.console import Console

        from .. import pipeline
        from ..report import render as report

        an = pipeline.analyse(str(model), shapes, approximate)
        groups = [g.to_dict() for g in an.groups]
        if as_json:
            click.echo(json.dumps({"schema_version": 1, "model": str(model), "groups": groups}, indent=1))
        else:
            report.render_analysis(groups, Console())

    run_guarded(debug, work)


@main.command(name="eval")
@click.argument("original", type=click.Path(dir_okay=True, path_type=Path))
@click.argument("pruned", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--data", required=True, metavar="PATH",
              help=".npz with inputs (and optional 'labels'), .npy, or an image folder (one sub-folder per class).")
@click.option("--samples", type=click.IntRange(min=1), default=100000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--mean", default="0", show_default=True)
@click.option("--std", default="1", show_default=True)
@click.option("--scale", type=float, default=1 / 255, show_default="1/255")
@click.option("--input-shape", multiple=True, metavar="NAME:DIMS")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def evaluate(original, pruned, data, samples, batch_size, mean, std, scale, input_shape, as_json, debug):
    """Compare PRUNED with ORIGINAL on data: accuracy, top-1/top-5 agreement, KL, cosine."""
    shapes = parse_input_shapes(input_shape)
    mean, std = parse_floats(mean, "--mean"), parse_floats(std, "--std")

    def work():
        import json

        from rich.console import Console

        from ..report import render as report
        from ..verification.evaluate import evaluate_files

        metrics = evaluate_files(str(original), str(pruned), data, samples=samples, batch_size=batch_size,
                                 mean=mean, std=std, scale=scale, input_shape=shapes)
        if as_json:
            click.echo(json.dumps(metrics, indent=1))
        else:
            report.render_eval(metrics, Console())

    run_guarded(debug, work)


@main.command()
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--ratios", default="0.1:0.8:0.1", show_default=True, help="start:stop:step or a list (0.3,0.5).")
@click.option("--criterion", type=SuggestChoice(CRITERIA), metavar="NAME", default="l1", show_default=True,
              help=f"Filter importance: {', '.join(CRITERIA)}. l1, not prune's blend: a sweep scores once and "
                   "prunes every ratio uniformly (no sensitivity allocation, no order check), where l1 is fast and "
                   "needs no calibration data; --criterion blend sweeps prune's default order.")
@click.option("--calib", metavar="PATH", help="Calibration data (enables recovery and held-out fidelity).")
@click.option("--calib-samples", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--mean", default="0", show_default=True)
@click.option("--std", default="1", show_default=True)
@click.option("--scale", type=float, default=1 / 255, show_default="1/255")
@click.option("--round-to", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--input-shape", multiple=True, metavar="NAME:DIMS")
@click.option("--no-latency", is_flag=True, help="Skip the latency measurements.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Write the trade-off curves as PNG (needs [plot]).")
@click.option("--plot-groups", type=click.Path(path_type=Path),
              help="Write a PNG bar chart of channels per group, one bar per ratio (needs [plot]).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the rows as JSON.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def sweep(model, ratios, criterion, calib, calib_samples, batch_size, mean, std, scale, round_to, input_shape,
          no_latency, plot_path, plot_groups, json_path, seed, debug):
    """Prune MODEL at a list of ratios (one calibration pass, one scoring) and tabulate the trade-off."""
    shapes = parse_input_shapes(input_shape)
    mean, std = parse_floats(mean, "--mean"), parse_floats(std, "--std")

    def work():
        from rich.console import Console

        from ..report import render as report
        from ..calibration.calib import CalibConfig
        from ..report.plots import groups as plot_group_bars, pyplot, tradeoff
        from ..sweep import parse_ratios, sweep as run_sweep

        if plot_path or plot_groups:
            pyplot()   # fail before the sweep when matplotlib is missing
        config = CalibConfig(calib, calib_samples, batch_size, mean, std, scale, seed=seed) if calib else None
        rows = run_sweep(str(model), parse_ratios(ratios), criterion, config, shapes, round_to, seed,
                         latency=not no_latency)
        report.render_sweep(rows, Console())
        if json_path:
            report.write_json({"schema_version": 1, "model": str(model), "criterion": criterion, "rows": rows},
                              str(json_path))
        if plot_path:
            tradeoff(rows, str(plot_path), title=f"Ratio sweep of {model.name} (criterion {criterion}, uniform ratios"
                     + (", training-free recovery)" if calib else ")"),
                     data=f"{rows.holdout} held-out calibration images" if calib else None)
            click.echo(f"wrote {plot_path}", err=True)
        if plot_groups:
            plot_group_bars(rows.groups, str(plot_groups), title=f"{model.name}: channels per group",
                            after={f"ratio {r['ratio']:.2f}": r["kept_channels"] for r in rows[1:]})
            click.echo(f"wrote {plot_groups}", err=True)

    run_guarded(debug, work)


@main.command(name="finetune")
@click.argument("original", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("pruned", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--calib", required=True, metavar="PATH",
              help="Training data: image folder, .npy/.npz of inputs (labels optional), 'random' or 'synthetic'.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file [default: PRUNED_ft.onnx].")
@click.option("--calib-samples", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Batch size of the held-out passes.")
@click.option("--mean", default="0", show_default=True)
@click.option("--std", default="1", show_default=True)
@click.option("--scale", type=float, default=1 / 255, show_default="1/255")
@click.option("--holdout", type=click.FloatRange(0.05, 0.9), default=0.25, show_default=True,
              help="Fraction of the samples kept apart to pick the best epoch and accept the result.")
@click.option("--input-shape", multiple=True, metavar="NAME:DIMS")
@finetune_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write the fine-tuning entry as JSON.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def finetune_command(original, pruned, calib, output, calib_samples, batch_size, mean, std, scale, holdout,
                     input_shape, epochs, lr, finetune_batch, augment, device, seed, report_path, debug):
    """Fine-tune PRUNED (pruned earlier, or from a plan) against ORIGINAL and write the result."""
    shapes = parse_input_shapes(input_shape)
    mean, std = parse_floats(mean, "--mean"), parse_floats(std, "--std")

    def work():
        from .. import io
        from ..report import render as report
        from ..finetuning import FinetuneConfig, check_ready, finetune

        check_ready(FinetuneConfig(epochs=epochs, lr=lr, batch_size=finetune_batch, augment=augment, device=device))
        out = output or pruned.with_name(pruned.stem + "_ft.onnx")
        io.check_output_path(out, [original, pruned])
        if report_path is not None:
            io.check_output_path(report_path, [original, pruned])
        result = finetune(str(original), str(pruned), calib, epochs=epochs, lr=lr, finetune_batch=finetune_batch,
                          augment=augment, device=device, seed=seed, calib_samples=calib_samples,
                          batch_size=batch_size, mean=mean, std=std, scale=scale, holdout=holdout,
                          input_shape=shapes)
        step = result.step
        click.echo(f"fine-tuning: held-out loss {step['loss_before']:.4g} -> {step['loss_after']:.4g}, best epoch "
                   f"{step['best_epoch']} of {step['epochs_run']}, {step['seconds']:g} s: "
                   f"{'kept' if step['kept'] else 'not kept'} ({step['why']})")
        written = io.save(result.model, out)
        if report_path:
            report.write_json({"schema_version": 1, "original": str(original), "pruned": str(pruned),
                               "output": str(written[0]), "finetune": step}, str(report_path))
        click.echo(f"wrote {written[0]}" + (" (the input's weights: fine-tuning did not help)" if not step["kept"]
                                            else ""), err=True)

    run_guarded(debug, work)


if __name__ == "__main__":
    main()
