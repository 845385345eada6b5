"""Inverse-EWC: an anchor whose per-element pull falls with the element's Fisher importance to
earlier requests (from the paper's reference code).

During request k the squared gradient of the unlearning loss is accumulated per trainable
element and averaged over the request's optimizer steps: F_k = (1/S) sum_s g_s^2. The Fisher
estimate is an EMA over requests, F = decay * F_k + (1 - decay) * F_prev (F = F_1 after the
first). In request k+1:

    penalty = weight * (1/N) * sum exp(-z(F)/T) * |theta - theta_prev|      (l1; l2: squared)

z(F) = F standardised over all trainable elements. Parameters that mattered to earlier requests
are *cheaper* to move ("inverse" EWC: EWC would anchor them hardest); the unimportant ones are
anchored. Request 1 adds no penalty (no Fisher yet).

Which gradient: g_s is read in ``on_after_backward`` of the micro-batch that completes the
optimizer step: the accumulated, DDP-synced gradient of the unlearning loss alone, before any
callback adds its penalty gradient in ``on_before_optimizer_step``. Other regularizers' pulls
(anchors, replay) are *excluded* on purpose (they are no importance to the request's loss) and
the estimate does not depend on the order callbacks are listed in. Under fp16 AMP the
GradScaler's scale is divided out; a step whose gradient is not finite (the scaler skips it) is
not counted. Elements frozen for the request (SelectiveFineTuning) have no gradient and add 0.

See :mod:`lightning_unlearn.callbacks.importance_anchor` for the shared penalty, the EMA and
resume behaviour.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer

from lightning_unlearn.callbacks.importance_anchor import ImportanceWeightedAnchor


def _completes_step(trainer: Trainer | None, batch_idx: int) -> bool:
    """Whether micro-batch ``batch_idx`` is the last before an optimizer step: Lightning steps
    after every ``accumulate_grad_batches``-th micro-batch and after an epoch's last one (public
    attributes only: the fit loop's own test is private)."""
    if trainer is None:  # driven by hand, outside a fit: every backward is a step
        return True
    accumulate = max(1, int(trainer.accumulate_grad_batches))
    last = trainer.num_training_batches
    return (batch_idx + 1) % accumulate == 0 or (isinstance(last, int) and batch_idx + 1 == last)


class InverseEWC(ImportanceWeightedAnchor):
    """Anchor re-weighted by exp(-z(F)/T), F an EMA over requests of the loss's squared gradients."""

    acts_on_training = "it estimates a Fisher from the training gradients and adds a penalty to the training loss"

    option_prefix = "lightning_unlearn.callbacks.inverse_ewc.InverseEWC"
    record_stem = "inverse_ewc"
    display_name = "inverse-EWC"

    def __init__(
        self,
        kind: Literal["l1", "l2"] = "l2",
        weight: float = 100.0,
        decay: float = 0.7,
        temperature: float = 1.0,
        name: str | None = None,
    ) -> None:
        """
        Args:
            kind: ``l1``: weight * mean(exp(-z/T) * |theta - theta_prev|); ``l2``: the same with
                (theta - theta_prev)^2. theta_prev = the weights the request started from.
            weight: penalty weight, mean-reduced over the N trainable elements. Default 100: the
                reference's L2-SP weight for methods other than Concept Ablation on SD 1.5
                (its Inverse-EWC reuses the anchor's weight). Scale by N_model / N_SD15 on
                another model (configs/tinyworld/callbacks/inverse_ewc_esd.yaml).
            decay: weight of the latest request's Fisher in the EMA, F = decay * F_k +
                (1 - decay) * F_prev; 0.7 is the reference code's. In [0, 1].
            temperature: T in exp(-z/T) (> 0); 1.0 uses the standardised Fisher as is (no value
                in the reference notes; larger T moves towards a plain anchor).
            name: distinguishes two instances of this class in checkpoints and logs.
        """
        super().__init__(kind=kind, weight=weight, decay=decay, temperature=temperature, name=name)
        self._fisher: list[torch.Tensor] = []  # running sum of g^2 per trained tensor (float32)
        self._fisher_keys: list[str] = []
        self._fisher_steps = 0

    def start_importance(self, trainer: Trainer | None, pl_module: LightningModule) -> None:
        params = dict(pl_module.unet.named_parameters())
        self._fisher_keys = list(self.keys)
        self._fisher = [torch.zeros_like(params[k], dtype=torch.float32) for k in self._fisher_keys]
        self._fisher_steps = 0

    def after_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if len(self._fisher) != len(self.keys):  # e.g. a plain fit: nothing started yet
            self.start_importance(trainer, pl_module)
        self._fisher = [f.to(p.device) for f, p in zip(self._fisher, self._params)]

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self._batch_idx = batch_idx  # read by on_after_backward, whose hook has no batch index

    @torch.no_grad()
    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._params or not _completes_step(trainer, getattr(self, "_batch_idx", 0)):
            return
        present = [(acc, p.grad) for acc, p in zip(self._fisher, self._params) if p.grad is not None]
        if not present:
            return
        grads = [g.float() for _, g in present]
        scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
        if scaler is not None and scaler.is_enabled():
            scale = float(scaler.get_scale())
            torch._foreach_mul_(grads, 1.0 / scale)
            if not all(bool(torch.isfinite(n)) for n in torch._foreach_norm(grads)):
                return  # the scaler skips this step; so does the Fisher
        torch._foreach_addcmul_([acc for acc, _ in present], grads, grads)
        self._fisher_steps += 1

    def request_importance(self, pl_module: LightningModule) -> dict[str, torch.Tensor]:
        steps = max(1, self._fisher_steps)
        fisher = {k: (f / steps).cpu() for k, f in zip(self._fisher_keys, self._fisher)}
        self._last_steps = self._fisher_steps
        self._fisher, self._fisher_keys, self._fisher_steps = [], [], 0
        return fisher

    def extra_record(self) -> dict[str, Any]:
        return {"fisher_steps": getattr(self, "_last_steps", 0)}

    def importance_state(self) -> dict[str, Any]:
        return {"keys": list(self._fisher_keys), "sum": [f.detach().cpu() for f in self._fisher],
                "steps": self._fisher_steps}

    def load_importance_state(self, state: dict[str, Any]) -> None:
        if state:
            self._fisher_keys = list(state.get("keys", []))
            self._fisher = [f.clone() for f in state.get("sum", [])]
            self._fisher_steps = int(state.get("steps", 0))
