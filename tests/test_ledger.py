"""The ledger is checked on every start, finished runs included, and ``train.py verify`` audits it.

One finished tiny run (one request, 3 steps) is made per module; every test works on its own
copy of it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lightning_unlearn.cli import main
from lightning_unlearn.ledger import ledger_problems

CONFIG = "configs/tinyworld/esd_styles_sequential.yaml"
FAST = [
    "--data.steps_per_request=3", "--data.batch_size=4",
    "--model.method.init_args.ddim_steps=4", "--model.method.init_args.bank_trajectories=4",
    "--stream.evaluation.steps=4", "--stream.semantic_analysis=false", "--trainer.enable_model_summary=false",
    "--data.styles=[Van Gogh, Cartoon, Monet]", "--data.objects=[circle, star]", "--trainer.logger=false",
]
WEIGHTS = "requests/01-van-gogh/weights.safetensors"


def unlearn_args(run_dir: Path) -> list[str]:
    return ["unlearn", "--config", CONFIG, "--data.requests=[Van Gogh]", f"--stream.run_dir={run_dir}", *FAST]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    main(unlearn_args(run))
    return run


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and modification time: what "nothing was written" compares."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def flip_one_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last tensor element: still a valid safetensors file
    path.write_bytes(bytes(data))


def verify(capsys, *args: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["verify", *args])
    return exit_info.value.code, capsys.readouterr().out.strip().splitlines()


def test_the_ledger_records_every_committed_file_with_its_sha256(run):
    ledger = json.loads((run / "ledger.json").read_text())
    assert ledger_problems(ledger) == []
    entry = ledger["completed"][0]
    assert entry["weights"] == WEIGHTS and len(entry["sha256"]) == 64
    assert entry["metrics"] == "requests/01-van-gogh/metrics.json" and len(entry["metrics_sha256"]) == 64
    assert len(ledger["base"]["metrics_sha256"]) == 64


def test_a_good_run_verifies(run, capsys):
    code, lines = verify(capsys, str(run))
    assert code == 0
    assert lines[0] == "base  OK  metrics"
    assert lines[1] == "01 Van Gogh (style)  OK  weights, metrics"
    assert lines[-1].startswith(f"OK: {run}: 1 request(s) committed, all 3 recorded files match the ledger")


def test_tampered_weights_of_a_finished_run_are_refused_and_nothing_is_written(run, capsys, cli_error):
    flip_one_bit(run / WEIGHTS)
    before = snapshot(run)
    line = cli_error(unlearn_args(run))
    assert line.startswith("error: 01 Van Gogh (style): ")
    assert f"{run / WEIGHTS} does not match the sha256 in {run / 'ledger.json'}" in line
    assert snapshot(run) == before

    code, lines = verify(capsys, str(run))
    assert code == 1
    assert lines[1].startswith(f"01 Van Gogh (style)  MISMATCH  MISMATCH {WEIGHTS} (sha256 ")
    assert lines[-1].startswith("FAILED: 1 of 2 entries do not match")


def test_changed_metrics_are_refused_too(run, cli_error):
    metrics = run / "requests/01-van-gogh/metrics.json"
    metrics.write_text(metrics.read_text().replace('"UA": ', '"UA": 1', 1))
    assert "01-van-gogh/metrics.json does not match the sha256" in cli_error(unlearn_args(run))


def test_a_missing_file_is_reported_missing(run, capsys, cli_error):
    (run / WEIGHTS).unlink()
    assert f"{run / WEIGHTS} is missing" in cli_error(unlearn_args(run))
    code, lines = verify(capsys, str(run))
    assert code == 1 and lines[1] == f"01 Van Gogh (style)  MISSING  MISSING {WEIGHTS}"


def test_unexpected_files_are_noted_and_fail_only_under_strict(run, capsys):
    (run / "requests/01-van-gogh/.weights.safetensors.abc123.tmp").write_bytes(b"partial")
    (run / "hpc_ckpt_1.ckpt").write_bytes(b"lightning")
    (run / "requests/02-cartoon").mkdir()
    (run / "requests/02-cartoon/weights.safetensors").write_bytes(b"uncommitted")
    code, lines = verify(capsys, str(run))
    notes = [line for line in lines if line.startswith("note: ")]
    assert code == 0 and len(notes) == 3
    assert any("hpc_ckpt_1.ckpt: Lightning SLURM auto-checkpoint" in n for n in notes)
    assert any(".tmp: temporary file of an interrupted write" in n for n in notes)
    assert any("02-cartoon/weights.safetensors: weights not recorded in the ledger" in n for n in notes)
    assert verify(capsys, "--strict", str(run))[0] == 1


def test_a_malformed_ledger_is_refused_by_the_stream_and_reported_by_verify(run, capsys, cli_error):
    ledger = json.loads((run / "ledger.json").read_text())
    ledger["completed"][0]["weights"] = "../elsewhere.safetensors"
    (run / "ledger.json").write_text(json.dumps(ledger))
    assert "is malformed: completed[0] ('Van Gogh') weights '../elsewhere.safetensors' points outside" in \
        cli_error(unlearn_args(run))
    code, lines = verify(capsys, str(run))
    assert code == 1 and lines[0].startswith("ledger  MALFORMED  completed[0]")

    (run / "ledger.json").write_text("{not json")
    assert "ledger.json is not valid JSON" in cli_error(unlearn_args(run))
    assert verify(capsys, str(run))[0] == 1


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "run folder {p} does not exist"),
    (lambda p: p.write_text("x"), "{p} is a file, not a run folder"),
    (lambda p: p.mkdir(), "{p} is not a run folder: it has no ledger.json"),
])
def test_verify_on_something_that_is_not_a_run_folder_is_one_error_line(tmp_path, cli_error, make, message):
    path = tmp_path / "nothing"
    make(path)
    assert cli_error(["verify", str(path)]) == "error: " + message.format(p=path)


def test_ledger_structure_problems_are_named():
    good = {"stream": [{"concept": "Monet", "kind": "style"}],
            "completed": [{"concept": "Monet", "kind": "style", "index": 1, "weights": "w.safetensors",
                           "sha256": "0" * 64}]}
    assert ledger_problems(good) == []
    assert ledger_problems([]) == ["the ledger is not a JSON object"]
    bad = json.loads(json.dumps(good))
    bad["completed"][0].update(index=2, concept="Cartoon", sha256="abc", merged="/abs.safetensors")
    problems = ledger_problems(bad)
    assert any("has index 2, expected 1" in p for p in problems)
    assert any("is not the stream's request 1 ('Monet')" in p for p in problems)
    assert any("sha256 'abc' is not a sha256" in p for p in problems)
    assert any("merged '/abs.safetensors' points outside the run folder" in p for p in problems)
    assert any("merged_sha256 None is not a sha256" in p for p in problems)
