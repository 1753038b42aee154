"""Rendering at the edge: rich tables for people, JSON for pipelines. Nothing else prints."""

from __future__ import annotations

import json
import os

from rich.console import Console
from rich import box
from rich.table import Table


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.3g}"


def _ratio(after: float, before: float) -> str:
    return f"{after / before:.3f}" if before else "-"


def render_prune(report: dict, console: Console, show_groups: bool = False) -> None:
    """What a prune did, for a terminal of 80 columns or more: the before/after table, then one
    labelled block per stage, each naming the data and the loss behind its figures."""
    console.print(f"[bold]onnxprune[/bold] {os.path.basename(report['model'])}: {settings(report)}")
    console.print(_summary_table(report))
    for line in _verification_lines(report):
        console.print(line, markup=False)
    folded = report.get("folded")
    if folded:
        console.print(f"constant folding: {folded['nodes']} node(s) over constants only ("
                      + ", ".join(f"{k} {v}" for k, v in folded["ops"].items()) + f"): {folded['check']}"
                      + ("" if folded["kept"] else "; not folded"), markup=False)
    search = report.get("latency_search")
    if search:
        console.print(latency_summary(search), markup=False)
    if show_groups:
        render_groups(report["groups"], console)
    _print_skipped(report.get("skipped", []), console)
    for line in _scoring_lines(report):
        console.print(line, markup=False)
    _print_recovery(report, console)
    passes = report.get("forward_passes") or {}
    if passes.get("total"):
        console.print(f"forward passes: {passes['total']:g} image passes through the whole network ("
                      + ", ".join(f"{k} {v:g}" for k, v in passes.items() if k != "total") + ")", markup=False)
    holdout = report.get("holdout")
    if holdout:
        render_metrics(holdout, console, f"held-out calibration images ({report['calibration']['holdout']}), "
                                         "pruned model against the original")
    for note in report.get("notes", []):
        console.print(f"note: {note}", markup=False)


def settings(report: dict) -> str:
    """'criterion blend, target: 50% of the MACs removed, allocation sensitivity': how much was
    asked and how it was chosen (the first line of the terminal output and of the HTML page)."""
    alloc = report.get("allocation") or {}
    if report.get("target_latency") is not None:
        amount = f"target latency {report['target_latency']}x of the original"
    elif report.get("target_macs") is not None:
        amount = f"target: {report['target_macs']:.0%} of the MACs removed"
    else:
        amount = f"ratio {report.get('ratio')} of the channels of every group"
    return f"criterion {report.get('criterion')}, {amount}, allocation {alloc.get('method', '-')}"


def _summary_table(report: dict) -> Table:
    """Parameters, MACs, file size, Conv nodes and channel groups, before and after."""
    b, a = report["before"], report["after"]
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False)
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("kept", justify="right")
    for key, label in (("params", "parameters"), ("macs", "MACs (batch 1)"), ("bytes", "file size (bytes)"),
                       ("convs", "Conv nodes")):
        table.add_row(label, human(b[key]), human(a[key]), _ratio(a[key], b[key]))
    groups = report["groups"]
    pruned = sum(1 for g in groups if g["kept"] < g["size"])
    table.add_row("channel groups", str(len(groups)), f"{pruned} pruned", "")
    return table


def _verification_lines(report: dict) -> list[str]:
    """The verification verdict with the inputs it ran on, and the fidelity check's."""
    lines = []
    verification = report.get("verification")
    if verification:
        outs = verification.get("outputs", {})
        batch = next((o["shape"][0] for o in outs.values() if isinstance(o, dict) and o.get("shape")), None)
        ran = any(isinstance(o, dict) for o in outs.values())
        where = (f"runs in onnxruntime on {batch} random inputs" if batch else "runs in onnxruntime on random inputs"
                 ) if ran else "not run in onnxruntime"
        verdict = "valid" if verification["valid"] else "FAILED: " + "; ".join(verification.get("problems", []))
        if verification["valid"] and report.get("approximate") and not report["approximate"]["faithful"]:
            verdict = "structurally valid, but the approximation is NOT faithful (below)"
        lines.append(f"verification: {verdict} (onnx checker, the original's inputs and outputs, {where})")
        for name, out in outs.items():
            if not isinstance(out, dict):   # why an output was not compared (a custom op: not run)
                lines.append(f"  '{name}': {out}")
            elif "cosine" in out:
                lines.append(f"  '{name}' against the original on those inputs: cosine {out['cosine']:.4f}, "
                             f"max |diff| {out['max_abs_diff']:.3g}")
            elif "pruned_shape" in out:   # data-dependent dims (detections): the counts, no fidelity
                lines.append(f"  output '{name}' (data-dependent dims): {out['shape']} -> {out['pruned_shape']}")
    fidelity = report.get("fidelity")
    if fidelity and fidelity.get("outputs"):
        lines.append("fidelity: " + fidelity_cell(fidelity, markup=False))
    lines.extend(_approximate_lines(report.get("approximate")))
    return lines


