"""Stream reliability on short tiny-world runs: determinism, refused tampering, a full disk."""

from __future__ import annotations

import json
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_unlearn.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/tinyworld/esd_styles_sequential.yaml"
FAST = [
    "--data.steps_per_request=3", "--data.batch_size=4",
    "--model.method.init_args.ddim_steps=4", "--model.method.init_args.bank_trajectories=4",
    "--stream.evaluation.steps=6", "--stream.semantic_analysis=false", "--trainer.enable_model_summary=false",
    "--data.styles=[Van Gogh, Cartoon, Monet, Pop Art]", "--data.objects=[circle, star, house]",
]
TIMING = ("train_seconds", "eval_seconds")


def stream_args(run_dir: Path, requests: str, *extra: str) -> list[str]:
    return ["unlearn", "--config", CONFIG, f"--data.requests={requests}", f"--stream.run_dir={run_dir}", *FAST, *extra]


def run_contents(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run that must be reproducible: weights, metrics, grids, ledger."""
    files = {}
    for path in sorted(run_dir.rglob("*")):
        if path.is_file() and path.suffix in (".safetensors", ".png") or path.name in ("metrics.json", "ledger.json"):
            files[str(path.relative_to(run_dir))] = path.read_bytes()
    return files


@pytest.mark.slow  # two full runs; tests/test_request_checkpoints.py compares two runs of one seed by default
def test_same_config_and_seed_give_bit_identical_runs(tmp_path):
    # Two requests, so the second starts from the first's weights as a resumed run would.
    for name in ("a", "b"):
        main(stream_args(tmp_path / name, "[Van Gogh, Cartoon]", "--trainer.logger=false"))
    a, b = run_contents(tmp_path / "a"), run_contents(tmp_path / "b")
    assert "requests/02-cartoon/weights.safetensors" in a and "requests/01-van-gogh/grid.png" in a
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    rows_a, rows_b = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("a", "b"))
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(rows_a) == strip(rows_b) and len(rows_a) == 3


def test_a_checkpoint_that_does_not_match_the_ledger_is_refused(tmp_path, cli_error):
    run = tmp_path / "run"
    main(stream_args(run, "[Van Gogh]", "--trainer.logger=false"))
    weights = run / "requests" / "01-van-gogh" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor element: still a valid safetensors file
    weights.write_bytes(bytes(data))
    ledger_before = (run / "ledger.json").read_bytes()
    line = cli_error(stream_args(run, "[Van Gogh, Cartoon]", "--trainer.logger=false"))
    assert re.search("01-van-gogh/weights.safetensors .*does not match the sha256", line)
    assert (run / "ledger.json").read_bytes() == ledger_before
    assert not (run / "requests" / "02-cartoon").exists()


def _limit_file_size_to_1mb() -> None:
    # Small files (JSON, grids of ~40 KB) still fit; the request's 2.8 MB of weights do not.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_no_space_for_the_weights_commits_nothing_and_a_rerun_completes(tmp_path):
    run = tmp_path / "run"
    args = stream_args(run, "[Van Gogh]", "--trainer.logger=false")
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True,
                          preexec_fn=_limit_file_size_to_1mb, timeout=240)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no space left to write {run}/requests/01-van-gogh/weights.safetensors: the disk is full")
    ledger = json.loads((run / "ledger.json").read_text())
    assert "base" in ledger and ledger["completed"] == []  # the base evaluation was committed, the request not
    assert not (run / "requests" / "01-van-gogh" / "weights.safetensors").exists()
    assert not list(run.rglob("*.tmp"))

    main(args)  # space again: the same command serves the request
    ledger = json.loads((run / "ledger.json").read_text())
    assert [e["concept"] for e in ledger["completed"]] == ["Van Gogh"]
    assert (run / "requests" / "01-van-gogh" / "weights.safetensors").is_file()


def test_a_non_finite_loss_stops_the_request_keeps_the_last_good_weights_and_a_fixed_rerun_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    main(stream_args(run, "[Van Gogh]", "--trainer.logger=false"))
    good = json.loads((run / "ledger.json").read_text())["completed"]
    # The stream grows by a request, served with an absurd learning rate: SGD's first step
    # throws the weights to ~1e30 and the next loss overflows. Nothing is mocked.
    diverging = ["--model.optimizer=torch.optim.SGD", "--model.optimizer.lr=1e30", "--stream.checkpoint_every_n_steps=1"]
    with pytest.raises(SystemExit) as exit_info:
        main(stream_args(run, "[Van Gogh, Cartoon]", "--trainer.logger=false", *diverging))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: request 2 (style 'Cartoon') stopped at step 2 of 3: non-finite unlearning loss")
    assert "re-run the same command" in message
    ledger = json.loads((run / "ledger.json").read_text())
    assert ledger["completed"] == good  # request 1's weights (and sha256) are still the last good state
    assert [(f["concept"], f["step"]) for f in ledger["failed"]] == [("Cartoon", 2)]
    failed = json.loads((run / "requests" / "02-cartoon" / "FAILED.json").read_text())
    assert failed["step"] == 2 and "non-finite" in failed["reason"]
    assert not (run / "requests" / "02-cartoon" / "weights.safetensors").exists()
    assert not list((run / "checkpoints").glob("request-02*"))  # the diverged optimizer state is not resumed

    main(stream_args(run, "[Van Gogh, Cartoon]", "--trainer.logger=false"))  # the user fixed the learning rate
    ledger = json.loads((run / "ledger.json").read_text())
    assert [e["concept"] for e in ledger["completed"]] == ["Van Gogh", "Cartoon"]
    assert ledger["completed"][0] == good[0] and len(ledger["failed"]) == 1  # the failure stays on record
    assert not (run / "requests" / "02-cartoon" / "FAILED.json").exists()
