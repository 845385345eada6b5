"""Drift: how far each request moves the trainable weights, from the base and from its start.

The paper traces the collapse of sequential unlearning to cumulative parameter drift from the
pretrained weights. After every request this records the L2 norms of (theta - theta_base) and
(theta - theta_start) over the trainable keys: the total, and per tensor (which includes every
cross-attention key and value matrix, ``attn2.to_k`` / ``attn2.to_v``). The stream runner writes
the record to ``requests/NN-<concept>/drift.json`` and adds the totals to the results table.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from lightning_unlearn.callbacks.base import RequestCallback


def l2_norms(current: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, Any]:
    """{"total": ||current - reference||_2, "layers": {key: norm}} over ``current``'s keys (float64 sums)."""
    layers = {k: float(torch.linalg.vector_norm((v.double() - reference[k].to(v.device).double()))) for k, v in current.items()}
    return {"total": float(sum(n * n for n in layers.values()) ** 0.5), "layers": layers}


class DriftRecorder(RequestCallback):
    """Record the L2 drift of the trainable weights after each request (from base and from the request's start)."""

    # It reads trainable_state(): with LoRA, the fused effective weights.
    supports_lora = True
    acts_on_training = None  # it only reads the weights a request starts and ends with

    def __init__(self, name: str | None = None) -> None:
        """
        Args:
            name: distinguishes two instances in checkpoints (default: the class name).
        """
        super().__init__(name=name)
        self._start: dict[str, torch.Tensor] = {}
        self.record: dict[str, Any] = {}
        """The last request's drift: {"to_base": {...}, "to_previous": {...}} (see ``l2_norms``)."""

    @classmethod
    def describe(cls, settings: dict[str, Any]) -> str:
        return "drift recorder"

    def on_request_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.trainable_state().items()}
        self.record = {}

    def on_request_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        current = {k: v.detach().cpu() for k, v in pl_module.trainable_state().items()}
        base = pl_module.base_state()
        self.record = {
            "to_base": l2_norms(current, {k: base[k] for k in current}),
            "to_previous": l2_norms(current, {k: self._start[k] for k in current}),
        }
        self._start = {}

    def request_records(self) -> dict[str, dict[str, Any]]:
        return {"drift": self.record} if self.record else {}
