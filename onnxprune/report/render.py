"""Rendering at the edge: rich tables for people, JSON for pipelines. Nothing else prints."""

from __future__ import annotations

import json
import os
import tempfile

from rich.console import Console
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
    """The before/after summary (and the per-group table when asked)."""
    b, a = report["before"], report["after"]
    alloc = report.get("allocation") or {}
    how = f"ratio={report['ratio']}" if report.get("target_macs") is None else f"target MACs removed={report['target_macs']}"
    if report.get("target_latency") is not None:
        how = f"target latency={report['target_latency']}x"
    table = Table(title=f"onnxprune: {os.path.basename(report['model'])}  criterion={report['criterion']}  {how}  "
                        f"allocation={alloc.get('method', '-')}", title_justify="left")
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
    verification = report.get("verification")
    if verification:
        for name, out in verification.get("outputs", {}).items():
            if "cosine" in out:
                fid = f"cos {out['cosine']:.4f}  max|diff| {out['max_abs_diff']:.3g}"
                if "top1_agreement" in out:
                    fid += f"  top-1 agree {out['top1_agreement']:.2f}"
                table.add_row(f"output '{name}'", "", fid, "")
            elif "pruned_shape" in out:   # data-dependent dims (detections): the counts, no fidelity
                table.add_row(f"output '{name}' (data-dependent dims)", str(out["shape"]), str(out["pruned_shape"]), "")
        if not verification["valid"]:
            table.add_row("[red]verification[/red]", "", "[red]FAILED[/red]", "")
        else:
            table.add_row("verification", "", "[green]valid[/green]", "")
    fidelity = report.get("fidelity")
    if fidelity and fidelity.get("outputs"):
        table.add_row("fidelity", "", fidelity_cell(fidelity), "")
    console.print(table)
    search = report.get("latency_search")
    if search:
        console.print(latency_summary(search), markup=False)
    if show_groups:
        render_groups(groups, console)
    folded = report.get("folded")
    if folded:
        console.print(f"constant folding: {folded['nodes']} node(s) over constants only ("
                      + ", ".join(f"{k} {v}" for k, v in folded["ops"].items()) + f"): {folded['check']}"
                      + ("" if folded["kept"] else "; not folded"), markup=False)
    skipped = report.get("skipped", [])
    if skipped:
        console.print(f"{len(skipped)} group(s) left as they are:")
        for s in skipped[:12]:
            console.print(f"  - {s['name']}: {s['reason']}", markup=False)
        if len(skipped) > 12:
            console.print(f"  ... {len(skipped) - 12} more (--show groups or --report for all)")
    blend = (report.get("scoring") or {}).get("blend")
    if blend:
        console.print(f"blend: pool {', '.join(blend['pool'])}; clusters "
                      + " | ".join(", ".join(c) for c in blend["clusters"])
                      + "; weights " + ", ".join(f"{k} {v:.2f}" for k, v in blend["weights"].items()), markup=False)
    check = (report.get("allocation") or {}).get("order_check")
    if check:
        after = " after cheap recovery" if check.get("recovery") != "none" else ", no recovery"
        console.print(f"order check (held-out loss{after}): "
                      + ", ".join(f"{k} {v:.4g}" for k, v in check["losses"].items())
                      + f"; pruned by {check['chosen']}"
                      + (" at its own counts" if check.get("own_counts") else "")
                      + (", variety off" if check.get("variety") == "off" and any(
                          k.endswith(" with variety") for k in check["losses"]) else ""), markup=False)
    for step in report.get("recovery") or []:
        if "loss_before" not in step:
            console.print(f"recovery {step['step']}: " + "; ".join(step.get("layers", [])[:3]), markup=False)
            continue
        detail = ""
        if step["step"] == "finetune":
            detail = (f", best epoch {step['best_epoch']} of {step['epochs_run']}" if step["kept"]
                      else f": {step['why']}; {step['epochs_run']} epochs") + f", {step['seconds']:g} s"
        where = f"error on {step['inputs']} inputs" if "inputs" in step else "held-out loss"
        console.print(f"recovery {step['step']}: {where} {step['loss_before']:.4g} -> {step['loss_after']:.4g} "
                      f"({'kept' if step['kept'] else 'rejected'}{detail})", markup=False)
    passes = report.get("forward_passes") or {}
    if passes.get("total"):
        console.print(f"forward passes: {passes['total']:g} image passes through the network ("
                      + ", ".join(f"{k} {v:g}" for k, v in passes.items() if k != "total") + ")", markup=False)
    holdout = report.get("holdout")
    if holdout:
        render_metrics(holdout, console, f"held-out split ({report['calibration']['holdout']} samples)")
    for note in report.get("notes", []):
        console.print(f"note: {note}", markup=False)


def fidelity_cell(fidelity: dict) -> str:
    """'collapsed' or 'no collapse', with the worst output's cosine and agreement on the fidelity inputs."""
    outs = fidelity["outputs"]
    name = min(outs, key=lambda n: (not outs[n]["collapsed"], outs[n]["cosine"]))
    e = outs[name]
    what = f"cos {e['cosine']:.2f}" + (f", top-1 agree {e['top1_agreement']:.2f} (chance {e['chance']:.2f})"
                                        if "top1_agreement" in e else "")
    where = f"{fidelity['samples']} {fidelity['inputs']} inputs"
    if fidelity["collapsed"]:
        return f"[red]collapsed[/red] ({what}; {where})"
    return f"no collapse ({what}; {where})"


def latency_summary(search: dict) -> str:
    """One line: where it was measured, how many steps, the chosen budget and its latency ratio."""
    cached = sum(1 for s in search["steps"] if s.get("cached"))
    return (f"latency search ({search['provider']}, batch {search['batch']}): {len(search['steps'])} steps"
            + (f" ({cached} reused)" if cached else "")
            + f", MACs budget {search['budget']:.3f} -> {search['macs_removed']:.3f} removed, latency "
              f"{search['latency_ratio']:.3f}x of the original (target {search['target']}x)")


def render_groups(groups: list[dict], console: Console) -> None:
    """One row per channel group: channels before -> after, or why it is blocked."""
    table = Table(title="channel groups", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("group (first producer)")
    table.add_column("members", justify="right")
    table.add_column("channels", justify="right")
    table.add_column("status")
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
    """Write JSON atomically (temp file + rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".report.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=_default)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def render_metrics(outputs: dict, console: Console, title: str) -> None:
    """Per-output fidelity metrics (accuracy, agreement, KL, cosine)."""
    table = Table(title=title, title_justify="left")
    cols = ["accuracy_original", "accuracy", "top1_agreement", "top5_agreement", "kl", "cosine", "rel_sq_error"]
    present = [c for c in cols if any(c in m for m in outputs.values())]
    table.add_column("output")
    for c in present:
        table.add_column(c.replace("_", " "), justify="right")
    shapes = any("pruned_shape" in m for m in outputs.values())   # data-dependent dims (detections)
    if shapes:
        table.add_column("shape -> pruned", justify="right")
    for name, m in outputs.items():
        row = [f"{m[c]:.4f}" if c in m else "" for c in present]
        if shapes:
            row.append(f"{m['shape']} -> {m['pruned_shape']}" if "pruned_shape" in m else "")
        table.add_row(name, *row)
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
