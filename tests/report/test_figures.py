"""The report's figures (``report.figures``): correlations, grid downscaling and pixel-exact grid placement."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from lightning_unlearn.report import figures as figs


def test_pearson_on_known_values_and_undefined_cases():
    assert math.isclose(figs.pearson([1, 2, 3, 4], [8, 6, 4, 2]), -1.0)
    x, y = [0.1, 0.4, 0.2, 0.9, 0.5], [3.0, 1.0, 2.5, 0.2, 1.1]
    assert math.isclose(figs.pearson(x, y), float(np.corrcoef(x, y)[0, 1]))
    # NaN pairs are dropped, not propagated.
    assert math.isclose(figs.pearson([*x, float("nan")], [*y, 5.0]), figs.pearson(x, y))
    assert math.isnan(figs.pearson([1, 2], [2, 1]))  # fewer than 3 points
    assert math.isnan(figs.pearson([1, 2, 3], [5, 5, 5]))  # constant side
    assert figs.fmt_r(float("nan")) == "n/a" and figs.fmt_r(-0.6254) == "-0.625"


def test_shrink_recovers_a_nearest_upscaled_grid_exactly():
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    upscaled = np.kron(tiles, np.ones((2, 2, 1), dtype=np.uint8))  # what Evaluator.grid writes
    assert np.array_equal(figs.shrink(upscaled, 128), tiles)
    assert figs.shrink(tiles, 512) is tiles  # already small enough: untouched
    assert max(figs.shrink(upscaled, 100).shape[:2]) <= 100


def test_grid_figure_places_the_grid_pixel_for_pixel():
    rng = np.random.default_rng(1)
    grid = rng.integers(0, 256, size=(4 * 32, 3 * 32, 3), dtype=np.uint8)
    png = figs.grid_figure(grid, ["Van Gogh", "Cartoon", "Monet", "Pop Art"], ["circle", "star", "house"],
                           set(), set(), "base model")
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        shot = np.asarray(image)
    # Somewhere in the figure the grid appears unresampled: find its top-left pixel row by row.
    h, w = grid.shape[:2]
    found = [(y, x) for y in range(shot.shape[0] - h + 1) for x in range(shot.shape[1] - w + 1)
             if np.array_equal(shot[y, x], grid[0, 0]) and np.array_equal(shot[y:y + h, x:x + w], grid)]
    assert len(found) == 1


def test_grid_figure_outlines_erased_rows_in_red():
    grid = np.full((2 * 32, 2 * 32, 3), 255, dtype=np.uint8)
    plain = figs.grid_figure(grid, ["Van Gogh", "Monet"], ["circle", "star"], set(), set(), "t")
    marked = figs.grid_figure(grid, ["Van Gogh", "Monet"], ["circle", "star"], {"Van Gogh"}, set(), "t")

    def reddish(png: bytes) -> int:
        rgb = np.asarray(Image.open(io.BytesIO(png))).astype(int)
        return int(((rgb[..., 0] > 150) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)).sum())

    assert reddish(plain) == 0 and reddish(marked) > 100


def test_charts_render_with_missing_values():
    series = [figs.Series("a", [0, 1, 2], [float("nan"), 80.0, 70.0]), figs.Series("b", [0, 1], [100.0, 90.0])]
    for png in (figs.metric_curves({"UA": series, "IRA": series}), figs.cost_curves(series, series),
                figs.drift_curves(series, series)):
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and image.size[0] > 600
    values = np.array([[100.0, float("nan")], [0.0, 50.0]])
    png = figs.accuracy_heatmap(["0 base", "1 Monet"], [("Monet", "style"), ("star", "object")], values,
                                np.array([[False, False], [True, False]]), "run")
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_curves_join_the_evaluated_requests_of_a_sparsely_evaluated_run():
    nan = float("nan")
    series = figs.Series("every 4th", [0, 1, 2, 3, 4, 5, 8], [100.0, nan, nan, nan, 80.0, nan, 70.0])
    assert figs.finite_points(series) == ([0, 4, 8], [100.0, 80.0, 70.0])


def test_curves_draw_each_interval_as_a_band_and_bars_draw_whiskers():
    from matplotlib.collections import LineCollection, PolyCollection

    nan = float("nan")
    banded = figs.Series("a", [0, 1, 2], [100.0, 80.0, nan], [98.0, 70.0, nan], [100.0, 88.0, nan])
    plain = figs.Series("old folder", [0, 1], [100.0, 90.0])  # no bounds: a line, no band
    fig = figs.metric_curves_figure({"IRA": [banded, plain]})
    [ax] = fig.axes
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1  # one band, for the series with bounds
    xs = bands[0].get_paths()[0].vertices[:, 0]
    assert xs.min() == 0 and xs.max() == 1  # over the finite points only
    assert figs.finite_band(plain) == ([], [], [])

    bars = figs.metric_bars_figure({"run": {"UA": figs.Bar(90.0, 80.0, 95.0), "IRA": figs.Bar(70.0)}})
    [ax] = [a for a in bars.axes if a.patches]
    whiskers = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(whiskers) == 1 and len(whiskers[0].get_segments()) == 1  # UA has bounds, IRA none
    (x0, low), (x1, high) = whiskers[0].get_segments()[0]
    assert (low, high) == (80.0, 95.0)
    assert Image.open(io.BytesIO(figs.metric_bars({"run": {"UA": figs.Bar(90.0, 80.0, 95.0)}}))).format == "PNG"
