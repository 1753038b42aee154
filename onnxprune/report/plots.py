"""PNG plots (matplotlib, the optional `[plot]` extra, imported only when a plot is asked for).

- `groups`: channels before and after per channel group, as bars (`onnxprune MODEL --plot-groups
  groups.png`; `onnxprune sweep --plot-groups` draws one "after" bar per ratio).
- `tradeoff`: fidelity (or accuracy) against latency and against MACs kept (`onnxprune sweep --plot`).
"""

from __future__ import annotations

from typing import Sequence

from ..errors import OnnxPruneError

LABEL_CHARS = 28


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
        raise OnnxPruneError("plots need matplotlib: pip install 'onnxprune[plot]'") from None
    return plt


def _label(row: dict) -> str:
    name = str(row.get("name", ""))
    if len(name) > LABEL_CHARS:
        name = "..." + name[-(LABEL_CHARS - 3):]
    return f"{row['id']}: {name}"


def groups(rows: Sequence[dict], path: str, title: str | None = None,
           after: dict[str, Sequence[int]] | None = None) -> None:
    """Channels before/after per group as a bar chart, written to `path` (PNG).

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
    width = 0.8 / (k + 1)
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.22 * n * (k + 1) ** 0.5 + 2.0), 60.0), 4.8))
    xs = range(n)
    hatch = ["" if r.get("prunable", True) else "//" for r in rows]
    bars = ax.bar([x - 0.4 + width / 2 for x in xs], [r["size"] for r in rows], width, color="#bbbbbb",
                  edgecolor="#777777", linewidth=0.5, label="before")
    for bar, h in zip(bars, hatch):
        bar.set_hatch(h)
    colors = plt.get_cmap("viridis")
    for j, (label, kept) in enumerate(series.items()):
        if len(kept) != n:
            raise OnnxPruneError(f"plot series '{label}' has {len(kept)} values for {n} groups")
        ax.bar([x - 0.4 + width * (j + 1.5) for x in xs], list(kept), width,
               color=colors(0.15 + 0.7 * j / max(k - 1, 1)) if k > 1 else "#3b75af", label=label)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([_label(r) for r in rows], rotation=90, fontsize=7 if n > 30 else 8)
    ax.set_ylabel("channels")
    ax.set_xlim(-0.6, n - 0.4)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(k + 1, 6))
    total = sum(r["size"] for r in rows)
    detail = (f"{total - sum(series[next(iter(series))])} of {total} channels removed" if k == 1
              else f"{total} channels before")
    ax.set_title(f"{title or 'channels per group'}\n{detail}; hatched: not prunable", fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def tradeoff(rows: list[dict], path: str) -> None:
    """Fidelity (or accuracy) against latency and against MACs kept, as a PNG (one point per ratio)."""
    plt = pyplot()
    key = "accuracy" if any("accuracy" in r for r in rows) else ("top1_agreement" if any("top1_agreement" in r for r in rows) else None)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, x_key, label in ((axes[0], "latency_ms", "latency (ms, CPU, batch 1)"), (axes[1], "macs_kept", "MACs kept")):
        pts = [(r[x_key], r.get(key, 1.0) if key else r["params_kept"]) for r in rows if r.get(x_key) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "o-")
            for r, x, y in zip([r for r in rows if r.get(x_key) is not None], xs, ys):
                ax.annotate(f"{r['ratio']:.2f}", (x, y), fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel(key or "params kept")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
