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
