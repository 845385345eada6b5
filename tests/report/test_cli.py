"""``train.py report``'s command line: its help, and one named error line per bad run folder."""

from __future__ import annotations

import pytest

from lightning_unlearn.cli import main


def test_bad_run_folders_are_named(stream_run, copy_run, tmp_path, cli_error):
    # One "error:" line and exit 2, like every named error.
    assert "nowhere does not exist" in cli_error(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    (tmp_path / "empty").mkdir()
    assert "empty is not a stream run folder: it has no results.json" in cli_error(
        ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert "given twice" in cli_error(["report", str(stream_run), str(stream_run), "--out", str(tmp_path / "o")])
    broken = copy_run(stream_run, tmp_path / "broken")
    (broken / "results.json").write_text("[{\"request\": 0")
    assert "results.json is not valid JSON" in cli_error(["report", str(broken), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
    (tmp_path / "o").write_text("a file")
    assert f"the report folder {tmp_path / 'o' / 'sub'} is or is inside the file {tmp_path / 'o'}" in cli_error(
        ["report", str(stream_run), "--out", str(tmp_path / "o" / "sub")])
    assert (tmp_path / "o").read_text() == "a file"


def test_help_names_the_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "RUN_DIR" in text and "--out" in text and "--title" in text
