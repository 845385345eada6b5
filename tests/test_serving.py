"""serve_request, and the Lightning internals it relies on (the only module that touches them).

``test_lightning_internals_we_rely_on`` is the canary for a Lightning upgrade: every internal
``lightning_unlearn/serving.py`` uses is exercised on a plain LightningModule, so a release that
renames or changes one fails here, by name, instead of silently mis-training a stream.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader

from lightning_unlearn.callbacks.base import RequestCallback
from lightning_unlearn.cli import main
from lightning_unlearn.datamodules.concept_stream import ConceptStreamDataModule
from lightning_unlearn.methods import ESD
from lightning_unlearn.preemption import EXIT_SIGINT, EXIT_SIGTERM, StreamStopped
from lightning_unlearn.protocols import plan_request
from lightning_unlearn.serving import (
    ServedRequest, attach_datamodule, disable_lightning_auto_requeue, fit_request, serve_request, to_training_device,
    use_checkpoint_io,
)
from lightning_unlearn.unlearning_module import NonFiniteLossError, UnlearningModule


class Counting(LightningModule):
    """A linear model that counts its training steps and can fail on demand."""

    def __init__(self, fail_with: type[BaseException] | None = None, fail_at: int = 1) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.steps = 0
        self.fail_with, self.fail_at = fail_with, fail_at

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.steps += 1
        if self.fail_with is not None and self.steps == self.fail_at:
            raise self.fail_with()
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Batches(LightningDataModule):
    """Endless-enough batches: 100 per epoch."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.ones(100, 2), batch_size=1)


class StepLog(Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batches += 1


def plain_trainer(**kwargs: Any) -> Trainer:
    return Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, accelerator="cpu", devices=1, **kwargs)


def test_lightning_internals_we_rely_on(tmp_path):
    trainer, module, data = plain_trainer(), Counting(), Batches()
    # The datamodule can be attached before any fit (request hooks read trainer.datamodule).
    attach_datamodule(trainer, data)
    assert trainer.datamodule is data
    # max_steps lives on the epoch loop, and raising it there makes a second fit on the same
    # Trainer train exactly the extra steps (the step count carries over between fits).
    assert trainer.fit_loop.epoch_loop.max_steps == 3
    fit_request(trainer, module, data, max_steps=3)
    assert (trainer.global_step, module.steps) == (3, 3)
    per_fit = StepLog()
    fit_request(trainer, module, data, max_steps=8, callbacks=[per_fit])
    assert (trainer.global_step, module.steps, trainer.max_steps) == (8, 8, 8)
    # A callback given for one fit hears that fit and is gone afterwards.
    assert per_fit.batches == 5 and per_fit not in trainer.callbacks
    # Teardown leaves the module where to_training_device can bring it back (the root device).
    to_training_device(trainer, module)
    assert next(module.parameters()).device.type == trainer.strategy.root_device.type
    # The strategy takes a CheckpointIO after construction and writes through it.
    io = TorchCheckpointIO()
    use_checkpoint_io(trainer, io)
    assert trainer.strategy.checkpoint_io is io
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    assert (tmp_path / "c.ckpt").is_file()
    # The SLURM environment is reachable only through the accelerator connector.
    slurm = plain_trainer(plugins=[SLURMEnvironment(auto_requeue=True)])
    assert slurm._accelerator_connector.cluster_environment.auto_requeue is True
    disable_lightning_auto_requeue(slurm)
    assert slurm._accelerator_connector.cluster_environment.auto_requeue is False
    disable_lightning_auto_requeue(plain_trainer())  # not on SLURM: nothing to do, no error


@pytest.mark.parametrize("raised, exit_code", [(SIGTERMException, EXIT_SIGTERM), (KeyboardInterrupt, EXIT_SIGINT)])
def test_lightning_s_ways_out_of_an_interrupted_fit_become_stream_stops(raised, exit_code):
    # Lightning turns SIGTERM into SIGTERMException (a SystemExit) and Ctrl+C into sys.exit(1)
    # raised while handling the KeyboardInterrupt; fit_request names both, and still removes
    # the per-fit callbacks.
    trainer, per_fit = plain_trainer(), StepLog()
    with pytest.raises(StreamStopped) as stopped:
        fit_request(trainer, Counting(fail_with=raised, fail_at=2), Batches(), max_steps=3, callbacks=[per_fit])
    assert stopped.value.exit_code == exit_code and "interrupted" in stopped.value.message
    assert per_fit not in trainer.callbacks


