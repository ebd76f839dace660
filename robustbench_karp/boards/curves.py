"""Robustness curves as PNG: robust accuracy against eps, drawn with matplotlib's Agg canvas.

    png = curve_png("mnist · linf", {"smallcnn / pgd-at": [(0.0, 0.99), (0.1, 0.98), (0.3, 0.90)]})

The only part of the leaderboard that imports matplotlib. Deterministic: the default style, fixed
sizes, colors and markers, no Software metadata.
"""

from __future__ import annotations

import io
import logging
import textwrap

# Before matplotlib loads: its font manager logs "generated new fontManager" at INFO on a fresh cache, and the
# CLI logs INFO to stderr. Chatter, not news: only matplotlib's warnings reach a build's output.
logging.getLogger("matplotlib").setLevel(logging.WARNING)

import matplotlib.style  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from robustbench_karp.boards.format import CERTIFIED  # noqa: E402

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
MARKERS = "osD^v<>ph*"
FIGSIZE, DPI = (9.6, 4.0), 100  # 960 x 400 pixels at most 14 lines; taller with more
AXES_RECT = (0.07, 0.12, 0.55, 0.78)  # left, bottom, width, height: the right part holds the legend
LABEL = 50  # characters of a legend line that fit right of the axes: a longer label wraps, never cut


KEY = ("filled marker: the evaluation protocol ran\nhollow marker: a partial evaluation (upper bound)\n"
       "dashed: certified accuracy (lower bound)")


def curve_figure(title: str, lines: dict[str, list[tuple]]) -> Figure:
    """Robust accuracy (%) against eps, one line per label, the legend right of the axes (never over a curve).

    A point is (eps, accuracy) or (eps, accuracy, kind): kind "protocol" draws a filled marker, "partial"
    a hollow one, so a curve shows which of its points ran the evaluation protocol. A label ending in
    CERTIFIED is drawn dashed, in its attacked curve's color, under it: the bracket over eps.
    A label longer than a legend line wraps onto the next (whole, never cut with an ellipsis), and the
    figure grows taller past 14 legend lines so that the legend stays inside it.
    """
    shown = {label: textwrap.fill(label, LABEL, break_on_hyphens=False) for label in lines}
    keyed = any(len(p) > 2 for points in lines.values() for p in points)  # the marker key sits under the legend
    height = sum(0.25 + 0.17 * text.count("\n") for text in shown.values()) + 0.5 + 0.6 * keyed
    fig = Figure(figsize=(FIGSIZE[0], max(FIGSIZE[1], height)), dpi=DPI)
    FigureCanvasAgg(fig)  # Agg canvas attached to this figure only: pyplot's global state is never touched
    ax = fig.add_axes(AXES_RECT)
    colors: dict[str, str] = {}
    for i, (label, points) in enumerate(lines.items()):
        base = label.removesuffix(CERTIFIED)
        color = colors.setdefault(base, COLORS[len(colors) % len(COLORS)])
        marker = MARKERS[i % len(MARKERS)]
        xs, ys = [p[0] for p in points], [100 * p[1] for p in points]
        dashed = label.endswith(CERTIFIED)
        ax.plot(xs, ys, color=color, linestyle="--" if dashed else "-", label=shown[label], marker=marker,
                markerfacecolor="none" if dashed else color)
        hollow = [(x, y) for p, x, y in zip(points, xs, ys) if len(p) > 2 and p[2] == "partial"]
        if hollow:  # over the filled markers: these points ran no protocol
            ax.plot(*zip(*hollow), linestyle="none", marker=marker, color=color, markerfacecolor="white")
    ax.set(title=title, xlabel="ε (pixel units, images in [0, 1])", ylabel="robust accuracy (%)", ylim=(0, 100))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    if keyed:
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
