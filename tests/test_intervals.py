"""The statistics of the run folder and the report (``lightning_unlearn.intervals``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lightning_unlearn.intervals import (
    Z_95, bound_keys, difference_interval, format_interval, half_width, mean_of_proportions, t_interval, t_quantile,
    wilson,
)


@pytest.mark.parametrize(("hits", "n", "low", "high"), [
    # By hand: centre (p + z²/2n) / (1 + z²/n), half z sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n).
    (0, 12, 0.0, 100 * Z_95**2 / (12 + Z_95**2)),      # 0 hits: the upper bound is z² / (n + z²)
    (6, 12, 25.3782, 74.6218),
    (12, 12, 100 * 12 / (12 + Z_95**2), 100.0),
    (45, 48, 83.1644, 97.8518),                         # p .9375: centre .905081, half .073437
])
def test_wilson_matches_hand_computed_bounds(hits, n, low, high):
    got = wilson(hits, n)
    assert got[0] == pytest.approx(low, abs=1e-3) and got[1] == pytest.approx(high, abs=1e-3)
    assert wilson(0, 12)[0] == 0.0 and wilson(12, 12)[1] == 100.0  # exactly, not a few ulps off
    assert all(math.isnan(b) for b in wilson(0, 0))


def test_wilson_covers_a_known_rate_about_95_percent_of_the_time():
    # Nominal 95%: over many binomial draws the interval holds the true p about that often
    # (Wilson's coverage oscillates around the nominal with n and p; within 2 points here).
    rng = np.random.default_rng(0)
    for p, n in ((0.9, 48), (0.5, 12), (0.97, 192)):
        draws = rng.binomial(n, p, size=4000)
        covered = np.mean([wilson(k, n)[0] <= 100 * p <= wilson(k, n)[1] for k in draws])
        assert 0.93 <= covered <= 0.985, (p, n, covered)


def test_mean_of_proportions_is_the_mean_of_wilson_bounds_and_covers_a_known_mean():
    assert mean_of_proportions([30, 40], 48) == tuple(np.mean([wilson(30, 48), wilson(40, 48)], axis=0))
    assert mean_of_proportions([45], 48) == wilson(45, 48)  # one domain: Wilson's interval
    assert all(math.isnan(b) for b in mean_of_proportions([0, 0], 0))
    # Independent classifiers on the same images: at least nominal coverage (it is conservative).
    rng = np.random.default_rng(2)
    n, p_style, p_object = 48, 0.9, 0.7
    style, obj = rng.binomial(n, p_style, 3000), rng.binomial(n, p_object, 3000)
    truth = 100 * (p_style + p_object) / 2
    covered = np.mean([lo <= truth <= hi for lo, hi in (mean_of_proportions([s, o], n) for s, o in zip(style, obj))])
    assert covered >= 0.95


def test_t_interval_over_replicates():
    mean, (low, high) = t_interval([90.0, 92.0, 94.0])
    # s = 2, n = 3: half = t(2) * 2 / sqrt(3) = 4.3027 * 1.1547
    assert mean == 92.0 and high - mean == pytest.approx(4.3027 * 2 / math.sqrt(3), abs=1e-4)
    assert low == pytest.approx(2 * mean - high)
    one_mean, one = t_interval([88.0, float("nan")])  # one finite replicate: no spread to measure
    assert one_mean == 88.0 and all(math.isnan(b) for b in one)
    assert math.isnan(t_interval([])[0])
    assert t_quantile(1) == 12.7062 and t_quantile(31) == pytest.approx(2.0395, abs=1e-4)
    assert t_quantile(1000) == pytest.approx(1.9623, abs=1e-4)


def test_interval_text_and_keys():
    assert format_interval(94.23, (90.06, 96.81)) == "94.2 [90.1, 96.8]"
    assert format_interval(94.23, (float("nan"), float("nan"))) == "94.2"
    assert format_interval(94.23, None) == "94.2" and format_interval(float("nan"), (1.0, 2.0)) == "-"
    assert bound_keys("IRA") == ("IRA_lo", "IRA_hi")


@pytest.mark.parametrize("config", ["esd_styles", "esd_objects", "ca_styles", "ca_objects"])
def test_tiny_world_configs_evaluate_enough_images_for_a_5_point_ira_interval(config):
    import yaml

    from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES

    settings = yaml.safe_load(open(f"configs/tinyworld/{config}_sequential.yaml"))
    seeds = settings["stream"]["evaluation"].get("seeds_per_prompt", 1)
    erased = len(settings["data"]["requests"])
    # After the last request the fewest images are left: the retained concepts' row or column.
    retained = (len(STYLES) - erased) * len(OBJECTS) if "styles" in config else len(STYLES) * (len(OBJECTS) - erased)
    n = seeds * retained
    assert half_width(wilson(0.9 * n, n)) <= 5.0, f"{config}: {n} images give +-{half_width(wilson(0.9 * n, n)):.1f}"


def test_difference_interval_reproduces_newcombes_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 - 48/80, method 10
    # (his hybrid score interval, MOVER on two Wilson intervals): 0.0524 to 0.3339.
    difference, (low, high) = difference_interval(100 * 56 / 70, wilson(56, 70), 100 * 48 / 80, wilson(48, 80))
    assert difference == pytest.approx(20.0)
    assert low == pytest.approx(5.24, abs=0.01) and high == pytest.approx(33.39, abs=0.01)
    assert all(math.isnan(b) for b in difference_interval(50.0, (float("nan"),) * 2, 40.0, (30.0, 50.0))[1])


def test_difference_interval_covers_a_known_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    for (p, n), (q, m) in (((0.9, 144), (0.6, 144)), ((0.5, 48), (0.45, 60))):
        covered = []
        for a, b in zip(rng.binomial(n, p, size=3000), rng.binomial(m, q, size=3000)):
            _, (low, high) = difference_interval(100 * a / n, wilson(a, n), 100 * b / m, wilson(b, m))
            covered.append(low <= 100 * (p - q) <= high)
        assert 0.93 <= np.mean(covered) <= 0.98, (p, q, np.mean(covered))
