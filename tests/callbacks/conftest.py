"""Fixtures for the regularizer callbacks: one tiny-world module, reset to the base per test,
and a ``serve`` helper that trains requests with the stream's own ``serve_request``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from lightning_unlearn.datamodules.concept_stream import ConceptStreamDataModule
from lightning_unlearn.methods import ESD
from lightning_unlearn.protocols import plan_request
from lightning_unlearn.serving import serve_request
from lightning_unlearn.trainable import apply_trainable
from lightning_unlearn.unlearning_module import UnlearningModule


@pytest.fixture(scope="session")
def _shared_module() -> tuple[UnlearningModule, dict[str, torch.Tensor]]:
    # Loading the UNet and the text encoder dominates a short test: do it once per session.
    module = UnlearningModule(method=ESD(ddim_steps=3, bank_trajectories=2, bank_batch=2), trainable="esd-x", lr=1e-3)
    return module, {k: v.detach().clone() for k, v in module.unet.state_dict().items()}


@pytest.fixture
def module(_shared_module) -> UnlearningModule:
    """The tiny-world module with base weights, esd-x trainable, AdamW(lr=1e-3, wd=0)."""
    m, pristine = _shared_module
    m.unet.load_state_dict(pristine)
    m.trainable = "esd-x"
    m.trainable_keys = apply_trainable(m.unet, "esd-x")
    m.optimizer_factory = None
    m.hparams.lr = 1e-3
    m.clear_request()
    m.unet.zero_grad(set_to_none=True)
    return m


@pytest.fixture
def make_data() -> Callable[..., ConceptStreamDataModule]:
    """``make_data(requests, steps=3, batch_size=2)``: a short stream of the tiny world."""

    def make(requests: list[str], steps: int = 3, batch_size: int = 2) -> ConceptStreamDataModule:
        return ConceptStreamDataModule(requests=requests, batch_size=batch_size, steps_per_request=steps)

    return make


Serve = Callable[..., Trainer]


@pytest.fixture
def serve() -> Serve:
    """``serve(module, data, callbacks, trainable=None, stop_after=None, start=0)``: train the
    requests ``start .. stop_after - 1`` of ``data`` (default: all) in turn on one Trainer with
    :func:`serve_request`, as the stream does (sequential protocol), without evaluation or commit;
    returns the trainer."""

    def run(module: UnlearningModule, data: ConceptStreamDataModule, callbacks: list[Callback],
            trainable: str | None = None, stop_after: int | None = None, start: int = 0) -> Trainer:
        if trainable is not None:
            module.trainable = trainable
        trainer = Trainer(
            max_steps=data.steps_per_request, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0, limit_val_batches=0,
            callbacks=callbacks,
        )
        last = len(data.requests) if stop_after is None else stop_after
        for index in range(start, last):
            serve_request(trainer, module, data, plan_request(data.requests, index, "sequential"))
        return trainer

    return run
