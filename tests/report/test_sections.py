"""The section builders' pure helpers: grid thinning and sizing, column headers, callback names."""

from __future__ import annotations

from lightning_unlearn.report.runs import METRIC_NAMES, RequestRecord
from lightning_unlearn.report.sections import GRID_MAX_SIDE, RESULT_HEADERS, callback_name, grid_max_side, thin_out


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


def test_callback_names_drop_only_settings_that_repeat_the_class():
    assert callback_name("DriftRecorder{'name': 'DriftRecorder'}") == "DriftRecorder"
    assert callback_name("AnchorRegularizer{'name': 'l2'}") == "AnchorRegularizer{'name': 'l2'}"
    assert callback_name("l2_base") == "l2_base"
