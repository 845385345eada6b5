"""The run folder's format has one owner: names and their inverse, the results table, the lock."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from lightning_unlearn.report import runs
from lightning_unlearn.requests import Request
from lightning_unlearn.run_folder import (
    METRIC_COLUMNS, METRIC_NAMES, RESULT_COLUMNS, RunFolder, RunFolderBusyError, checkpoint_file_name, checkpoint_request_number,
    parse_request_folder, request_folder_name, result_row, results_csv,
)

REPO = Path(__file__).resolve().parents[1]
FILE_NAMES = ("ledger.json", "results.csv", "results.json", "run.json", "stream_settings.json", "weights.safetensors",
              "merged.safetensors", "metrics.json", "manifest.json", "FAILED.json")


@pytest.mark.parametrize("index, served, name", [
    (0, None, "00-base"), (0, Request("Van Gogh", "style"), "01-van-gogh"), (11, Request("Pop Art", "style"), "12-pop-art"),
])
def test_request_folder_names_and_their_inverse(index, served, name):
    assert request_folder_name(index, served) == name
    assert parse_request_folder(name) == ((0, "base") if served is None else (index + 1, served.slug))


def test_names_that_are_not_request_folders_parse_to_none():
    assert [parse_request_folder(n) for n in ("base", "-x", "01", "x-01-a")] == [None] * 4
    assert checkpoint_request_number(checkpoint_file_name(2, 40)) == 3 and checkpoint_file_name(2, 40) == "request-03-step-000040.ckpt"
    assert checkpoint_request_number("notes.txt") is None


def test_the_report_reads_the_metric_names_the_stream_writes():
    assert runs.METRIC_NAMES is METRIC_NAMES
    # Every metric is followed by its interval's bounds.
    assert RESULT_COLUMNS[3:3 + 3 * len(METRIC_NAMES)] == METRIC_COLUMNS
    assert METRIC_COLUMNS[:6] == ("UA", "UA_lo", "UA_hi", "UA_latest", "UA_latest_lo", "UA_latest_hi")


def test_results_csv_formats_floats_and_keeps_its_columns():
    base = result_row(0, None, dict.fromkeys(METRIC_COLUMNS, 100.0), 0, 0, 0.0, 12.3456)
    row = {**result_row(1, Request("Van Gogh", "style"), dict.fromkeys(METRIC_COLUMNS, 1 / 3), 10, 10, 1.0, 2.0),
           "drift_to_base": 0.5, "per_style": {"ignored": 1}}
    lines = results_csv([base, row]).splitlines()
    assert lines[0] == ",".join(RESULT_COLUMNS)
    assert lines[1] == "0,base,," + ",".join(["100.00"] * 18) + ",0,0,0.00,12.35,,,,,,,,"
    assert lines[2] == "1,Van Gogh,style," + ",".join(["0.33"] * 18) + ",10,10,1.00,2.00,0.50,,,,,,,"
    # The collapse indicator, where the evaluation measured it.
    collapsed = {**dict.fromkeys(METRIC_COLUMNS, 50.0), "style_top_share": 0.25, "object_top_share": 0.97,
                 "style_entropy": 1.0, "object_entropy": 0.1, "collapsed": True}
    assert results_csv([result_row(2, Request("heart", "object"), collapsed, 1, 11, 0.0, 0.0)]).splitlines()[1].endswith(
        ",0.25,0.97,1.00,0.10,True")


def test_a_second_holder_of_the_lock_is_refused_until_it_is_released(tmp_path):
    first, second = RunFolder(tmp_path / "run"), RunFolder(tmp_path / "run")
    first.lock()
    with pytest.raises(RunFolderBusyError, match="in use by another process"):
        second.lock()
    first.unlock()
    second.lock()
    second.unlock()


def test_a_run_is_finished_when_its_ledger_holds_every_request_run_json_lists(tmp_path):
    folder = RunFolder(tmp_path)
    assert not folder.is_finished()
    folder.write_run_info({"requests": [{"concept": "Van Gogh", "kind": "style"}]})
    folder.write_ledger({"stream": [], "completed": []})
    assert not folder.is_finished()
    folder.write_ledger({"stream": [], "completed": [{"concept": "Van Gogh"}]})
    assert folder.is_finished() and json.loads((tmp_path / "run.json").read_text())["requests"]


def test_no_other_module_spells_the_run_folder_s_file_names():
    # A name spelled twice drifts apart: every reader and writer goes through run_folder.py
    # (the ledger's own name lives with its structure in ledger.py).
    owners = {"lightning_unlearn/run_folder.py", "lightning_unlearn/ledger.py"}
    offenders = []
    for root in ("lightning_unlearn", "callbacks", "datamodules"):
        for path in sorted((REPO / root).rglob("*.py")):
            if path.relative_to(REPO).as_posix() in owners:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in FILE_NAMES:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
    assert offenders == []
