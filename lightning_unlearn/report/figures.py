"""The report's figures, drawn with matplotlib's Agg renderer and returned as PNG bytes.

Every function takes plain numbers (no run folders), draws one figure and returns its PNG,
so the report's sections can embed the same bytes in HTML and write them next to the
Markdown. The pyplot state machine is never touched: each figure is a standalone
``matplotlib.figure.Figure`` on an Agg canvas, so nothing here needs a display or leaks figures.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

ERASED_COLOR = "#c0392b"
"""Marks erased concepts in every figure (labels, outlines)."""


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """Render ``fig`` to PNG bytes (no timestamp in the metadata, so equal figures give equal bytes)."""
    from PIL import Image

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    # Agg writes RGBA; the page is opaque, and RGB saves about a tenth of the bytes.
    with Image.open(io.BytesIO(buf.getvalue())) as rgba:
        out = io.BytesIO()
        rgba.convert("RGB").save(out, format="PNG")
    return out.getvalue()


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of the finite pairs; NaN with fewer than 3 pairs or a constant side."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


@dataclass
class Series:
    """One run's values over requests (x = request index, 0 = base), with the 95% interval's
    bounds per point when known (``low`` / ``high``; NaN or absent = no band there)."""

    label: str
    x: list[int]
    y: list[float]
    low: list[float] | None = None
    high: list[float] | None = None


def fmt_r(r: float) -> str:
    """A correlation for a title: signed, 3 decimals; "n/a" where undefined (constant side, < 3 points)."""
    return "n/a" if math.isnan(r) else f"{r:+.3f}"


def _from_zero(ax, runs: Sequence[Series]) -> None:
    """Y axis from 0 to a little above the largest value (nearly flat lines stay visible)."""
    values = [v for s in runs for v in s.y if math.isfinite(v)]
    top = max(values, default=0.0)
    ax.set_ylim(0, top * 1.08 if top > 0 else 1.0)


def _request_axis(ax, xs: Sequence[int]) -> None:
    ax.set_xlabel("request")
    if xs:
        top = max(xs)
        step = max(1, math.ceil((top + 1) / 13))
        ax.set_xticks(list(range(0, top + 1, step)))
    ax.grid(True, alpha=0.3)


def finite_points(series: Series) -> tuple[list[int], list[float]]:
    """The series' points with a finite value: a run evaluated every n-th request
    (``--stream.evaluate_every``) has NaN between, and matplotlib would break its line at each."""
    kept = [(x, y) for x, y in zip(series.x, series.y) if math.isfinite(y)]
    return [x for x, _ in kept], [y for _, y in kept]


def finite_band(series: Series) -> tuple[list[int], list[float], list[float]]:
    """The points of ``series`` with a finite value and finite interval bounds: x, low, high
    (empty for a series without bounds, e.g. a run folder written before the intervals)."""
    if series.low is None or series.high is None:
        return [], [], []
    kept = [(x, lo, hi) for x, y, lo, hi in zip(series.x, series.y, series.low, series.high)
            if math.isfinite(y) and math.isfinite(lo) and math.isfinite(hi)]
    return [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept]


def metric_curves_figure(panels: Mapping[str, Sequence[Series]], ylabel: str = "%") -> Figure:
    """:func:`metric_curves`' figure (before rendering; tests look at its artists)."""
    fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (metric, runs) in zip(axes, panels.items()):
        for series in runs:
            (line,) = ax.plot(*finite_points(series), marker="o", markersize=3.5, label=series.label)
            xs, low, high = finite_band(series)
            if xs:  # the 95% interval as a band in the line's colour
                ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.18, linewidth=0)
        ax.set_title(metric)
        ax.set_ylabel(ylabel)
        ax.set_ylim(-3, 103)
        _request_axis(ax, [x for s in runs for x in s.x])
    if any(s for runs in panels.values() for s in runs):
        axes[0].legend(fontsize=8, loc="lower left")
    return fig


def metric_curves(panels: Mapping[str, Sequence[Series]], ylabel: str = "%") -> bytes:
    """One panel per metric (e.g. UA, IRA, CRA), every run overlaid as a line over requests,
    its 95% interval (where the series has one) as a band around it."""
    return png_bytes(metric_curves_figure(panels, ylabel))


@dataclass
class Bar:
    """One bar: a value with its 95% interval's bounds (NaN = no whisker)."""

    value: float
    low: float = float("nan")
    high: float = float("nan")


