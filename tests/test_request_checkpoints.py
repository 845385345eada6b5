"""Mid-request checkpoints and fault tests: a stream SIGKILLed at the worst moments resumes to
the bit-identical result of an uninterrupted run.

Each fault test runs ``train.py unlearn`` as a real subprocess with a test-only callback from
``tests/sigkill_hooks.py`` that SIGKILLs it once (mid-request, or inside an atomic write after
the temporary file is complete and before the rename), then re-runs the stream and compares
every weight, metric and result with a run that was never interrupted and never checkpointed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_unlearn.cli import main
from lightning_unlearn.request_checkpoints import (
    AtomicCheckpointIO, CheckpointMismatchError, latest_checkpoint, record_path,
)

REPO = Path(__file__).resolve().parents[1]
STREAM = [
    "unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml", "--data.requests=[Van Gogh, Cartoon]",
    "--data.steps_per_request=6", "--data.batch_size=4",
    "--model.method.init_args.ddim_steps=4", "--model.method.init_args.bank_trajectories=4",
    "--stream.evaluation.steps=6", "--stream.semantic_analysis=false", "--trainer.logger=false",
    "--data.styles=[Van Gogh, Cartoon, Monet, Pop Art]", "--data.objects=[circle, star, house]",
]
CHECKPOINTED = ["--stream.checkpoint_every_n_steps=2"]
TIMING = ("train_seconds", "eval_seconds")


def outcome(run: Path) -> dict:
    """What an interrupted-and-resumed run must reproduce exactly."""
    files = {str(p.relative_to(run)): p.read_bytes() for p in sorted((run / "requests").rglob("*"))
             if p.name in ("weights.safetensors", "metrics.json", "grid.png")}
    rows = [{k: v for k, v in r.items() if k not in TIMING} for r in json.loads((run / "results.json").read_text())]
    ledger = json.loads((run / "ledger.json").read_text())
    return {"files": files, "rows": rows, "ledger": [(e["concept"], e["sha256"]) for e in ledger["completed"]]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    main([*STREAM, f"--stream.run_dir={run}"])  # no mid-request checkpoints at all
    return outcome(run)


def killed_run(run: Path, hook: list[str]) -> subprocess.CompletedProcess:
    # The child uses as many threads as this process, which runs the comparison runs: CPU
    # kernels are bit-reproducible for a fixed thread count, not across thread counts.
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "train.py", *STREAM, f"--stream.run_dir={run}", *CHECKPOINTED, *hook],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


# (hook arguments, the step request 2 resumes at, what the kill must have left behind)
FAULTS = {
    "mid-request, after the step-4 checkpoint": (
        ["sigkill_hooks.SigkillAtStep", "--trainer.callbacks.request=2", "--trainer.callbacks.step=5"], 4, None),
    "writing the step-4 checkpoint": (
        ["sigkill_hooks.SigkillBeforeRename", "--trainer.callbacks.name=request-02-step-000004.ckpt"], 2,
        "checkpoints/.request-02-step-000004.ckpt.*.tmp"),
    "writing the checkpoint record": (
        ["sigkill_hooks.SigkillBeforeRename", "--trainer.callbacks.name=checkpoints/request-02.json"], 0,
        "checkpoints/.request-02.json.*.tmp"),
    "writing the request's weights": (
        ["sigkill_hooks.SigkillBeforeRename", "--trainer.callbacks.name=02-cartoon/weights.safetensors"], 4,
        "requests/02-cartoon/.weights.safetensors.*.tmp"),
}


@pytest.mark.parametrize(
    "fault",
    # One case in the default suite; the others take about as long each (pytest -m slow).
    [pytest.param(f, marks=() if i == 0 else pytest.mark.slow) for i, f in enumerate(FAULTS)],
)
def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path, uninterrupted, fault):
    hook, resume_step, leftover = FAULTS[fault]
    run = tmp_path / "run"
    proc = killed_run(run, ["--trainer.callbacks+=" + hook[0], *hook[1:], f"--trainer.callbacks.marker={tmp_path / 'killed'}"])
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ledger = json.loads((run / "ledger.json").read_text())
    assert [e["concept"] for e in ledger["completed"]] == ["Van Gogh"]  # request 2 was not committed
    if leftover:  # killed inside the atomic write: the complete temporary file was never renamed
        assert list(run.glob(leftover)), sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    record = record_path(run, 1)
    assert (json.loads(record.read_text())["steps_done"] if record.exists() else 0) == resume_step

    main([*STREAM, f"--stream.run_dir={run}", *CHECKPOINTED])  # the same stream, re-run
    assert outcome(run) == uninterrupted
    assert not list((run / "checkpoints").iterdir())  # removed once their requests were committed
    assert not list(run.rglob("*.tmp"))  # the killed write's temporary file was cleaned up


def test_checkpoints_are_refused_unless_they_match_their_record(tmp_path, cli_error):
    run = tmp_path / "run"
    proc = killed_run(run, ["--trainer.callbacks+=sigkill_hooks.SigkillAtStep", "--trainer.callbacks.request=1",
                            "--trainer.callbacks.step=3", f"--trainer.callbacks.marker={tmp_path / 'killed'}"])
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    record = json.loads(record_path(run, 0).read_text())
    identity = {k: record[k] for k in ("concept", "kind", "protocol", "erasing", "train_steps", "batch_size")}
    ckpt, found = latest_checkpoint(run, 0, identity)
    assert found["steps_done"] == 2 and ckpt.name == "request-01-step-000002.ckpt"

    # Only tensors and primitive containers inside: it loads with weights_only=True, and the
    # IO refuses to load any other way.
    state = AtomicCheckpointIO().load_checkpoint(ckpt)
    assert set(state["state_dict"]) == {f"backbone.unet.{k}" for k in state["trainable_keys"]}
    with pytest.raises(ValueError, match="weights_only=True only"):
        AtomicCheckpointIO().load_checkpoint(ckpt, weights_only=False)

    with pytest.raises(CheckpointMismatchError, match="differently configured request .*train_steps: saved 6, now 8"):
        latest_checkpoint(run, 0, {**identity, "train_steps": 8})
    # Restoring the checkpoint brings back its optimizer's learning rate: a re-run with another
    # --model.lr used to finish the request with the saved one, silently. Refused, untouched.
    folder = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert record["optimizer.lr"] == 5e-4 and record["optimizer.betas"] == [0.9, 0.999]
    line = cli_error([*STREAM, f"--stream.run_dir={run}", *CHECKPOINTED, "--model.lr=2e-4"])
    assert "request-01-step-000002.ckpt was saved by a differently configured request (optimizer.lr: saved 0.0005, now 0.0002)" in line
    assert {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()} == folder
    with pytest.raises(CheckpointMismatchError, match="request-01-step-000002.ckpt is missing or does not match the sha256"):
        data = bytearray(ckpt.read_bytes())
        data[len(data) // 2] ^= 0x01
        ckpt.write_bytes(bytes(data))
        latest_checkpoint(run, 0, identity)
    # A stream re-run on the tampered folder stops before training, naming the file.
    assert "does not match the sha256" in cli_error([*STREAM, f"--stream.run_dir={run}", *CHECKPOINTED])


def test_the_checkpoint_io_writes_atomically_and_loads_tensors_only(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "step": 4}, tmp_path / "a.ckpt")
    from lightning_unlearn.atomic_io import file_sha256

    assert io.last_sha256 == file_sha256(tmp_path / "a.ckpt")
    assert io.load_checkpoint(tmp_path / "a.ckpt")["step"] == 4
    # A pickle that would run code when unpickled is refused by weights_only=True.
    torch.save({"payload": Path("x")}, tmp_path / "evil.ckpt")
    with pytest.raises(Exception, match="Weights only load failed"):
        io.load_checkpoint(tmp_path / "evil.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "evil.ckpt"]


@pytest.mark.slow
def test_stacked_regularizers_resume_bit_identically(tmp_path):
    # L2 anchor + top-k + projected update: the anchor, the selection and the frozen entries are
    # rebuilt at request start, restored from the checkpoint, and must not take the mid-request
    # weights (moved by the later-listed projection) for request-start values.
    stacked = ["--trainer.callbacks+=configs/callbacks/l2.yaml", "--trainer.callbacks+=configs/callbacks/topk.yaml",
               "--trainer.callbacks+=configs/callbacks/projection_update.yaml"]
    main([*STREAM, f"--stream.run_dir={tmp_path / 'reference'}", *stacked])
    run = tmp_path / "run"
    proc = killed_run(run, [*stacked, "--trainer.callbacks+=sigkill_hooks.SigkillAtStep", "--trainer.callbacks.request=2",
                            "--trainer.callbacks.step=5", f"--trainer.callbacks.marker={tmp_path / 'killed'}"])
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    main([*STREAM, f"--stream.run_dir={run}", *CHECKPOINTED, *stacked])
    assert outcome(run) == outcome(tmp_path / "reference")


# -- pre-emption (SIGUSR1) and interruption (SIGTERM / SIGINT) ----------------------------------------

def slurm_env(tmp_path: Path) -> dict[str, str]:
    """A job step as srun starts it (Lightning detects SLURM from these), with a fake ``scontrol``
    first on PATH that records its arguments instead of talking to a controller."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1",
            "SLURM_JOB_NAME": "unlearn", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}


