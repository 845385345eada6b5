"""Shared by the report's tests: one real two-request stream run folder, made once per session."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lightning_unlearn.cli import main

# A report needs a real run folder, not good unlearning: as few steps as the runner takes.
FAST = [
    "--data.steps_per_request=2", "--data.batch_size=4",
    "--model.method.init_args.ddim_steps=4", "--model.method.init_args.bank_trajectories=4",
    "--stream.evaluation.steps=4", "--trainer.enable_model_summary=false",
    "--data.styles=[Van Gogh, Cartoon, Monet, Pop Art]", "--data.objects=[circle, star, house]",
]


@pytest.fixture(scope="session")
def stream_run(tmp_path_factory) -> Path:
    """A real run folder: two ESD style requests on a 4 x 3 corner of the tiny world."""
    run = tmp_path_factory.mktemp("report") / "esd_two_styles"
    main(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
          "--data.requests=[Van Gogh, Cartoon]", f"--stream.run_dir={run}", *FAST])
    return run


@pytest.fixture
def copy_run() -> Callable[[Path, Path], Path]:
    """``copy_run(run, to)``: a copy of a run folder to alter, without its logs and reports."""

    def copy(run: Path, to: Path) -> Path:
        shutil.copytree(run, to, ignore=shutil.ignore_patterns("tensorboard", "report"))
        return to

    return copy


@pytest.fixture(scope="session")
def unfinished_run(tmp_path_factory) -> Path:
    """A real unfinished run folder: a plan of three style requests, evaluated every second
    request, its process SIGKILLed one step into request 3 (tests/sigkill_hooks.py), so the
    ledger holds requests 1 (not evaluated) and 2 (evaluated) of 3."""
    import os
    import subprocess
    import sys

    import torch

    repo = Path(__file__).resolve().parents[2]
    run = tmp_path_factory.mktemp("unfinished") / "esd_three_styles"
    env = {**os.environ, "PYTHONPATH": str(repo / "tests"), "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run(
        [sys.executable, "train.py", "unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
         "--data.requests=[Van Gogh, Cartoon, Monet]", f"--stream.run_dir={run}", "--stream.evaluate_every=2",
         *FAST, "--trainer.callbacks+=sigkill_hooks.SigkillAtStep", "--trainer.callbacks.request=3",
         "--trainer.callbacks.step=1", f"--trainer.callbacks.marker={run.parent / 'killed'}"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    return run
