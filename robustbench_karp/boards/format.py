"""How the boards write numbers and names: one place for every rendered label.

    eps_label(8 / 255)   # '8/255'
    eps_label(0.3)       # '0.3'
"""

from __future__ import annotations

import re

CERTIFIED = " · certified"  # a curve label ending so: the certified curve under its attacked one


def slug(text: str) -> str:
    """A file- and id-safe form of text: 'CIFAR-10' -> 'cifar-10', '8/255' -> '8-255', '0.3' -> '0-3'."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def eps_label(eps: float | None) -> str:
    """eps as people write it: '0.3', or '8/255' when it is a whole number of 8-bit pixel steps ('' for None)."""
    if eps is None:
        return ""
    short = f"{eps:g}"
    if float(short) == eps:
        return short
    steps = round(eps * 255)
    return f"{steps}/255" if steps / 255 == eps else f"{eps:.6g}"


def shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def fraction(value: float | None) -> str:
    """An accuracy as the command line shows it: a fraction with four digits ('0.9760'); '' for None."""
    return "" if value is None else f"{value:.4f}"


def percent(value: float) -> str:
    """An accuracy as the pages show it: a percentage with one decimal ('97.6')."""
    return f"{100 * value:.1f}"

