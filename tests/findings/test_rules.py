"""Verdict rules (``lightning_unlearn.findings.rules``) on hand-made numbers."""

from __future__ import annotations

import math

import pytest

from lightning_unlearn.findings.rules import (
    DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, MARGIN, NOT_RUN, RULES, Estimate, correlation_verdict, difference_verdict,
    mean_estimate, overall_verdict, ratio_verdict,
)

NAN = float("nan")


@pytest.mark.parametrize(("difference", "verdict"), [
    (Estimate(30.0, 12.0, 45.0), HOLDS),                   # clear of 0
    (Estimate(3.0, 0.5, 6.0), HOLDS),                      # small but clear of 0: the direction holds
    (Estimate(1.0, -4.0, 6.0), DOES_NOT_HOLD),             # rules out a 10-point effect
    (Estimate(-20.0, -35.0, -8.0), DOES_NOT_HOLD),         # the opposite, clearly
    (Estimate(5.0, -6.0, 16.0), INCONCLUSIVE),             # could be 0, could be 15
    (Estimate(5.0), INCONCLUSIVE),                         # no interval: cannot tell
    (Estimate(NAN), NOT_RUN),
])
def test_difference_verdicts(difference, verdict):
    assert difference_verdict(difference) == verdict


def test_the_margin_is_the_boundary_of_does_not_hold():
    assert difference_verdict(Estimate(0.0, -MARGIN + 0.1, MARGIN - 0.1)) == DOES_NOT_HOLD
    assert difference_verdict(Estimate(0.0, -MARGIN - 0.1, MARGIN + 0.1)) == INCONCLUSIVE


def test_ratio_and_correlation_verdicts():
    assert [ratio_verdict(r, 1.5) for r in (3.7, 1.5, 1.2, 1.0, 0.8, NAN)] == [
        HOLDS, HOLDS, INCONCLUSIVE, DOES_NOT_HOLD, DOES_NOT_HOLD, NOT_RUN]
    assert correlation_verdict(Estimate(0.6, 0.4, 0.8)) == HOLDS
    assert correlation_verdict(Estimate(0.05, -0.1, 0.2)) == DOES_NOT_HOLD
    assert correlation_verdict(Estimate(0.2, -0.1, 0.5)) == INCONCLUSIVE
    assert correlation_verdict(Estimate(0.9)) == INCONCLUSIVE


def test_overall_verdict_leaves_out_checks_not_run():
    assert overall_verdict([HOLDS, HOLDS, NOT_RUN]) == HOLDS
    assert overall_verdict([DOES_NOT_HOLD, INCONCLUSIVE]) == DOES_NOT_HOLD
    assert overall_verdict([HOLDS, DOES_NOT_HOLD]) == INCONCLUSIVE
    assert overall_verdict([NOT_RUN]) == NOT_RUN
    assert set(RULES) == {"difference", "cost", "drift", "correlation", "all"}


def test_estimates_combine_by_mover():
    a, b = Estimate(80.0, 70.0, 88.0), Estimate(60.0, 50.0, 69.0)
    d = a.minus(b)
    assert d.value == 20.0 and d.low == pytest.approx(20 - math.hypot(10, 9)) and d.high == pytest.approx(20 + math.hypot(8, 10))
    m = a.mean_with(b)
    assert m.value == 70.0 and m.low == pytest.approx(70 - math.hypot(10, 10) / 2)
    assert not Estimate(1.0).mean_with(a).has_interval
    assert mean_estimate([0.5]).value == 0.5 and not mean_estimate([0.5]).has_interval
    assert mean_estimate([0.2, 0.4, 0.6]).has_interval
    assert Estimate(12.345, 10.0, 15.0).text() == "12.3 [10.0, 15.0]" and Estimate(NAN).text() == "-"
