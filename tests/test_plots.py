"""The PNG plots: titled, axes naming their data, ratio labels that do not overlap, group names
that fit (horizontal bars). The figures are inspected before they are closed."""

import pytest

plt = pytest.importorskip("matplotlib.pyplot")

from onnxprune.report import plots  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    """The figures the plots close, kept open for inspection."""
    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    for fig in kept:
        plt.figure(fig.number)
        plt.clf()


def sweep_rows(n=17):
    # a dense sweep: ratios 0.05 apart whose points lie close together at the high ratios
    rows = [{"ratio": 0.0, "macs_kept": 1.0, "params_kept": 1.0, "latency_ms": 6.0, "top1_agreement": 1.0}]
    for i in range(1, n):
        r = i / 20
        rows.append({"ratio": r, "macs_kept": (1 - r) ** 2, "params_kept": (1 - r) ** 2,
                     "latency_ms": 6.0 * (1 - r) ** 2 + 0.3, "top1_agreement": 0.9 + 0.1 * (1 - r) ** 3})
    return rows


def overlaps(boxes):
    return [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]


def test_tradeoff_is_titled_names_its_data_and_its_labels_do_not_overlap(tmp_path, figures):
    plots.tradeoff(sweep_rows(), str(tmp_path / "s.png"), title="Ratio sweep of m.onnx",
                   data="128 held-out calibration images")
    assert (tmp_path / "s.png").stat().st_size > 10000
    fig = figures[-1]
    assert "Ratio sweep of m.onnx" in fig._suptitle.get_text()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        assert "128 held-out calibration images" in ax.get_ylabel() and "agreement" in ax.get_ylabel()
        assert ax.get_xlabel()
        labels = [t for t in ax.texts]
        assert {"0.00", "0.80"} <= {t.get_text() for t in labels}       # both ends always labelled
        assert overlaps([t.get_window_extent(renderer) for t in labels]) == []


def test_group_bars_are_horizontal_and_names_fit(tmp_path, figures):
    rows = [{"id": i, "name": f"/backbone/stage{i}/block{i}/conv_with_a_long_name/Conv", "size": 64,
             "kept": 32, "prunable": i != 3} for i in range(40)]
    plots.groups(rows, str(tmp_path / "g.png"), title="m.onnx: channels per group")
    fig = figures[-1]
    ax = fig.axes[0]
    bars = ax.patches
    assert len(bars) == 80 and all(b.get_width() > b.get_height() for b in bars)    # horizontal
    renderer = fig.canvas.get_renderer()
    names = ax.get_yticklabels()
    assert len(names) == 40
    boxes = [t.get_window_extent(renderer) for t in names]
    assert all(b.x0 >= 0 for b in boxes)                   # not cut at the figure's edge
    assert overlaps(boxes) == []
    assert "channels per group" in ax.get_title(loc="left") and "channels" in ax.get_xlabel()
