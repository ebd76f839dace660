"""Robustness curves as PNG: robust accuracy against eps, drawn with matplotlib's Agg canvas.

    png = curve_png("mnist · linf", {"smallcnn / pgd-at": [(0.0, 0.99), (0.1, 0.98), (0.3, 0.90)]})

The only part of the leaderboard that imports matplotlib. Deterministic: the default style, fixed
sizes, colors and markers, no Software metadata.
"""

from __future__ import annotations

import io

import matplotlib.style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from robustbench_karp.boards.format import shorten

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
MARKERS = "osD^v<>ph*"
FIGSIZE, DPI = (9.6, 4.0), 100  # 960 x 400 pixels at most 14 lines; taller with more
AXES_RECT = (0.07, 0.12, 0.55, 0.78)  # left, bottom, width, height: the right part holds the legend


def curve_figure(title: str, lines: dict[str, list[tuple[float, float]]]) -> Figure:
    """Robust accuracy (%) against eps, one line per label, the legend right of the axes (never over a curve).

    The figure grows taller past 14 lines so that the legend stays inside it.
    """
    fig = Figure(figsize=(FIGSIZE[0], max(FIGSIZE[1], 0.25 * len(lines) + 0.5)), dpi=DPI)
    FigureCanvasAgg(fig)  # Agg canvas attached to this figure only: pyplot's global state is never touched
    ax = fig.add_axes(AXES_RECT)
    for i, (label, points) in enumerate(lines.items()):
        xs, ys = zip(*points)
        ax.plot(xs, [100 * y for y in ys], color=COLORS[i % len(COLORS)], marker=MARKERS[i % len(MARKERS)],
                label=shorten(label, 55))
    ax.set(title=title, xlabel="ε (pixel units, images in [0, 1])", ylabel="robust accuracy (%)", ylim=(0, 100))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig


def curve_png(title: str, lines: dict[str, list[tuple[float, float]]]) -> bytes:
    """curve_figure as PNG bytes.

    Deterministic: the default style (a user's matplotlibrc does not leak in), fixed width, dpi, colors
    and markers, and no Software metadata (which carries the matplotlib version).
    """
    with matplotlib.style.context("default"):
        buf = io.BytesIO()
        curve_figure(title, lines).savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()