def metric_bars_figure(groups: Mapping[str, Mapping[str, Bar]], ylabel: str = "%") -> Figure:
    """:func:`metric_bars`' figure (before rendering; tests look at its artists)."""
    metrics = list(dict.fromkeys(m for bars in groups.values() for m in bars))
    fig = Figure(figsize=(max(5.0, 1.0 + 0.55 * len(groups) * max(1, len(metrics))), 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(metrics))
    x = np.arange(len(groups))
    for k, metric in enumerate(metrics):
        bars = [groups[g].get(metric, Bar(float("nan"))) for g in groups]
        values = np.array([b.value for b in bars], dtype=float)
        positions = x - 0.4 + width * (k + 0.5)
        ax.bar(positions, np.nan_to_num(values), width=width * 0.92, label=metric)
        # Whiskers where both bounds are known: distances below and above the bar's top.
        has = np.array([math.isfinite(b.low) and math.isfinite(b.high) and math.isfinite(b.value) for b in bars])
        if has.any():
            below = np.array([b.value - b.low for b, h in zip(bars, has) if h])
            above = np.array([b.high - b.value for b, h in zip(bars, has) if h])
            ax.errorbar(positions[has], values[has], yerr=np.vstack([below, above]), fmt="none",
                        ecolor="black", elinewidth=1.0, capsize=3)
    ax.set_xticks(x, list(groups), rotation=30 if len(groups) > 3 else 0, ha="right" if len(groups) > 3 else "center",
                  fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 105)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", ncols=max(1, len(metrics)))
    return fig


def metric_bars(groups: Mapping[str, Mapping[str, Bar]], ylabel: str = "%") -> bytes:
    """Grouped bars (a group per run, a bar per metric) with their 95% intervals as whiskers."""
    return png_bytes(metric_bars_figure(groups, ylabel))


def cost_curves(cumulative: Sequence[Series], per_request: Sequence[Series]) -> bytes:
    """Cumulative training steps over requests (left) and the steps each request cost (right)."""
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for series in cumulative:
        left.plot(series.x, series.y, marker="o", markersize=3.5, label=series.label)
    for series in per_request:
        right.plot(series.x, series.y, marker="s", markersize=3.5, label=series.label)
    left.set_title("cumulative training steps")
    right.set_title("training steps per request")
    for ax, runs in ((left, cumulative), (right, per_request)):
        ax.set_ylabel("optimizer steps")
        _from_zero(ax, runs)
        _request_axis(ax, [x for s in cumulative for x in s.x])
    left.legend(fontsize=8, loc="upper left")
    return png_bytes(fig)


def drift_curves(to_base: Sequence[Series], to_previous: Sequence[Series]) -> bytes:
    """L2 norm of theta - base (left) and theta - previous request (right) after each request."""
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for ax, runs, title in ((left, to_base, "‖θ − θ_base‖"), (right, to_previous, "‖θ − θ_previous‖")):
        for series in runs:
            ax.plot(series.x, series.y, marker="o", markersize=3.5, label=series.label)
        ax.set_title(title)
        ax.set_ylabel("L2 norm (trainable keys)")
        _from_zero(ax, runs)
        _request_axis(ax, [x for s in runs for x in s.x])
    left.legend(fontsize=8, loc="upper left")
    return png_bytes(fig)


def short_layer_name(key: str) -> str:
    """A parameter key without the parts every cross-attention key shares."""
    for noise in ("transformer_blocks.", "attentions.", ".weight", "unet."):
        key = key.replace(noise, "")
    return key.replace("down_blocks", "down").replace("up_blocks", "up").replace("mid_block", "mid")


def layer_drift(layers: Mapping[str, tuple[float, float]], title: str) -> bytes:
    """Horizontal bars per layer: drift to the base and to the previous request."""
    names = list(layers)
    y = np.arange(len(names))
    base = [layers[k][0] for k in names]
    prev = [layers[k][1] for k in names]
    fig = Figure(figsize=(8.0, 1.2 + 0.22 * len(names)), layout="constrained")
    ax = fig.subplots()
    ax.barh(y - 0.2, base, height=0.4, label="to base")
    ax.barh(y + 0.2, prev, height=0.4, label="to previous")
    ax.set_yticks(y, [short_layer_name(k) for k in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("L2 norm")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
    return png_bytes(fig)


def accuracy_heatmap(
    row_labels: Sequence[str], columns: Sequence[tuple[str, str]], values: np.ndarray, erased: np.ndarray, title: str
) -> bytes:
    """Request x concept accuracy; erased cells outlined, styles and objects split by a line.

    ``columns`` are (concept, kind) pairs, ``values`` [rows, columns] accuracies in percent
    (NaN = not measured), ``erased`` a boolean mask of the same shape.
    """
    n_rows, n_cols = values.shape
    fig = Figure(figsize=(max(6.0, 1.8 + 0.34 * n_cols), max(2.5, 1.6 + 0.3 * n_rows)), layout="constrained")
    ax = fig.subplots()
    shown = np.ma.masked_invalid(values)
    image = ax.imshow(shown, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label="accuracy %")
    ax.set_xticks(range(n_cols), [c for c, _ in columns], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n_rows), row_labels, fontsize=7)
    if n_rows * n_cols <= 600:
        for i in range(n_rows):
            for j in range(n_cols):
                if np.isfinite(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=5.5,
                            fontweight="bold" if erased[i, j] else "normal")
    for i, j in zip(*np.nonzero(erased)):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.4))
    kinds = [k for _, k in columns]
    for j in range(1, n_cols):
        if kinds[j] != kinds[j - 1]:
            ax.axvline(j - 0.5, color="black", linewidth=1.5)
    ax.set_title(title + "  (outlined: erased at that request)", fontsize=10)
    return png_bytes(fig)


