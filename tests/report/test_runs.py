"""Reading run folders into records: names, request folders, optional files and malformed inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_unlearn.report.runs import RunFolderError, load_run


def write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def small_run(root: Path) -> Path:
    """A hand-made folder: base + two requests, files present for some requests only."""
    rows = [{"request": i, "concept": c, "kind": k, "UA": ua}
            for i, (c, k, ua) in enumerate([("base", "", 0.0), ("Monet", "style", 80.0), ("star", "object", 90.0)])]
    write(root / "results.json", rows)
    write(root / "requests" / "00-base" / "metrics.json", {"per_style": {"Monet": 100.0}, "per_object": {"star": 90.0}})
    write(root / "requests" / "01-monet" / "drift.json", {"to_base": {"total": 1.0}})
    (root / "requests" / "01-monet" / "grid.png").write_bytes(b"not read here")
    (root / "requests" / "notes-no-index").mkdir()  # no numeric prefix: not a request folder
    return root


def test_load_run_pairs_rows_with_their_request_folders(tmp_path):
    run = load_run(small_run(tmp_path / "plain"))
    assert run.name == "plain" and run.info is None and run.protocol is None
    assert [(r.index, r.concept, r.kind) for r in run.requests] == [
        (0, "base", ""), (1, "Monet", "style"), (2, "star", "object")]
    base, first, second = run.requests
    assert base.metrics == {"per_style": {"Monet": 100.0}, "per_object": {"star": 90.0}} and base.drift is None
    assert first.drift == {"to_base": {"total": 1.0}}
    assert first.grid == tmp_path / "plain" / "requests" / "01-monet" / "grid.png"
    assert second.folder is None and second.grid is None  # a row whose folder is not there
    assert run.vocabulary() == (["Monet"], ["star"])
    assert run.erased_after(2) == [("Monet", "style"), ("star", "object")]


def test_run_json_names_the_run_and_an_unmerged_independent_run_erases_one_request(tmp_path):
    root = small_run(tmp_path / "folder")
    write(root / "run.json", {"label": "independent ESD", "protocol": "independent", "merge": None})
    run = load_run(root)
    assert run.name == "independent ESD" and run.erased_after(2) == [("star", "object")]
    write(root / "run.json", {"protocol": "independent", "merge": {"method": "ties"}})
    assert load_run(root).erased_after(2) == [("Monet", "style"), ("star", "object")]


@pytest.mark.parametrize(("file", "content", "message"), [
    ("results.json", [], "has no rows"),
    ("results.json", [{"request": 0}], "each with 'request' and 'concept'"),
    ("run.json", ["not", "an", "object"], "run.json should be a JSON object"),
])
def test_malformed_files_are_named(tmp_path, file, content, message):
    root = small_run(tmp_path / "bad")
    write(root / file, content)
    with pytest.raises(RunFolderError, match=message):
        load_run(root)


def test_a_request_file_that_is_not_json_is_named(tmp_path):
    root = small_run(tmp_path / "bad")
    (root / "requests" / "01-monet" / "drift.json").write_text("{")
    with pytest.raises(RunFolderError, match="drift.json is not valid JSON"):
        load_run(root)