def test_per_fit_callbacks_are_removed_when_the_fit_fails():
    trainer, per_fit = plain_trainer(), StepLog()
    with pytest.raises(ZeroDivisionError):
        fit_request(trainer, Counting(fail_with=ZeroDivisionError), Batches(), max_steps=3, callbacks=[per_fit])
    assert per_fit not in trainer.callbacks


class HookOrder(RequestCallback):
    """Records what the request hooks see."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, Any]] = []

    def on_request_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The module is prepared and the datamodule attached, before the optimizer exists.
        self.events.append(("start", pl_module.current_request.concept, trainer.datamodule.plan is pl_module.plan,
                            trainer.global_step))

    def on_request_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.events.append(("end", pl_module.current_request.concept, trainer.global_step))

    def request_records(self) -> dict[str, dict[str, Any]]:
        return {"hooks": {"events": len(self.events)}}


@pytest.fixture(scope="module")
def tiny_module() -> UnlearningModule:
    return UnlearningModule(method=ESD(ddim_steps=2, bank_trajectories=2, bank_batch=2), trainable="esd-x", lr=1e-3)


def test_serve_request_runs_the_request_path_in_order_and_shares_one_plan(tiny_module):
    data = ConceptStreamDataModule(requests=["Van Gogh", "Cartoon"], batch_size=2, steps_per_request=2)
    hooks, per_fit = HookOrder(), StepLog()
    trainer = plain_trainer(callbacks=[hooks])
    order: list[str] = []
    committed: list[ServedRequest] = []

    def commit(served: ServedRequest) -> None:
        order.append("commit")
        committed.append(served)

    first = serve_request(trainer, tiny_module, data, plan_request(data.requests, 0, "sequential"),
                          before_fit=lambda: order.append("before_fit"), commit=commit)
    plan = plan_request(data.requests, 1, "simultaneous")
    second = serve_request(trainer, tiny_module, data, plan, train_steps=3, fit_callbacks=[per_fit])
    # One owner of the request state: the datamodule and the module hold the same plan object.
    assert data.plan is plan and tiny_module.plan is plan and data.train_steps == 3
    assert data.training_captions() == ["a painting in Van Gogh style", "a painting in Cartoon style"]
    assert hooks.events == [("start", "Van Gogh", True, 0), ("end", "Van Gogh", 2),
                            ("start", "Cartoon", True, 2), ("end", "Cartoon", 5)]
    assert order == ["before_fit", "commit"] and committed == [first]
    assert (first.steps, second.steps, second.request_start_step) == (2, 3, 2)
    assert first.records == {"hooks": {"events": 2}} and second.train_seconds > 0
    assert per_fit.batches == 3 and per_fit not in trainer.callbacks


def test_a_non_finite_loss_reports_its_step_and_is_not_committed(tiny_module, monkeypatch):
    data = ConceptStreamDataModule(requests=["Van Gogh"], batch_size=2, steps_per_request=4)
    calls = {"n": 0}
    original = type(tiny_module.method).loss

    def diverging(self, context, batch):
        calls["n"] += 1
        loss = original(self, context, batch)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(type(tiny_module.method), "loss", diverging)
    failures: list[int] = []
    with pytest.raises(NonFiniteLossError):
        serve_request(plain_trainer(), tiny_module, data, plan_request(data.requests, 0, "sequential"),
                      on_failure=lambda error, step: failures.append(step),
                      commit=lambda served: pytest.fail("a failed request must not be committed"))
    assert failures == [3]


def test_the_stream_closes_the_logger_writer_it_reopened(tmp_path):
    # Lightning's teardown closes the TensorBoard writer after every fit; the evaluation after the
    # last request reopens it. The stream must close it, or its file and writer thread leak.
    def writer_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if type(t).__name__ == "_AsyncWriterThread" and t.is_alive()}

    before = writer_threads()
    run = tmp_path / "run"
    main(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml", "--data.requests=[Van Gogh]",
          f"--stream.run_dir={run}", "--data.steps_per_request=2", "--data.batch_size=2",
          "--model.method.init_args.ddim_steps=2", "--model.method.init_args.bank_trajectories=2",
          "--stream.evaluation.steps=2", "--stream.semantic_analysis=false", "--trainer.enable_model_summary=false",
          "--data.styles=[Van Gogh, Monet]", "--data.objects=[star]"])
    assert list(Path(run / "tensorboard").glob("events.out.tfevents.*"))
    assert writer_threads() - before == set()
