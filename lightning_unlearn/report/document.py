"""The report as a document: sections of notes, paragraphs, tables, figures and galleries.

The section builders fill these plain records and the renderers turn them into HTML or Markdown,
so neither side knows about the other. The formatting helpers turn run-folder values into the
table cells both renderers print unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lightning_unlearn.intervals import format_interval


@dataclass
class Note:
    """One line saying why something is not shown."""

    text: str


@dataclass
class Paragraph:
    """Explanatory text of a section."""

    text: str


@dataclass
class Table:
    """Cells already formatted as text (see :func:`fmt`), so every renderer prints the same."""

    caption: str
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    """A PNG: embedded in the HTML, written as ``figures/<filename>`` for the Markdown."""

    filename: str
    png: bytes
    caption: str


@dataclass
class Gallery:
    """Image grids of one run: the first (the base model) beside each of the others."""

    caption: str
    figures: list[Figure] = field(default_factory=list)


Block = Note | Paragraph | Table | Figure | Gallery
"""Anything a section holds."""


@dataclass
class Section:
    """One titled part of the report, its blocks in reading order."""

    title: str
    blocks: list[Block] = field(default_factory=list)


def figures_of(sections: list[Section]) -> list[Figure]:
    """Every figure of ``sections`` in reading order, those inside galleries included."""
    found = []
    for section in sections:
        for block in section.blocks:
            for figure in block.figures if isinstance(block, Gallery) else [block]:
                if isinstance(figure, Figure):
                    found.append(figure)
    return found


def fmt(value: Any, digits: int = 1) -> str:
    """Table cell text: floats with ``digits`` decimals, NaN / missing as "-"."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def fmt_interval(value: Any, bounds: tuple[float, float], digits: int = 1) -> str:
    """A metric with its 95% interval, ``94.2 [90.1, 96.8]``; the value alone where the bounds
    are NaN (older run folders), "-" for a missing value."""
    return format_interval(as_float(value), bounds, digits)


def fmt_norm(value: Any) -> str:
    """Drift norms and correlations: 4 significant digits."""
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return f"{value:.4g}"
    return "-"


def as_float(value: Any) -> float:
    """``value`` as a float; NaN where a run folder has none or something that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def slug(text: str) -> str:
    """``text`` as a file-name part: lower case, every other character as "-"; "run" if nothing is left."""
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-") or "run"
