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

from robustbench_karp.boards.format import CERTIFIED, shorten

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
MARKERS = "osD^v<>ph*"
FIGSIZE, DPI = (9.6, 4.0), 100  # 960 x 400 pixels at most 14 lines; taller with more
AXES_RECT = (0.07, 0.12, 0.55, 0.78)  # left, bottom, width, height: the right part holds the legend
LABEL = 50  # characters of a legend label that fit right of the axes (a certified one keeps its suffix)


KEY = ("filled marker: the evaluation protocol ran\nhollow marker: a partial evaluation (upper bound)\n"
       "dashed: certified accuracy (lower bound)")


def curve_figure(title: str, lines: dict[str, list[tuple]]) -> Figure:
    """Robust accuracy (%) against eps, one line per label, the legend right of the axes (never over a curve).

    A point is (eps, accuracy) or (eps, accuracy, kind): kind "protocol" draws a filled marker, "partial"
    a hollow one, so a curve shows which of its points ran the evaluation protocol. A label ending in
    CERTIFIED is drawn dashed, in its attacked curve's color, under it: the bracket over eps.
    The figure grows taller past 14 lines so that the legend stays inside it.
    """
    fig = Figure(figsize=(FIGSIZE[0], max(FIGSIZE[1], 0.25 * len(lines) + 0.5)), dpi=DPI)
    FigureCanvasAgg(fig)  # Agg canvas attached to this figure only: pyplot's global state is never touched
    ax = fig.add_axes(AXES_RECT)
    colors: dict[str, str] = {}
    for i, (label, points) in enumerate(lines.items()):
        base = label.removesuffix(CERTIFIED)
        color = colors.setdefault(base, COLORS[len(colors) % len(COLORS)])
        marker = MARKERS[i % len(MARKERS)]
        xs, ys = [p[0] for p in points], [100 * p[1] for p in points]
        dashed = label.endswith(CERTIFIED)
        shown = shorten(base, LABEL - len(CERTIFIED)) + CERTIFIED if dashed else shorten(label, LABEL)
        ax.plot(xs, ys, color=color, linestyle="--" if dashed else "-", label=shown, marker=marker,
                markerfacecolor="none" if dashed else color)
        hollow = [(x, y) for p, x, y in zip(points, xs, ys) if len(p) > 2 and p[2] == "partial"]
        if hollow:  # over the filled markers: these points ran no protocol
            ax.plot(*zip(*hollow), linestyle="none", marker=marker, color=color, markerfacecolor="white")
    ax.set(title=title, xlabel="ε (pixel units, images in [0, 1])", ylabel="robust accuracy (%)", ylim=(0, 100))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    if any(len(p) > 2 for points in lines.values() for p in points):
        fig.text(AXES_RECT[0] + AXES_RECT[2] + 0.02, AXES_RECT[1], KEY, fontsize="x-small", va="bottom")
    return fig


def curve_png(title: str, lines: dict[str, list[tuple]]) -> bytes:
    """curve_figure as PNG bytes.

    Deterministic: the default style (a user's matplotlibrc does not leak in), fixed width, dpi, colors
    and markers, and no Software metadata (which carries the matplotlib version).
    """
    with matplotlib.style.context("default"):
        buf = io.BytesIO()
        curve_figure(title, lines).savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()
