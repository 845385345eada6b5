"""The rules that turn our numbers and their intervals into a verdict on one of the paper's claims.

Every verdict is one of :data:`VERDICTS`. The rules are written out in :data:`RULES`, and
``findings.md`` prints each one next to the verdict it produced, so a reader can check it:

- a claimed *difference* (sequential loses retention; a regularizer retains more) holds when the
  95% interval of the difference (:func:`lightning_unlearn.intervals.difference_interval`) lies
  above 0, and does not hold when it lies below the smallest effect we would call a finding
  (:data:`MARGIN` points): then even the best case inside the interval is smaller than that;
  anything else is inconclusive: the images we have cannot tell;
- a claimed *ratio* of two deterministic quantities (training steps, parameter drift) holds at or
  above the stated factor, does not hold at or below 1, and is inconclusive in between;
- a claimed *correlation* holds when the interval of the mean Pearson r lies above 0 and does not
  hold when it lies below :data:`WEAK_R` (it rules out a moderate link).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from lightning_unlearn.intervals import difference_interval, format_interval, t_interval

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE, NOT_RUN = "holds", "does not hold", "inconclusive", "not run"
VERDICTS = (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE, NOT_RUN)
"""A check's verdict; ``not run``: the runs it needs are not finished in this study."""
MARGIN = 10.0
"""Percentage points: the smallest difference in accuracy we would call a finding. One image moves
a 48-image accuracy by 2 points; the paper's gaps are 15-60 points."""
COST_FACTOR = 1.5
"""Simultaneous must cost at least this many times sequential's cumulative steps (paper: 3.7x at 12)."""
DRIFT_FACTOR = 1.5
"""Sequential drift must be at least this many times simultaneous's (paper: about 2.3x)."""
WEAK_R = 0.3
"""A Pearson r below this is at most a weak link."""

RULES = {
    "difference": (f"holds if the 95% interval of the difference lies above 0; does not hold if it lies below "
                   f"+{MARGIN:g} points (rules out an effect of {MARGIN:g} points or more); otherwise inconclusive"),
    "cost": (f"holds if simultaneous's cumulative steps at the last request are >= {COST_FACTOR:g}x sequential's and "
             f"its last request trained more steps than its first; does not hold if they are <= sequential's; "
             f"otherwise inconclusive"),
    "drift": (f"holds if sequential's final drift from the base is >= {DRIFT_FACTOR:g}x simultaneous's; does not "
              f"hold if it is <= simultaneous's; otherwise inconclusive"),
    "correlation": (f"holds if the 95% t interval of the mean per-request Pearson r lies above 0; does not hold if "
                    f"it lies below {WEAK_R:g} (rules out a moderate link); otherwise inconclusive"),
    "all": ("holds if every check holds; does not hold if a check does not hold and none holds; otherwise "
            "inconclusive (checks that were not run are left out)"),
}
"""Each rule's text, as printed next to the verdicts."""


@dataclass(frozen=True)
class Estimate:
    """A number with its 95% interval (NaN bounds: no interval, e.g. one replicate of a count)."""

    value: float
    low: float = float("nan")
    high: float = float("nan")

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def text(self, digits: int = 1) -> str:
        """``12.5 [3.1, 21.0]``, or the value alone without an interval; ``-`` for NaN."""
        return format_interval(self.value, (self.low, self.high) if self.has_interval else None, digits)

    def minus(self, other: Estimate) -> Estimate:
        """``self - other`` with the MOVER interval of a difference of independent estimates."""
        value, (low, high) = difference_interval(self.value, (self.low, self.high), other.value, (other.low, other.high))
        return Estimate(value, low, high)

    def mean_with(self, other: Estimate) -> Estimate:
        """``(self + other) / 2`` (e.g. mean retention over IRA and CRA), its interval by MOVER for
        a sum: each side's half-widths combined in quadrature."""
        value = (self.value + other.value) / 2
        if not (self.has_interval and other.has_interval):
            return Estimate(value)
        low = value - math.hypot(self.value - self.low, other.value - other.low) / 2
        high = value + math.hypot(self.high - self.value, other.high - other.value) / 2
        return Estimate(value, low, high)


def mean_estimate(values: Sequence[float]) -> Estimate:
    """The mean of ``values`` with its t interval (no interval from one value)."""
    mean, (low, high) = t_interval(list(values))
    return Estimate(mean, low, high)


def directional_verdict(estimate: Estimate, below: float) -> str:
    """A claimed positive quantity: holds when its interval lies above 0, does not hold when it
    lies below ``below``, inconclusive otherwise (and without an interval)."""
    if not math.isfinite(estimate.value):
        return NOT_RUN
    if not estimate.has_interval:
        return INCONCLUSIVE
    if estimate.low > 0:
        return HOLDS
    if estimate.high < below:
        return DOES_NOT_HOLD
    return INCONCLUSIVE


def difference_verdict(difference: Estimate, margin: float = MARGIN) -> str:
    """:data:`RULES` ``difference`` applied to a claimed positive difference."""
    return directional_verdict(difference, margin)


def ratio_verdict(ratio: float, factor: float) -> str:
    """A claimed ratio >= ``factor`` of two deterministic quantities (:data:`RULES` cost / drift)."""
    if not math.isfinite(ratio):
        return NOT_RUN
    if ratio >= factor:
        return HOLDS
    if ratio <= 1.0:
        return DOES_NOT_HOLD
    return INCONCLUSIVE


def correlation_verdict(r: Estimate) -> str:
    """:data:`RULES` ``correlation`` applied to a claimed positive correlation."""
    return directional_verdict(r, WEAK_R)


def overall_verdict(verdicts: Sequence[str]) -> str:
    """:data:`RULES` ``all``: one verdict for a finding from its checks' verdicts."""
    ran = [v for v in verdicts if v != NOT_RUN]
    if not ran:
        return NOT_RUN
    if all(v == HOLDS for v in ran):
        return HOLDS
    if DOES_NOT_HOLD in ran and HOLDS not in ran:
        return DOES_NOT_HOLD
    return INCONCLUSIVE
