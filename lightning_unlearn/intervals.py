"""95% intervals for the evaluation's numbers and for replicate means.

Every interval here is computed from counts (hits and totals), never from images, so the same
counts give the same interval bit for bit: on resume, from the base evaluation's cache, and
after counts are gathered from several processes. Three rules (docs/statistics.md):

- :func:`wilson`: the Wilson score interval of one proportion ``hits / n`` (UA, UA_latest, and
  IRA / CRA / style_acc / object_acc when they are one classifier's accuracy on one image set).
- :func:`mean_of_proportions`: the mean over several domains of one proportion each on the
  same images (IRA of a stream that erases styles and objects: the mean of both classifiers'
  accuracies): the mean of their Wilson bounds.
- :func:`t_interval`: the mean of replicate values (one number per replicate run) with
  Student's t interval; with one replicate there is no spread to measure (NaN bounds).

Values are percentages (0-100) throughout, as in ``metrics.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z_95 = 1.959963984540054
"""The standard normal's 97.5% quantile (two-sided 95%)."""

Interval = tuple[float, float]
NAN_INTERVAL: Interval = (float("nan"), float("nan"))


def wilson(hits: float, n: float, z: float = Z_95) -> Interval:
    """Wilson score interval of the proportion ``hits / n``, in percent; NaN bounds when ``n`` is 0.

    Unlike the normal approximation it stays inside [0, 100] and is not zero-width at 0 or n hits
    (0 of 12 gives [0, 24.3]).
    """
    if n <= 0:
        return NAN_INTERVAL
    p = hits / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At 0 or n hits the formula's bound is exactly 0 / 1; floating point leaves a few ulps.
    low = 0.0 if hits <= 0 else max(0.0, centre - half)
    high = 1.0 if hits >= n else min(1.0, centre + half)
    return 100.0 * low, 100.0 * high


def mean_of_proportions(hits: Sequence[int], n: int, z: float = Z_95) -> Interval:
    """Interval (percent) of the mean of several proportions ``hits[d] / n`` over the same ``n``
    images (IRA of a stream that erases styles and objects: both classifiers on the retained
    images): the mean of the proportions' Wilson bounds. NaN bounds when ``n`` is 0.

    Exact when the classifiers' errors fall on the same images, wider than needed when they are
    independent (their errors partly cancel in the mean), so it covers at least as often as one
    Wilson interval; with one proportion it is that proportion's Wilson interval. (A bootstrap
    that redraws each (style, object) cell's hits from its own rate would not do: with one image
    per prompt, the default, every cell's rate is 0 or 1 and the redraws never vary.)
    """
    if n <= 0 or not hits:
        return NAN_INTERVAL
    bounds = [wilson(h, n, z) for h in hits]
    return float(np.mean([b[0] for b in bounds])), float(np.mean([b[1] for b in bounds]))


def t_quantile(df: int) -> float:
    """Student's t 97.5% quantile (two-sided 95%) with ``df`` degrees of freedom: the table for
    1-30, then the Cornish-Fisher expansion around the normal quantile (error < 1e-4)."""
    if df < 1:
        raise ValueError(f"a t quantile needs at least 1 degree of freedom, got {df}")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z = Z_95
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


_T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
          2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
          2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
"""t quantiles for 1-30 degrees of freedom (four decimals, as printed in standard tables)."""


def t_interval(values: Sequence[float]) -> tuple[float, Interval]:
    """``(mean, (low, high))`` of the finite ``values`` with Student's t 95% interval over them.

    NaN mean and bounds without finite values; NaN bounds with one (no spread to measure: show
    that replicate's own interval instead).
    """
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return float("nan"), NAN_INTERVAL
    mean = float(finite.mean())
    if finite.size == 1:
        return mean, NAN_INTERVAL
    half = t_quantile(finite.size - 1) * float(finite.std(ddof=1)) / math.sqrt(finite.size)
    return mean, (mean - half, mean + half)


def bound_keys(metric: str) -> tuple[str, str]:
    """The keys of ``metric``'s interval bounds in ``metrics.json`` and the results rows."""
    return f"{metric}_lo", f"{metric}_hi"


def half_width(interval: Interval) -> float:
    """Half the interval's width (NaN for a NaN interval)."""
    return (interval[1] - interval[0]) / 2


def format_interval(value: float, interval: Interval | None, digits: int = 1) -> str:
    """``94.2 [90.1, 96.8]``; the value alone when the interval is absent or NaN; "-" for NaN."""
    if value is None or not math.isfinite(value):
        return "-"
    text = f"{value:.{digits}f}"
    if interval is None or not all(b is not None and math.isfinite(b) for b in interval):
        return text
    return f"{text} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def difference_interval(a: float, a_interval: Interval, b: float, b_interval: Interval) -> tuple[float, Interval]:
    """``(a - b, (low, high))``: the 95% interval of the difference of two independent estimates
    from their own 95% intervals, by MOVER (Zou & Donner 2008; for two Wilson intervals it is
    Newcombe's hybrid score interval): each bound moves from ``a - b`` by the two estimates'
    distances to the bounds that push it that way, combined in quadrature. NaN bounds when either
    interval is NaN (one replicate without its own interval: no spread to combine)."""
    difference = a - b
    bounds = (*a_interval, *b_interval)
    if not all(v is not None and math.isfinite(v) for v in (a, b, *bounds)):
        return difference, NAN_INTERVAL
    (a_lo, a_hi), (b_lo, b_hi) = a_interval, b_interval
    low = difference - math.sqrt((a - a_lo) ** 2 + (b_hi - b) ** 2)
    high = difference + math.sqrt((a_hi - a) ** 2 + (b - b_lo) ** 2)
    return difference, (low, high)
