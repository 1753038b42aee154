"""The prune report as one self-contained HTML page (`onnxprune MODEL --report report.html`).

`write_html(report, path)` takes the report dict (what `--report x.json` writes) and writes a page
with no external resource and no script: the charts are inline SVG drawn here, the styles one
inline <style>. Every name from the model (node names hold `<`, `&`, quotes) goes through
`html.escape`. Each figure says what data it was measured on and, for losses, which loss and on
what scale.
"""

from __future__ import annotations

import html
import json
import math
import os

from .render import human, json_default, settings

BEFORE, AFTER, KEPT, REJECTED, CHOSEN = "#b8b8b8", "#3b75af", "#3b9a5a", "#d9822b", "#c0392b"
PALETTE = ("#3b75af", "#d9822b", "#3b9a5a", "#c0392b", "#8e6bbf", "#8c564b", "#d16fb5", "#7f7f7f",
           "#a9a93a", "#2ab0c5")
NAME_CHARS = 34   # longer names are shortened in the charts (the full name in the tooltip and the tables)

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#f6f6f4}
main{max-width:1080px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}
section{background:#fff;border:1px solid #e2e2e2;border-radius:6px;padding:10px 16px 14px;margin:14px 0}
.sub{color:#555;margin:2px 0 8px}.data{color:#555;font-size:13px;margin:4px 0 8px}
table{border-collapse:collapse;margin:6px 0;font-size:13px}th,td{padding:3px 10px;text-align:right;border-bottom:1px solid #eee}
th{background:#f2f2f2;font-weight:600}td:first-child,th:first-child{text-align:left}
td.name{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all;max-width:420px}
.ok{color:#2d7d46;font-weight:600}.bad{color:#b03a2e;font-weight:600}
pre{background:#f4f4f4;border:1px solid #e2e2e2;padding:8px;overflow-x:auto;font-size:12px;white-space:pre-wrap;
word-break:break-all}
svg{display:block;max-width:100%;height:auto}svg text{font-family:system-ui,sans-serif}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px}
.note{background:#fff8e6;border-left:3px solid #e0a800;padding:4px 8px;margin:4px 0}
"""


def write_html(report: dict, path: str) -> None:
    """Write `report` (the dict `--report x.json` writes) as a self-contained HTML page at `path`:
    atomically (io.write_text), with the mode the umask gives."""
    from ..io import write_text

    write_text(render_html(report), path)


def render_html(report: dict) -> str:
    """The page for `report`, as a string (sections only for what the run did)."""
    e = html.escape
    model = os.path.basename(str(report.get("model", "")))
    parts = [_summary(report), _groups(report), _sensitivity(report), _blend(report), _order_check(report),
             _recovery(report), _finetune(report), _holdout(report), _latency(report), _cost(report),
             _skipped_and_notes(report), _repeat(report)]
    body = "\n".join(p for p in parts if p)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>onnxprune report: {e(model)}</title><style>{STYLE}</style></head>\n"
            f"<body><main>\n<h1>onnxprune report: {e(model)}</h1>\n<p class=\"sub\">{e(_how(report))}</p>\n"
            f"{body}\n</main></body></html>\n")


# --- sections ------------------------------------------------------------------------------------

def _how(report: dict) -> str:
    return (f"{settings(report)}, preset {report.get('preset', '-')}"
            + (f"; written to {report['output']}" if report.get("output") else ""))


def _summary(report: dict) -> str:
    b, a = report["before"], report["after"]
    rows = []
    for key, label in (("params", "parameters"), ("macs", "MACs (batch 1)"), ("bytes", "file size"),
                       ("convs", "Conv nodes")):
        if key in b and key in a:
            kept = f"{a[key] / b[key]:.3f}" if b[key] else "-"
            rows.append([label, human(b[key]) + ("B" if key == "bytes" else ""),
                         human(a[key]) + ("B" if key == "bytes" else ""), kept])
    out = ["<section id=\"summary\"><h2>Before and after</h2>", _table(["", "before", "after", "kept"], rows)]
    verification = report.get("verification")
    if verification:
        ok = verification.get("valid")
        out.append(f"<p>Verification (onnx.checker, same inputs/outputs, both models run in onnxruntime): "
                   f"<span class=\"{'ok' if ok else 'bad'}\">{'valid' if ok else 'FAILED'}</span>"
                   + "".join(f"<br><span class=\"bad\">{html.escape(p)}</span>" for p in verification.get("problems", []))
                   + "</p>")
        rows = []
        for name, o in (verification.get("outputs") or {}).items():
            if "cosine" in o:
                rows.append([_name(name), f"{o['cosine']:.4f}", f"{o['max_abs_diff']:.3g}",
                             f"{o['top1_agreement']:.2f}" if "top1_agreement" in o else ""])
            elif "pruned_shape" in o:
                rows.append([_name(name), f"shape {o['shape']} -> {o['pruned_shape']}", "", ""])
        if rows:
            batch = next((o["shape"][0] for o in verification["outputs"].values() if o.get("shape")), 2)
            out.append(f"<p class=\"data\">Data: verification inputs (random, seeded, batch {batch}); a check that "
                       f"the model runs, not a measure of accuracy.</p>")
            out.append(_table(["output", "cosine", "max |diff|", "top-1 agreement"], rows, raw=True))
    fidelity = report.get("fidelity")
    if fidelity and fidelity.get("outputs"):
        rows = [[_name(n), f"{o['cosine']:.4f}",
                 f"{o['top1_agreement']:.2f} (chance {o['chance']:.2f})" if "top1_agreement" in o else "",
                 "<span class=\"bad\">collapsed</span>" if o.get("collapsed") else "no"]
                for n, o in fidelity["outputs"].items()]
        out.append(f"<p class=\"data\">Data: fidelity inputs ({fidelity['samples']} {html.escape(str(fidelity['inputs']))} "
                   f"inputs): does an output collapse to a constant?</p>")
        out.append(_table(["output", "cosine", "top-1 agreement", "collapsed"], rows, raw=True))
    out.extend(_approximate(report.get("approximate")))
    calib = report.get("calibration")
    if calib:
        out.append(f"<p class=\"data\">Calibration data: {html.escape(str(calib.get('path')))}, {calib['samples']} "
                   f"samples, {calib['holdout']} of them held out (the held-out calibration images below); "
                   f"mean {calib.get('mean')}, std {calib.get('std')}, scale {calib.get('scale'):.4g}.</p>")
    else:
        out.append("<p class=\"data\">No calibration data: data-free scoring and repair.</p>")
    out.append("</section>")
    return "\n".join(out)


def _approximate(approx: dict | None) -> list[str]:
    """The groups pruned with --approximate and the rewrite's fidelity to the masked original."""
    if not approx:
        return []
    verdict = "<span class=\"ok\">faithful</span>" if approx["faithful"] else "<span class=\"bad\">NOT faithful</span>"
    rows = [[_name(g["name"]), f"{g['removed']} of {g['size']}", html.escape("; ".join(g["why"]))]
            for g in approx["groups"]]
    outs = ", ".join(f"{html.escape(n)} cosine {o['cosine']:.4f}" for n, o in approx["outputs"].items())
    return [f"<p>Approximate groups (--approximate): {verdict} against the masked original on {approx['samples']} "
            f"random inputs ({outs or html.escape(approx.get('error', 'not measured'))}; threshold "
            f"{approx['threshold']:g}).</p>",
            _table(["group", "units removed", "approximate because"], rows, raw=True)]


def _groups(report: dict) -> str:
    groups = report.get("groups") or []
    if not groups:
        return ""
    rows = [(f"{g['id']}: {g['name']}", [(g["size"], BEFORE, "before"), (g.get("kept", g["size"]), AFTER, "after")],
             "" if g.get("prunable", True) else "not prunable") for g in groups]
    total, kept = sum(g["size"] for g in groups), sum(g.get("kept", g["size"]) for g in groups)
    chart = _hbars(rows, "channels", chart_id="chart-groups")
    return ("<section id=\"groups\"><h2>Channels per group</h2>"
            f"<p class=\"sub\">{len(groups)} channel groups (channels that must be pruned together), "
            f"{total} channels before, {kept} after ({total - kept} removed).</p>"
            + _legend([("before", BEFORE), ("after", AFTER)]) + chart + "</section>")


def _sensitivity(report: dict) -> str:
    alloc = report.get("allocation") or {}
    curves = alloc.get("curves")
    if not curves:
        return ""
    names = {str(g["id"]): g["name"] for g in report.get("groups") or []}
    series = [(f"{gid}: {names.get(gid, '')}", [(float(r), float(v)) for r, v in sorted(curve.items(), key=lambda kv: float(kv[0]))])
              for gid, curve in curves.items()]
    rows = (alloc.get("cost") or {}).get("probe_rows")
    held = (report.get("calibration") or {}).get("holdout")
    data = (f"{rows} held-out calibration images" if rows and held else
            f"{rows} calibration images" if rows else "the held-out calibration images")
    chart = _lines(series, "fraction of the group's channels removed (lowest-ranked first)",
                   "loss increase (KL, nats)", chart_id="chart-sensitivity")
    return ("<section id=\"sensitivity\"><h2>Sensitivity curves</h2>"
            f"<p class=\"sub\">How much the output moves when only one group loses its lowest-ranked channels: "
            f"the increase of the KL divergence from the original's outputs (nats), measured with channel masks on "
            f"{data}. The sensitivity allocator gives flat curves more of the MAC budget to remove.</p>"
            + chart + _series_legend(series) + "</section>")


def _blend(report: dict) -> str:
    blend = (report.get("scoring") or {}).get("blend")
    if not blend or not blend.get("correlation"):
        return ""
    pool = blend["pool"]
    chart = _heatmap(pool, blend["correlation"], chart_id="chart-correlation")
    reps = set(blend.get("representatives", ()))
    weights = blend.get("weights", {})
    rows = [[", ".join(html.escape(n) + (" (representative)" if n in reps else "") for n in cluster),
             ", ".join(f"{weights[n]:.2f}" for n in cluster if n in weights)] for cluster in blend["clusters"]]
    return ("<section id=\"blend\"><h2>Criteria correlation and the blend's clusters</h2>"
            f"<p class=\"sub\">Spearman rank correlation of every pair of criteria in the pool, averaged over "
            f"{blend.get('groups_used', '?')} channel groups. Criteria that agree are clustered; one representative "
            f"per cluster is blended (weights below).</p>" + chart
            + _table(["cluster", "weight"], rows, raw=True) + "</section>")


def _order_check(report: dict) -> str:
    check = (report.get("allocation") or {}).get("order_check")
    if not check:
        return ""
    held = (report.get("calibration") or {}).get("holdout")
    losses = check["losses"]
    chosen = check["chosen"]
    rows = [(name, [(value, CHOSEN if name == chosen else AFTER, f"{value:.4g}")], "pruned by this" if name == chosen else "")
            for name, value in losses.items()]
    recovery = check.get("recovery", "none")
    return ("<section id=\"order-check\"><h2>Order check</h2>"
            f"<p class=\"sub\">Which ranking to prune by: the blend or one of its representative criteria alone, "
            f"each pruned at the allocated counts and repaired cheaply ({html.escape(recovery)}). Pruned by "
            f"<b>{html.escape(chosen)}</b>; variety {html.escape(str(check.get('variety')))}.</p>"
            f"<p class=\"data\">Loss: choice loss on {held} held-out calibration images = top-1 disagreement with the "
            f"original (a fraction, 0 to 1) + 0.01 x {'cross-entropy against the labels' if _labelled(report) else 'KL'}"
            f" (nats); lower is better. Not on the scale of the recovery losses below."
            + (" Every loss rounds to 0 at 6 decimals: on this data the candidates hardly differ." if not any(losses.values()) else "") + "</p>"
            + _hbars(rows, "choice loss (held-out; lower is better)", chart_id="chart-order-check", values=True)
            + "</section>")


def _recovery(report: dict) -> str:
    steps = [s for s in report.get("recovery") or [] if "loss_before" in s and s.get("step") != "finetune"]
    if not steps:
        return ""
    held = (report.get("calibration") or {}).get("holdout")
    datafree = "inputs" in steps[0]
    first = steps[0]["loss_before"]
    loss = (f"relative squared error of the outputs on {steps[0]['inputs']} inputs (data-free repair)" if datafree else
            f"fidelity loss on {held} held-out calibration images: " + (
                "cross-entropy against their labels (nats)" if _labelled(report) else
                "KL divergence from the original's outputs (nats)"))
    rows = [[html.escape(s["step"]), f"{s['loss_before']:.4g}", f"{s['loss_after']:.4g}",
             f"{s['loss_after'] / first:.3f}" if first else "-",
             "<span class=\"ok\">kept</span>" if s["kept"] else "<span class=\"bad\">rejected</span>"] for s in steps]
    bars = [(s["step"], [(s["loss_before"], BEFORE, f"{s['loss_before']:.4g}"),
                         (s["loss_after"], KEPT if s["kept"] else REJECTED, f"{s['loss_after']:.4g}")], "")
            for s in steps]
    skipped = [s for s in report.get("recovery") or [] if "layers" in s]
    extra = "".join(f"<p class=\"data\">{html.escape(s['step'])}: {html.escape('; '.join(s['layers'][:6]))}</p>"
                    for s in skipped)
    return ("<section id=\"recovery\"><h2>Recovery steps</h2>"
            "<p class=\"sub\">Training-free repairs, in order; each is kept only if it lowers the loss.</p>"
            f"<p class=\"data\">Loss: {loss}. Relative: the loss after the step over the unrepaired loss "
            f"({first:.4g}).</p>"
            + _table(["step", "loss before", "loss after", "after / unrepaired", "result"], rows, raw=True)
            + _legend([("before the step", BEFORE), ("after, kept", KEPT), ("after, rejected", REJECTED)])
            + _hbars(bars, "loss", chart_id="chart-recovery", values=True) + extra + "</section>")


def _finetune(report: dict) -> str:
    step = next((s for s in report.get("recovery") or [] if s.get("step") == "finetune"), None)
    if not step:
        return ""
    held = (report.get("calibration") or {}).get("holdout")
    series = [(name, [(i + 1.0, float(v)) for i, v in enumerate(step.get(key) or [])])
              for name, key in (("training loss", "train_loss"), ("held-out loss", "held_out_loss"))]
    series = [s for s in series if s[1]]
    chart = _lines(series, "epoch", "distillation loss (per epoch)", chart_id="chart-finetune", whole_x=True) if series else ""
    return ("<section id=\"finetune\"><h2>Fine-tuning</h2>"
            f"<p class=\"sub\">Distillation against the original on the calibration data: held-out loss "
            f"{step['loss_before']:.4g} -> {step['loss_after']:.4g}, best epoch {step.get('best_epoch')} of "
            f"{step.get('epochs_run')}, {step.get('seconds')} s: <b>{'kept' if step['kept'] else 'not kept'}</b> "
            f"({html.escape(str(step.get('why', '')))}).</p>"
            f"<p class=\"data\">Held-out loss on {held} held-out calibration images; training loss on the rest.</p>"
            + chart + _series_legend(series) + "</section>")


def _holdout(report: dict) -> str:
    holdout = report.get("holdout")
    if not holdout:
        return ""
    cols = [("accuracy_original", "accuracy, original"), ("accuracy", "accuracy, pruned"),
            ("top1_agreement", "top-1 agreement"), ("top5_agreement", "top-5 agreement"), ("kl", "KL (nats)"),
            ("cosine", "cosine"), ("rel_sq_error", "rel. sq. error")]
    present = [c for c in cols if any(c[0] in m for m in holdout.values())]
    rows = [[_name(n)] + [f"{m[k]:.4f}" if k in m else "" for k, _ in present] for n, m in holdout.items()]
    held = (report.get("calibration") or {}).get("holdout")
    return ("<section id=\"holdout\"><h2>Held-out metrics</h2>"
            f"<p class=\"data\">Data: {held} held-out calibration images (not used to score or repair); "
            f"agreement and KL are against the original model's outputs, accuracy against the labels.</p>"
            + _table(["output"] + [label for _, label in present], rows, raw=True) + "</section>")


def _latency(report: dict) -> str:
    out = []
    search = report.get("latency_search")
    if search:
        rows = [[str(i + 1), f"{s.get('budget', 0):.3f}", f"{s.get('latency_ratio', 0):.3f}"
                 if s.get("latency_ratio") is not None else "", "yes" if s.get("cached") else ""]
                for i, s in enumerate(search.get("steps", []))]
        out.append(f"<p>Latency search on {html.escape(str(search['provider']))}, batch {search['batch']}: chose a "
                   f"MAC budget of {search['budget']:.3f}, latency {search['latency_ratio']:.3f}x of the original "
                   f"(target {search['target']}x).</p>"
                   + _table(["step", "MAC budget", "latency ratio", "reused"], rows))
    bench = report.get("bench")
    if bench:
        rows = [[_name(os.path.basename(str(t["model"]))), html.escape(str(t["provider"])), str(t["batch"]),
                 f"{t['median_ms']:.3f}", f"{t['p90_ms']:.3f}", f"{t['speedup']:.2f}x" if t.get("speedup") else ""]
                for t in bench.get("results", [])]
        ort = bench.get("onnxruntime", "")
        out.append(f"<p class=\"data\">Measured with onnxruntime {html.escape(str(ort))} on this machine "
                   f"(alternating runs, {bench['config'].get('repeat')} timed runs each).</p>"
                   + _table(["model", "provider", "batch", "median ms", "p90 ms", "speedup"], rows, raw=True))
    if not out:
        return ""
    return "<section id=\"latency\"><h2>Latency</h2>" + "".join(out) + "</section>"


def _cost(report: dict) -> str:
    passes = report.get("forward_passes") or {}
    seconds = report.get("seconds") or {}
    if not passes and not seconds:
        return ""
    rows = [[html.escape(k), f"{v:g}"] for k, v in passes.items() if k != "total"]
    return ("<section id=\"cost\"><h2>Where the time went</h2>"
            + (_table(["stage", "image passes"], rows + [["total", f"{passes.get('total', 0):g}"]], raw=True)
               if rows else "")
            + _table(["stage", "seconds"], [[html.escape(k), f"{v:g}"] for k, v in seconds.items()], raw=True)
            + "</section>")


def _skipped_and_notes(report: dict) -> str:
    skipped, notes = report.get("skipped") or [], report.get("notes") or []
    if not skipped and not notes:
        return ""
    rows = [[_name(s.get("name", "")), html.escape(str(s.get("reason", "")))] for s in skipped]
    return ("<section id=\"notes\"><h2>Groups left alone, and notes</h2>"
            + (_table(["group", "why"], rows, raw=True) if rows else "")
            + "".join(f"<p class=\"note\">{html.escape(str(n))}</p>" for n in notes) + "</section>")


def _repeat(report: dict) -> str:
    command = report.get("command") or {}
    options = command.get("options") or {k: report.get(k) for k in ("model", "criterion", "ratio", "target_macs",
                                                                    "target_latency", "preset", "options")}
    line = command.get("command")
    return ("<section id=\"repeat\"><h2>Repeat this run</h2>"
            + (f"<p>Command line (the options given):</p><pre id=\"repeat-command\">{html.escape(line)}</pre>" if line else "")
            + "<details><summary>Every option, defaults included (JSON)</summary>"
            + f"<pre id=\"repeat-options\">{html.escape(json.dumps(options, indent=1, default=json_default))}</pre>"
            + "</details></section>")


# --- building blocks -----------------------------------------------------------------------------

def _labelled(report: dict) -> bool:
    """Whether the calibration data had labels (the held-out metrics then have an accuracy)."""
    return any("accuracy" in m for m in (report.get("holdout") or {}).values())


def _name(name) -> str:
    return f"<span class=\"name\">{html.escape(str(name))}</span>"


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[:8] + "\u2026" + name[-(NAME_CHARS - 9):]


def _table(header: list[str], rows: list[list[str]], raw: bool = False) -> str:
    """A table; cells are escaped unless `raw` (cells already HTML, names through `_name`)."""
    def cell(i, value):
        text = value if raw else html.escape(str(value))
        return f"<td class=\"name\">{text}</td>" if i == 0 and "class=\"name\"" in text else f"<td>{text}</td>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _legend(items: list[tuple[str, str]]) -> str:
    return ("<div class=\"legend\">" + "".join(f"<span><i style=\"background:{c}\"></i>{html.escape(t)}</span>"
                                              for t, c in items) + "</div>")


def _series_legend(series: list) -> str:
    return _legend([(name, PALETTE[i % len(PALETTE)]) for i, (name, _) in enumerate(series)])


def _ticks(top: float, n: int = 5, whole: bool = False) -> list[float]:
    """Round tick values from 0 to at least `top` (whole numbers with `whole`)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    step = max(1, round(step)) if whole else step
    return [i * step for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else human(v)


def _hbars(rows: list[tuple[str, list[tuple[float, str, str]], str]], axis: str, chart_id: str,
           values: bool = False) -> str:
    """Horizontal bars, one band per row: rows are (label, [(value, colour, tooltip)...], note);
    labels left of the bars (shortened, the full name in the tooltip), a value axis below."""
    bar_h, gap, label_w, width = 12, 8, 270, 980
    plot_w = width - label_w - 90
    band = bar_h * max(len(r[1]) for r in rows) + gap
    # a loss can be inf or NaN (a collapsed candidate): drawn as an empty bar, its value as text
    top_v = max((v for _, bars, _ in rows for v, _, _ in bars if math.isfinite(v)), default=1.0)
    ticks = _ticks(top_v)
    scale = plot_w / (ticks[-1] or 1.0)
    height = band * len(rows) + 44
    parts = [f"<svg id=\"{chart_id}\" class=\"chart\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" "
             f"height=\"{height}\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\">"]
    y0 = 6
    for t in ticks:
        x = label_w + t * scale
        parts.append(f"<line x1=\"{x:.1f}\" y1=\"{y0}\" x2=\"{x:.1f}\" y2=\"{y0 + band * len(rows)}\" stroke=\"#e6e6e6\"/>"
                     f"<text x=\"{x:.1f}\" y=\"{y0 + band * len(rows) + 14}\" font-size=\"11\" text-anchor=\"middle\" "
                     f"fill=\"#555\">{_fmt(t)}</text>")
    for i, (label, bars, note) in enumerate(rows):
        y = y0 + i * band
        parts.append(f"<text x=\"{label_w - 8}\" y=\"{y + band / 2 + 1:.1f}\" font-size=\"12\" text-anchor=\"end\" "
                     f"dominant-baseline=\"middle\" fill=\"#222\"><title>{html.escape(label)}</title>"
                     f"{html.escape(_short(label))}</text>")
        for j, (value, colour, tip) in enumerate(bars):
            w = max(value * scale, 0.5) if math.isfinite(value) else 0.5
            parts.append(f"<rect class=\"bar\" x=\"{label_w}\" y=\"{y + j * bar_h + gap / 2:.1f}\" width=\"{w:.1f}\" "
                         f"height=\"{bar_h - 1}\" fill=\"{colour}\"><title>{html.escape(label)}: "
                         f"{html.escape(tip)} {_fmt(value)}</title></rect>")
            if values or j == len(bars) - 1:
                parts.append(f"<text x=\"{label_w + w + 4:.1f}\" y=\"{y + j * bar_h + gap / 2 + bar_h / 2:.1f}\" "
                             f"font-size=\"10\" dominant-baseline=\"middle\" fill=\"#444\">{_fmt(value)}"
                             + (f" ({html.escape(note)})" if note and j == len(bars) - 1 else "") + "</text>")
    parts.append(f"<text x=\"{label_w + plot_w / 2:.1f}\" y=\"{height - 6}\" font-size=\"12\" text-anchor=\"middle\" "
                 f"fill=\"#333\">{html.escape(axis)}</text></svg>")
    return "".join(parts)


def _lines(series: list[tuple[str, list[tuple[float, float]]]], x_axis: str, y_axis: str, chart_id: str,
           whole_x: bool = False) -> str:
    """A line chart, one polyline (with point markers) per series, on shared linear axes; with
    `whole_x` (epochs) the x axis starts at the first point and its ticks are whole numbers."""
    width, height, left, right, top, bottom = 980, 360, 70, 20, 12, 48
    pw, ph = width - left - right, height - top - bottom
    series = [(name, [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]) for name, pts in series]
    xs = [x for _, pts in series for x, _ in pts] or [0.0, 1.0]
    ys = [y for _, pts in series for _, y in pts] or [0.0, 1.0]
    x_lo, y_lo = (min(xs) if whole_x else min(0.0, min(xs))), min(0.0, min(ys))
    x_ticks, y_ticks = _ticks(max(xs) - x_lo, whole=whole_x), _ticks(max(ys) - y_lo)
    x_span, y_span = (x_ticks[-1] or 1.0), (y_ticks[-1] or 1.0)

    def px(x):
        return left + (x - x_lo) / x_span * pw

    def py(y):
        return top + ph - (y - y_lo) / y_span * ph

    parts = [f"<svg id=\"{chart_id}\" class=\"chart\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" "
             f"height=\"{height}\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\">"]
    for t in y_ticks:
        parts.append(f"<line x1=\"{left}\" y1=\"{py(t + y_lo):.1f}\" x2=\"{left + pw}\" y2=\"{py(t + y_lo):.1f}\" "
                     f"stroke=\"#e6e6e6\"/><text x=\"{left - 6}\" y=\"{py(t + y_lo) + 4:.1f}\" font-size=\"11\" "
                     f"text-anchor=\"end\" fill=\"#555\">{_fmt(t + y_lo)}</text>")
    for t in x_ticks:
        parts.append(f"<text x=\"{px(t + x_lo):.1f}\" y=\"{top + ph + 16}\" font-size=\"11\" text-anchor=\"middle\" "
                     f"fill=\"#555\">{_fmt(t + x_lo)}</text>")
    parts.append(f"<line x1=\"{left}\" y1=\"{top + ph}\" x2=\"{left + pw}\" y2=\"{top + ph}\" stroke=\"#888\"/>"
                 f"<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{top + ph}\" stroke=\"#888\"/>")
    for i, (name, pts) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(f"<polyline class=\"series\" points=\"{coords}\" fill=\"none\" stroke=\"{colour}\" "
                     f"stroke-width=\"1.8\"><title>{html.escape(name)}</title></polyline>")
        parts += [f"<circle cx=\"{px(x):.1f}\" cy=\"{py(y):.1f}\" r=\"2.4\" fill=\"{colour}\"><title>"
                  f"{html.escape(name)}: {_fmt(x)} -> {_fmt(y)}</title></circle>" for x, y in pts]
    parts.append(f"<text x=\"{left + pw / 2:.1f}\" y=\"{height - 8}\" font-size=\"12\" text-anchor=\"middle\" "
                 f"fill=\"#333\">{html.escape(x_axis)}</text>"
                 f"<text transform=\"translate(16 {top + ph / 2:.1f}) rotate(-90)\" font-size=\"12\" "
                 f"text-anchor=\"middle\" fill=\"#333\">{html.escape(y_axis)}</text></svg>")
    return "".join(parts)


def _heatmap(names: list[str], matrix: list[list[float]], chart_id: str) -> str:
    """A square matrix of values in [-1, 1] as coloured cells (blue negative, red positive) with the values."""
    cell, label_w = 46, 90
    n = len(names)
    size = label_w + n * cell + 10
    parts = [f"<svg id=\"{chart_id}\" class=\"chart\" viewBox=\"0 0 {size} {size}\" width=\"{size}\" height=\"{size}\" "
             f"role=\"img\" xmlns=\"http://www.w3.org/2000/svg\">"]
    for i, name in enumerate(names):
        parts.append(f"<text x=\"{label_w - 6}\" y=\"{label_w + i * cell + cell / 2 + 4}\" font-size=\"12\" "
                     f"text-anchor=\"end\">{html.escape(name)}</text>"
                     f"<text transform=\"translate({label_w + i * cell + cell / 2 + 4} {label_w - 6}) rotate(-60)\" "
                     f"font-size=\"12\">{html.escape(name)}</text>")
        for j in range(n):
            v = float(matrix[i][j])
            parts.append(f"<rect class=\"cell\" x=\"{label_w + j * cell}\" y=\"{label_w + i * cell}\" width=\"{cell - 1}\" "
                         f"height=\"{cell - 1}\" fill=\"{_diverging(v)}\"><title>{html.escape(names[i])} / "
                         f"{html.escape(names[j])}: {v:.3f}</title></rect>"
                         f"<text x=\"{label_w + j * cell + cell / 2}\" y=\"{label_w + i * cell + cell / 2 + 4}\" "
                         f"font-size=\"11\" text-anchor=\"middle\" fill=\"{'#fff' if abs(v) > 0.6 else '#222'}\">"
                         f"{v:.2f}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _diverging(v: float) -> str:
    v = max(-1.0, min(1.0, v))
    hi = (178, 24, 43) if v >= 0 else (33, 102, 172)
    t = abs(v)
    r, g, b = (round(255 + (c - 255) * t) for c in hi)
    return f"#{r:02x}{g:02x}{b:02x}"
