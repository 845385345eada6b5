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