def signalled_run(run: Path, hooks: list[str], extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    return subprocess.run([sys.executable, "train.py", *STREAM, f"--stream.run_dir={run}", *hooks],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_sigusr1_mid_request_checkpoints_requeues_and_the_rerun_equals_an_uninterrupted_run(
        tmp_path, uninterrupted, monkeypatch):
    run, env = tmp_path / "run", slurm_env(tmp_path)
    proc = signalled_run(run, ["--trainer.callbacks+=sigkill_hooks.SigkillAtStep", "--trainer.callbacks.request=2",
                               "--trainer.callbacks.step=4", "--trainer.callbacks.signal=SIGUSR1",
                               f"--trainer.callbacks.marker={tmp_path / 'signalled'}"], env)
    assert proc.returncode == 138, proc.stderr[-3000:]
    assert "pre-empted: requeued job 4242; the re-run resumes at request 2 (Cartoon), step 4 of 6" in proc.stderr
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert [e["concept"] for e in json.loads((run / "ledger.json").read_text())["completed"]] == ["Van Gogh"]
    assert json.loads(record_path(run, 1).read_text())["steps_done"] == 4
    assert not list(run.rglob("hpc_ckpt_*"))
    for name, value in env.items():  # the requeued job re-runs under SLURM
        monkeypatch.setenv(name, value)
    main([*STREAM, f"--stream.run_dir={run}"])
    assert outcome(run) == uninterrupted
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n" and not list(run.rglob("hpc_ckpt_*"))


@pytest.mark.slow  # five runs of the stream
def test_sigusr1_at_any_moment_requeues_and_the_reruns_equal_an_uninterrupted_run(tmp_path, uninterrupted):
    # One command, as a requeued SLURM job re-runs it; each hook sends SIGUSR1 once, at its moment.
    markers = tmp_path / "markers"
    markers.mkdir()
    hooks = [
        # during the base evaluation (its grid written, its metrics not yet)
        "--trainer.callbacks+=sigkill_hooks.SigkillBeforeRename", "--trainer.callbacks.name=00-base/grid.png",
        "--trainer.callbacks.signal=SIGUSR1", f"--trainer.callbacks.marker={markers / 'base'}",
        # mid-fit of request 1 (no --stream.checkpoint_every_n_steps: the pre-emption checkpoints)
        "--trainer.callbacks+=sigkill_hooks.SigkillAtStep", "--trainer.callbacks.request=1",
        "--trainer.callbacks.step=3", "--trainer.callbacks.signal=SIGUSR1", f"--trainer.callbacks.marker={markers / 'fit1'}",
        # after request 1's training, before its commit (between requests)
        "--trainer.callbacks+=sigkill_hooks.SignalAtRequestEnd", "--trainer.callbacks.request=1",
        f"--trainer.callbacks.marker={markers / 'commit1'}",
        # mid-fit of request 2
        "--trainer.callbacks+=sigkill_hooks.SigkillAtStep", "--trainer.callbacks.request=2",
        "--trainer.callbacks.step=4", "--trainer.callbacks.signal=SIGUSR1", f"--trainer.callbacks.marker={markers / 'fit2'}",
    ]
    run, env = tmp_path / "run", slurm_env(tmp_path)
    # (what the ledger has committed after the stop, the step the record resumes request N at, the line)
    expected = [
        ([], None, "the re-run resumes at request 1 (Van Gogh)"),
        ([], (1, 3), "the re-run resumes at request 1 (Van Gogh), step 3 of 6"),
        (["Van Gogh"], None, "the re-run resumes at request 2 (Cartoon)"),
        (["Van Gogh"], (2, 4), "the re-run resumes at request 2 (Cartoon), step 4 of 6"),
    ]
    for rerun, (committed, resume, line) in enumerate(expected, start=1):
        proc = signalled_run(run, hooks, env)
        assert proc.returncode == 138, (rerun, proc.stderr[-3000:])
        assert f"pre-empted: requeued job 4242; {line}" in proc.stderr, (rerun, proc.stderr[-3000:])
        ledger = json.loads((run / "ledger.json").read_text())
        assert "base" in ledger and [e["concept"] for e in ledger["completed"]] == committed, rerun
        if resume is not None:
            record = json.loads(record_path(run, resume[0] - 1).read_text())
            assert record["steps_done"] == resume[1]
        assert (tmp_path / "scontrol.log").read_text().splitlines() == ["requeue 4242"] * rerun
        assert not list(run.rglob("hpc_ckpt_*")) and not list(REPO.glob("hpc_ckpt_*"))
    proc = signalled_run(run, hooks, env)  # every hook has fired: this run completes
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert outcome(run) == uninterrupted
    assert len((tmp_path / "scontrol.log").read_text().splitlines()) == len(expected)
    assert not list((run / "checkpoints").iterdir()) and not list(run.rglob("hpc_ckpt_*"))


def test_a_lightning_hpc_checkpoint_in_the_run_folder_is_refused(tmp_path, cli_error):
    run = tmp_path / "run"
    run.mkdir()
    (run / "hpc_ckpt_1.ckpt").write_bytes(b"not read")
    message = cli_error([*STREAM, f"--stream.run_dir={run}"])
    assert "hpc_ckpt_1.ckpt: a Lightning HPC checkpoint" in message and "delete it" in message
    assert not (run / "ledger.json").exists() and not (run / "requests").exists()


@pytest.mark.parametrize("signal_name, status", [
    ("SIGTERM", 143),
    pytest.param("SIGINT", 130, marks=pytest.mark.slow),  # the same path, through Lightning's KeyboardInterrupt
])
def test_an_interrupted_request_exits_non_zero_and_the_rerun_equals_an_uninterrupted_run(
        tmp_path, uninterrupted, signal_name, status):
    run = tmp_path / "run"
    proc = signalled_run(run, ["--trainer.callbacks+=sigkill_hooks.SigkillAtStep", "--trainer.callbacks.request=2",
                               "--trainer.callbacks.step=3", f"--trainer.callbacks.signal={signal_name}",
                               f"--trainer.callbacks.marker={tmp_path / 'signalled'}"])
    assert proc.returncode == status, proc.stderr[-3000:]
    assert "interrupted: request 2 was not committed; re-run the same command to resume" in proc.stderr
    ledger = json.loads((run / "ledger.json").read_text())
    assert [e["concept"] for e in ledger["completed"]] == ["Van Gogh"]
    main([*STREAM, f"--stream.run_dir={run}"])  # the same stream, re-run
    assert outcome(run) == uninterrupted