def _approximate_lines(approx: dict | None) -> list[str]:
    """The groups pruned approximately (--approximate) and the rewrite's fidelity to the masked original."""
    if not approx:
        return []
    names = ", ".join(g["name"] for g in approx["groups"][:6]) + (" ..." if len(approx["groups"]) > 6 else "")
    worst = min(approx["outputs"].values(), key=lambda o: o["cosine"], default=None)
    figure = f"cosine {worst['cosine']:.4f}, max relative diff {worst['max_rel_diff']:.3g}" if worst else "no float output"
    verdict = "faithful" if approx["faithful"] else "NOT faithful"
    return [f"approximate: {len(approx['groups'])} group(s) pruned through ops whose result changes with the channel "
            f"count ({names}); against the masked original on {approx['samples']} random inputs: {figure} "
            f"({verdict}, threshold {approx['threshold']:g})"]


def _print_skipped(skipped: list[dict], console: Console) -> None:
    if not skipped:
        return
    console.print(f"{len(skipped)} group(s) left as they are:")
    for s in skipped[:12]:
        console.print(f"  - {s['name']}: {s['reason']}", markup=False)
    if len(skipped) > 12:
        console.print(f"  ... {len(skipped) - 12} more (--show groups or --report for all)")


def _scoring_lines(report: dict) -> list[str]:
    """The blend's clusters and weights, and the order check's candidates with their losses."""
    lines = []
    blend = (report.get("scoring") or {}).get("blend")
    if blend:
        clusters = " ".join("[" + ", ".join(c) + "]" for c in blend["clusters"])
        lines.append(f"blend (criteria combined): {len(blend['pool'])} criteria in {len(blend['clusters'])} "
                     f"clusters of similar rankings {clusters}; weights "
                     + ", ".join(f"{k} {v:.2f}" for k, v in blend["weights"].items()))
    check = (report.get("allocation") or {}).get("order_check")
    if check:
        loss = (report.get("losses") or {}).get("choice", "held-out loss")
        after = "after cheap recovery" if check.get("recovery") != "none" else "no recovery"
        lines.append(f"order check (which ranking prunes): held-out {loss}, {after}, lower is better:")
        lines.append("  " + ", ".join(f"{k} {v:.4g}" for k, v in check["losses"].items())
                     + f"; pruned by {check['chosen']}"
                     + (" at its own counts" if check.get("own_counts") else "")
                     + (", variety off" if check.get("variety") == "off" and any(
                         k.endswith(" with variety") for k in check["losses"]) else ""))
    return lines


def _print_recovery(report: dict, console: Console) -> None:
    """The recovery steps in order, each with the loss before and after it and whether it was kept;
    data-free steps (judged on synthetic inputs) and data steps (held-out images) apart."""
    steps = report.get("recovery") or []
    judged = [s for s in steps if "loss_before" in s]
    for step in steps:
        if "loss_before" not in step:
            console.print(f"recovery {step['step']}: " + "; ".join(step.get("layers", [])[:3]), markup=False)
    if not judged:
        return
    by_inputs = {}
    for step in judged:
        by_inputs.setdefault(step.get("inputs"), []).append(step)
    fidelity = (report.get("losses") or {}).get("fidelity", "fidelity loss")
    for inputs, group in by_inputs.items():
        what = (f"relative output error on {inputs} inputs" if inputs else f"held-out {fidelity}")
        console.print(f"recovery (each step kept only if it lowers the {what}):", markup=False)
        table = Table(box=None, show_header=False, padding=(0, 1), pad_edge=True)
        for _ in range(4):
            table.add_column()
        for step in group:
            table.add_row(f" {step['step']}", f"{step['loss_before']:.4g} -> {step['loss_after']:.4g}",
                          "kept" if step["kept"] else "rejected", _step_detail(step))
        console.print(table)


def _step_detail(step: dict) -> str:
    if step["step"] != "finetune":
        return ""
    return ((f"best epoch {step['best_epoch']} of {step['epochs_run']}" if step["kept"]
             else f"{step['why']}; {step['epochs_run']} epochs") + f", {step['seconds']:g} s")


def fidelity_cell(fidelity: dict, markup: bool = True) -> str:
    """'collapsed' or 'no collapse', with the worst output's cosine and agreement on the fidelity inputs."""
    outs = fidelity["outputs"]
    name = min(outs, key=lambda n: (not outs[n]["collapsed"], outs[n]["cosine"]))
    e = outs[name]
    what = f"'{name}' cosine {e['cosine']:.2f}" + (
        f", top-1 agreement {e['top1_agreement']:.2f} (chance {e['chance']:.2f})" if "top1_agreement" in e else "")
    where = f"on {fidelity['samples']} {fidelity['inputs']} inputs"
    if fidelity["collapsed"]:
        return f"{'[red]collapsed[/red]' if markup else 'COLLAPSED'} {where} ({what})"
    return f"no collapse {where} ({what})"


def latency_summary(search: dict) -> str:
    """One line: where it was measured, how many steps, the chosen budget and its latency ratio."""
    cached = sum(1 for s in search["steps"] if s.get("cached"))
    return (f"latency search ({search['provider']}, batch {search['batch']}): {len(search['steps'])} steps"
            + (f" ({cached} reused)" if cached else "")
            + f", MACs budget {search['budget']:.3f} -> {search['macs_removed']:.3f} removed, latency "
              f"{search['latency_ratio']:.3f}x of the original (target {search['target']}x)")


