"""A callback the DDP tests add to ``train.py unlearn`` runs: each process writes what it saw.

Per request and rank, into ``$DDP_PROBE_DIR``:

- ``rank{R}-request{K}.json``: the request the module and the datamodule serve, the seeds
  and captions of every training batch the rank received, and the batch size of every
  gradient-free call of the trained UNet during ``fit`` (the simultaneous protocol's UA checks
  sample with it);
- ``rank{R}-request{K}.safetensors``: the regularizers' per-request state as training starts
  (selective fine-tuning masks, the gradient projection's basis and solve).

The test compares ranks with each other and with a one-process run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_unlearn.callbacks.gradient_projection import GradientProjection
from lightning_unlearn.callbacks.selective_finetuning import SelectiveFineTuning
from lightning_unlearn.atomic_io import save_weights, write_json


class RankProbe(Callback):
    """Records, per rank and request, the batches seen and the regularizers' state."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[dict[str, Any]] = []
        self.state: dict[str, torch.Tensor] = {}
        self.sampling_calls: list[int] = []
        self._hook: Any = None

    def _stem(self, trainer: Trainer, pl_module: LightningModule) -> Path:
        folder = Path(os.environ["DDP_PROBE_DIR"])
        return folder / f"rank{trainer.global_rank}-request{pl_module.request_index}"

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.batches, self.state, self.sampling_calls = [], {}, []

        def record_sampling(module: torch.nn.Module, args: Any) -> None:
            if not torch.is_grad_enabled():
                self.sampling_calls.append(int(args[0].shape[0]))

        self._hook = pl_module.unet.register_forward_pre_hook(record_sampling)
        for i, cb in enumerate(trainer.callbacks):
            if isinstance(cb, SelectiveFineTuning):
                self.state.update({f"{i}.mask.{k}": m.to(torch.uint8) for k, m in cb.masks.items()})
            if isinstance(cb, GradientProjection) and cb.basis is not None:
                self.state.update({f"{i}.basis": cb.basis, f"{i}.solve": cb.solve})

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.batches.append({"seed": batch["seed"].tolist(), "caption": list(batch["caption"])})

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._hook.remove()
        stem = self._stem(trainer, pl_module)
        data = trainer.datamodule
        write_json({
            "rank": trainer.global_rank, "world_size": trainer.world_size,
            "module_request": pl_module.current_request.concept,
            "data_request": data.current_request.concept, "data_position": data.position,
            "batches": self.batches, "sampling_calls": self.sampling_calls,
        }, stem.with_suffix(".json"))
        if self.state:
            save_weights(self.state, stem.with_suffix(".safetensors"))
