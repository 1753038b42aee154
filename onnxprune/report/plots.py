"""PNG plots (matplotlib, the optional `[plot]` extra, imported only when a plot is asked for).

- `groups`: channels before and after per channel group, as bars (`onnxprune MODEL --plot-groups
  groups.png`; `onnxprune sweep --plot-groups` draws one "after" bar per ratio).
- `tradeoff`: fidelity (or accuracy) against latency and against MACs kept (`onnxprune sweep --plot`).
"""

from __future__ import annotations

from typing import Sequence

from ..errors import OnnxPruneError

LABEL_CHARS = 28
# the same two forms as the [finetune] extra's hint (finetuning/bridge.py) and the README
EXTRA_HINT = "pip install 'onnxprune[plot]' (or pip install -e '.[plot]' in a clone)"


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend.

    Raises:
        OnnxPruneError: matplotlib is not installed (one line naming the extra).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OnnxPruneError(f"plots need matplotlib: {EXTRA_HINT}") from None
    return plt


def _label(row: dict) -> str:
    name = str(row.get("name", ""))
    if len(name) > LABEL_CHARS:
        name = "..." + name[-(LABEL_CHARS - 3):]
    return f"{row['id']}: {name}"


def groups(rows: Sequence[dict], path: str, title: str | None = None,
           after: dict[str, Sequence[int]] | None = None) -> None:
    """Channels before/after per group as horizontal bars (names read left of the bars), written
    to `path` (PNG).

    Args:
        rows: one dict per group with "id", "name", "size" and (unless `after` is given) "kept":
            the `groups` of a prune report. Groups that cannot be pruned are drawn hatched.
        path: the PNG to write.
        title: the figure title.
        after: several "after" series, {label: kept channels per row} (a sweep's ratios); default
            one series from the rows' "kept".
    Raises:
        OnnxPruneError: matplotlib is missing, or there is no group to draw.
    """
    plt = pyplot()
    rows = list(rows)
    if not rows:
        raise OnnxPruneError("no channel group to plot")
    series = dict(after) if after else {"after": [r.get("kept", r["size"]) for r in rows]}
    n, k = len(rows), len(series)
    height = 0.8 / (k + 1)
    # one band per group, tall enough for its k + 1 bars at a readable size
    fig, ax = plt.subplots(figsize=(9.0, min(max(3.2, 0.12 * n * (k + 1) + 1.6), 120.0)))
    ys = range(n)
    hatch = ["" if r.get("prunable", True) else "//" for r in rows]
    bars = ax.barh([y - 0.4 + height / 2 for y in ys], [r["size"] for r in rows], height, color="#bbbbbb",
                   edgecolor="#777777", linewidth=0.5, label="before")
    for bar, h in zip(bars, hatch):
        bar.set_hatch(h)
    colors = plt.get_cmap("viridis")
    for j, (label, kept) in enumerate(series.items()):
        if len(kept) != n:
            raise OnnxPruneError(f"plot series '{label}' has {len(kept)} values for {n} groups")
        ax.barh([y - 0.4 + height * (j + 1.5) for y in ys], list(kept), height,
                color=colors(0.15 + 0.7 * j / max(k - 1, 1)) if k > 1 else "#3b75af", label=label)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([_label(r) for r in rows], fontsize=8)
    ax.set_ylim(n - 0.4, -0.6)          # group 0 at the top, in graph order
    ax.set_xlabel("channels (output channels of the group's producers)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best", ncol=1 if k < 4 else 2)
    total = sum(r["size"] for r in rows)
    detail = (f"{total - sum(series[next(iter(series))])} of {total} channels removed" if k == 1
              else f"{total} channels before")
    ax.set_title(f"{title or 'channels per group'}\n{detail}; hatched: not prunable", fontsize=10, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _label_points(ax, points: list[tuple[float, float, str]], min_px: float = 16.0) -> None:
    """Annotate points with their text where it does not overlap a label already placed (first
    and last always labelled): labels of points closer than `min_px` on screen are left out."""
    ax.figure.canvas.draw()              # the final limits, so data -> pixels is right
    placed = []
    for i, (x, y, text) in enumerate(points):
        px, py = ax.transData.transform((x, y))
        near = any(abs(px - qx) < min_px * 2.2 and abs(py - qy) < min_px for qx, qy in placed)
        if near and 0 < i < len(points) - 1:
            continue
        # above-left of the point: off the curve where fidelity rises with the cost (the usual shape)
        offset = (5, -11) if near else (-4, 4)
        ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", fontsize=7, color="#333",
                    ha="left" if near else "right",
                    bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
        placed.append((px, py))


def tradeoff(rows: list[dict], path: str, title: str | None = None, data: str | None = None,
             latency: str = "CPU, batch 1") -> None:
    """Fidelity (or accuracy) against latency and against MACs kept, as a PNG (one point per
    ratio, labelled with the ratio where labels do not overlap).

    Args:
        rows: the rows of `onnxprune.sweep.sweep` (the original first).
        path: the PNG to write.
        title: the figure title.
        data: what the fidelity was measured on, for the y axis (e.g. "128 held-out calibration images").
        latency: where the latency was measured, for the x axis.
    """
    plt = pyplot()
    key = "accuracy" if any("accuracy" in r for r in rows) else ("top1_agreement" if any("top1_agreement" in r for r in rows) else None)
    on = f"\non {data}" if data else ""   # the data on a second line: the label fits the axis
    y_label = {"accuracy": f"top-1 accuracy{on}", "top1_agreement": f"top-1 agreement with the original{on}",
               None: "parameters kept (no --calib: no accuracy measured)"}[key]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, x_key, label in ((axes[0], "latency_ms", f"latency (ms, median; {latency})"),
                             (axes[1], "macs_kept", "MACs kept (fraction of the original's)")):
        pts = [(r[x_key], r.get(key, 1.0) if key else r["params_kept"], r["ratio"]) for r in rows
               if r.get(x_key) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", markersize=4)
            ax.margins(x=0.08, y=0.12)      # room for the labels of the end points
            _label_points(ax, [(x, y, f"{ratio:.2f}") for x, y, ratio in pts])
        else:
            ax.text(0.5, 0.5, "not measured (--no-latency)", ha="center", va="center", transform=ax.transAxes,
                    color="#777")
        ax.set_xlabel(label)
        ax.set_ylabel(y_label, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title or 'ratio sweep'}\npoint labels: the pruning ratio (fraction of channels removed in "
                 f"every group); 0.00 is the original", fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))     # room for the two-line title
    fig.savefig(path, dpi=100)
    plt.close(fig)