def render_groups(groups: list[dict], console: Console) -> None:
    """One row per channel group: channels before -> after, or why it is blocked."""
    table = Table(title="channel groups", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False)
    table.add_column("#", justify="right")
    longest = max((len(g["name"]) for g in groups), default=10)
    table.add_column("group (first producer)", overflow="fold", min_width=min(longest, max(20, console.width - 46)))
    table.add_column("members", justify="right")
    table.add_column("channels", justify="right")
    table.add_column("status", overflow="fold")
    for g in groups:
        kept = g.get("kept", g["size"])
        if not g["prunable"]:
            status = "blocked: " + "; ".join(g["reasons"][:2])
        elif g["blocked"]:
            status = f"{g['blocked']} channel(s) blocked: " + "; ".join(g["reasons"][:1])
        else:
            status = "prunable"
        chans = f"{g['size']} -> {kept}" if "kept" in g else str(g["size"])
        table.add_row(str(g["id"]), g["name"], str(len(g["sources"])), chans, status)
    console.print(table)


def render_analysis(groups: list[dict], console: Console) -> None:
    """The groups of `onnxprune analyse` and a one-line summary."""
    render_groups(groups, console)
    prunable = [g for g in groups if g["prunable"]]
    console.print(f"{len(groups)} groups, {len(prunable)} prunable, "
                  f"{sum(g['size'] - g['blocked'] for g in prunable)} prunable channels")


def write_json(data: dict, path: str) -> None:
    """Write JSON atomically (io.write_text), with the mode the umask gives."""
    from ..io import write_text

    write_text(json.dumps(data, indent=1, default=json_default), path)


def json_default(obj):
    """What json.dump writes for numpy values and config objects."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


METRIC_LABELS = (("accuracy_original", "accuracy of the original"), ("accuracy", "accuracy of the pruned model"),
                 ("top1_agreement", "top-1 agreement with the original"), ("top5_agreement", "top-5 agreement"),
                 ("kl", "KL(original || pruned)"), ("cosine", "cosine"), ("rel_sq_error", "relative squared error"))


def render_metrics(outputs: dict, console: Console, title: str) -> None:
    """Per-output fidelity metrics, one row per metric and one column per output (a table of a few
    columns fits 80 columns whatever the names; more outputs continue in further tables)."""
    console.print(title, markup=False)
    present = [(key, label) for key, label in METRIC_LABELS if any(key in m for m in outputs.values())]
    shapes = any("pruned_shape" in m for m in outputs.values())   # data-dependent dims (detections)
    names = list(outputs)
    label_width = max([len("shape -> pruned")] + [len(label) for _, label in present]) + 2
    chunks, width = [[]], label_width
    for name in names:      # as many outputs per table as fit beside the labels, at least one
        need = max(len(name), 10) + 2
        if chunks[-1] and width + need > console.width:
            chunks.append([])
            width = label_width
        chunks[-1].append(name)
        width += need
    for chunk in chunks:
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False)
        table.add_column("output", no_wrap=True)
        for name in chunk:
            table.add_column(name, justify="right", overflow="fold")
        for key, label in present:
            table.add_row(label, *[f"{outputs[n][key]:.4f}" if key in outputs[n] else "" for n in chunk])
        if shapes:
            table.add_row("shape -> pruned", *[f"{outputs[n]['shape']} -> {outputs[n]['pruned_shape']}"
                                              if "pruned_shape" in outputs[n] else "" for n in chunk])
        console.print(table)


def render_eval(metrics: dict, console: Console) -> None:
    """The table of `onnxprune eval`."""
    from ..verification.evaluate import warnings_for

    render_metrics(metrics["outputs"], console, f"{os.path.basename(metrics['pruned'])} vs "
                   f"{os.path.basename(metrics['original'])} on {metrics['samples']} samples")
    for note in warnings_for(metrics["outputs"], samples="samples"):
        console.print(f"note: {note}", markup=False)


def render_sweep(rows: list[dict], console: Console) -> None:
    """The table of `onnxprune sweep`: one row per ratio."""
    cols = [("ratio", "ratio", "{:.2f}"), ("macs_kept", "MACs kept", "{:.3f}"), ("params_kept", "params kept", "{:.3f}"),
            ("latency_ms", "latency ms", "{:.3f}"), ("speedup", "speedup", "{:.2f}x"),
            ("accuracy", "accuracy", "{:.4f}"), ("top1_agreement", "top-1 agree", "{:.4f}"), ("kl", "KL", "{:.4f}")]
    present = [c for c in cols if any(r.get(c[0]) is not None for r in rows)]
    table = Table(title="ratio sweep", title_justify="left")
    for _, label, _ in present:
        table.add_column(label, justify="right")
    for r in rows:
        table.add_row(*[fmt.format(r[k]) if r.get(k) is not None else "" for k, _, fmt in present])
    console.print(table)
