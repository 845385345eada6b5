"""``train.py report``'s command line: its help, and one named error line per bad run folder."""

from __future__ import annotations

import pytest

from lightning_unlearn.cli import main


def test_bad_run_folders_are_named(stream_run, copy_run, tmp_path):
    with pytest.raises(SystemExit, match="run folder .*nowhere does not exist"):
        main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty is not a stream run folder: it has no results.json"):
        main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="given twice"):
        main(["report", str(stream_run), str(stream_run), "--out", str(tmp_path / "o")])
    broken = copy_run(stream_run, tmp_path / "broken")
    (broken / "results.json").write_text("[{\"request\": 0")
    with pytest.raises(SystemExit, match="results.json is not valid JSON"):
        main(["report", str(broken), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_help_names_the_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "RUN_DIR" in text and "--out" in text and "--title" in text
