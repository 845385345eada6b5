"""The section builders' pure helpers: grid thinning and sizing, column headers, collapse marks."""

from __future__ import annotations

from lightning_unlearn.report.runs import METRIC_NAMES, RequestRecord
from lightning_unlearn.report.sections import (
    GRID_MAX_SIDE, RESULT_HEADERS, collapse_cell, grid_max_side, metric_cell, thin_out,
)


def test_large_studies_thin_out_and_shrink_their_grids():
    requests = [RequestRecord(index=i, concept=f"c{i}", kind="style", folder=None) for i in range(13)]
    assert thin_out(requests, 20) == requests
    kept = [r.index for r in thin_out(requests, 5)]
    assert kept[0] == 0 and kept[-1] == 12 and len(kept) == 5
    assert grid_max_side(13) == GRID_MAX_SIDE
    assert GRID_MAX_SIDE // 2 <= grid_max_side(26) < GRID_MAX_SIDE and grid_max_side(500) == GRID_MAX_SIDE // 2


def test_results_table_has_every_metric_with_its_readable_header():
    columns = {key: (header, digits) for key, header, digits in RESULT_HEADERS}
    assert [key for key, _, _ in RESULT_HEADERS][3:3 + len(METRIC_NAMES)] == list(METRIC_NAMES)
    assert columns["UA_latest"] == ("UA latest", 1) and columns["object_acc"] == ("object acc", 1)
    assert columns["request"] == ("request", 0) and columns["train_seconds"] == ("train s", 1)


def test_ua_at_a_collapsed_checkpoint_is_marked_not_meaningful_and_old_rows_read_as_not_measured():
    flagged = {"UA": 94.0, "UA_latest": 100.0, "IRA": 9.1, "collapsed": True}
    assert metric_cell(flagged, "UA") == "94.0 (collapsed)" and metric_cell(flagged, "UA_latest") == "100.0 (collapsed)"
    assert metric_cell(flagged, "IRA") == "9.1" and collapse_cell(flagged) == "yes"
    healthy = {"UA": 94.0, "collapsed": False}
    assert metric_cell(healthy, "UA") == "94.0" and collapse_cell(healthy) == "no"
    older = {"UA": 94.0}  # a results row written before the collapse indicator
    assert metric_cell(older, "UA") == "94.0" and collapse_cell(older) == "-"
    not_evaluated = {"UA": float("nan"), "collapsed": None}
    assert metric_cell(not_evaluated, "UA") == "-" and collapse_cell(not_evaluated) == "-"
