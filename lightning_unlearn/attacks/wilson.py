"""A private 95% Wilson score interval for attack success rates.

Kept inside the attacks package on purpose: the project's shared interval module
(``lightning_unlearn.intervals``) is being written in parallel; at merge this one function is
swapped for the shared one and deleted.
"""

from __future__ import annotations

import math

Z_95 = 1.96
"""Standard-normal quantile of a two-sided 95% interval."""


def wilson_interval_95(hits: int, n: int) -> tuple[float, float]:
    """Wilson score interval (95%, z = 1.96) of a proportion ``hits / n``, in percent.

    Unlike the normal approximation it stays inside [0, 100] and is not empty at 0 or n hits,
    which matters for the few images an attack is scored on. ``n == 0`` gives (nan, nan).
    """
    if n <= 0:
        return float("nan"), float("nan")
    p = hits / n
    z2 = Z_95 * Z_95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z_95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return round(100 * max(0.0, centre - half), 2), round(100 * min(1.0, centre + half), 2)