def semantic_scatter(
    similarity: Sequence[float], drop: Sequence[float], k_change: Sequence[float], v_change: Sequence[float],
    request: Sequence[int], in_domain: Sequence[bool], domain: str, title: str,
) -> bytes:
    """Accuracy drop vs text similarity to the target (left) and K/V output change vs similarity
    (right), pooled over requests. Correlations (in the panel titles) are over the retained
    concepts of the target's kind (``in_domain``), as the analysis defines them; the other
    kind's points are drawn in grey for context."""
    sim, drp, kc, vc = (np.asarray(v, dtype=float) for v in (similarity, drop, k_change, v_change))
    mask = np.asarray(in_domain, dtype=bool)
    fig = Figure(figsize=(10.0, 3.9), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.scatter(sim[~mask], drp[~mask], s=12, marker="x", color="0.65", label="other kind")
    points = left.scatter(sim[mask], drp[mask], c=np.asarray(request)[mask], cmap="viridis", s=20, label=domain)
    left.set_title(f"drop vs similarity ({domain}): Pearson r = {fmt_r(pearson(sim[mask], drp[mask]))}", fontsize=10)
    left.set_xlabel("text-embedding cosine similarity to the target")
    left.set_ylabel("accuracy drop (points)")
    left.axhline(0, color="grey", linewidth=0.8)
    left.legend(fontsize=7, loc="upper left")
    if mask.any():
        fig.colorbar(points, ax=left, label="request")
    right.scatter(sim[~mask], kc[~mask], s=12, marker="x", color="0.75")
    right.scatter(sim[~mask], vc[~mask], s=12, marker="+", color="0.6")
    right.scatter(sim[mask], kc[mask], s=18, marker="o", label="K")
    right.scatter(sim[mask], vc[mask], s=18, marker="^", label="V")
    right.set_title(
        f"K/V change vs similarity: r_K = {fmt_r(pearson(sim[mask], kc[mask]))}, r_V = {fmt_r(pearson(sim[mask], vc[mask]))}",
        fontsize=10,
    )
    right.set_xlabel("text-embedding cosine similarity to the target")
    right.set_ylabel("relative change of K / V output")
    right.legend(fontsize=8, loc="upper left")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return png_bytes(fig)


def shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale an [H, W, 3] uint8 image by the smallest integer factor that fits ``max_side``
    (box filter: the tiny world's 2x nearest-upscaled grids come back to their exact pixels)."""
    factor = max(1, math.ceil(max(image.shape[:2]) / max_side))
    if factor == 1:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).reduce(factor))


def grid_figure(
    image: np.ndarray, styles: Sequence[str], objects: Sequence[str], erased_styles: set[str],
    erased_objects: set[str], title: str,
) -> bytes:
    """An evaluation grid (rows styles, columns objects) with its labels; erased concepts'
    labels in red and their rows / columns outlined.

    The grid is placed pixel for pixel (``figimage``): no resampling, so the PNG stays as
    small as the grid itself and every tile is shown exactly as sampled.
    """
    from matplotlib.transforms import IdentityTransform

    height, width = image.shape[:2]
    labelled = bool(styles) and bool(objects) and height % len(styles) == 0 and width % len(objects) == 0
    left, top, bottom = (118 if labelled else 8), 22, (64 if labelled else 8)
    fig = Figure(figsize=((left + width + 8) / 100, (top + height + bottom) / 100), dpi=100)
    pixels = IdentityTransform()  # figure pixels, origin bottom-left (dpi 100 in the figure and the PNG)
    fig.figimage(image, xo=left, yo=bottom, origin="upper")
    fig.text(left + width / 2, bottom + height + 5, title, ha="center", va="bottom", fontsize=9, transform=pixels)
    if labelled:
        th, tw = height / len(styles), width / len(objects)
        for i, name in enumerate(styles):
            red = name in erased_styles
            if red:
                fig.add_artist(Rectangle((left, bottom + height - (i + 1) * th), width, th, fill=False,
                                         edgecolor=ERASED_COLOR, linewidth=1.5, transform=pixels))
            fig.text(left - 5, bottom + height - (i + 0.5) * th, name, ha="right", va="center", fontsize=6.5,
                     transform=pixels, color=ERASED_COLOR if red else "black", fontweight="bold" if red else "normal")
        for j, name in enumerate(objects):
            red = name in erased_objects
            if red:
                fig.add_artist(Rectangle((left + j * tw, bottom), tw, height, fill=False,
                                         edgecolor=ERASED_COLOR, linewidth=1.5, transform=pixels))
            fig.text(left + (j + 0.5) * tw, bottom - 4, name, rotation=60, ha="right", va="top", fontsize=6.5,
                     rotation_mode="anchor", transform=pixels, color=ERASED_COLOR if red else "black",
                     fontweight="bold" if red else "normal")
    return png_bytes(fig, dpi=100)
