"""L1-SP / L2-SP: pull the trainable weights towards an anchor while a request is served.

    penalty = weight * (1/N) * sum |theta - theta_ref|       (l1)
    penalty = weight * (1/N) * sum (theta - theta_ref)^2     (l2)

over the N trainable elements (mean reduction, as the reference code). The penalty is not
added to the loss: its gradient is added to ``p.grad`` in ``on_before_optimizer_step``, where
the gradients are already accumulated, DDP-synced and unscaled, so the same formula is exact
under gradient accumulation, DDP and mixed precision and costs no extra backward pass.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer

from lightning_unlearn.callbacks.base import RequestCallback
from lightning_unlearn.checks import non_negative


class AnchorRegularizer(RequestCallback):
    """L1/L2 penalty on the drift of the trainable weights from a reference checkpoint."""

    acts_on_training = "it adds an L1/L2 anchor penalty to the training loss"

    def __init__(
        self,
        kind: Literal["l1", "l2"] = "l2",
        weight: float = 100.0,
        reference: Literal["previous", "base"] = "previous",
        name: str | None = None,
    ) -> None:
        """
        Args:
            kind: ``l1`` (L1-SP, (1/N) sum |d|) or ``l2`` (L2-SP, (1/N) sum d^2), d = theta - theta_ref.
            weight: penalty weight. The reference's values, for Concept Ablation on SD 1.5's
                kv-xattn (19.17 M elements): L1 10-100, L2 about 25000; with other methods L1
                0.1-5, L2 100. The mean reduction makes the per-element pull weight / N, so on a
                model with fewer trainable elements scale the weight by N_model / N_SD15 to keep
                it (the tiny world's kv-xattn: x 0.0282, configs/tinyworld/callbacks/).
            reference: ``previous`` anchors to the weights the request started from (the previous
                request's result); ``base`` to the pretrained weights.
            name: distinguishes two instances of this class in checkpoints and logs.
        """
        super().__init__(name=name)
        if kind not in ("l1", "l2"):
            raise ValueError(f"kind must be 'l1' or 'l2', got {kind!r}")
        if reference not in ("previous", "base"):
            raise ValueError(f"reference must be 'previous' or 'base', got {reference!r}")
        # A negative weight would reward moving away from the reference.
        non_negative(weight, "lightning_unlearn.callbacks.anchor.AnchorRegularizer init_args.weight")
        self.kind = kind
        self.weight = float(weight)
        self.reference = reference
        self.keys: list[str] = []
        self.anchor: list[torch.Tensor] = []
        self._params: list[torch.nn.Parameter] = []  # bound inside fit, on the training device
        self._numel = 0  # N, counted once per fit rather than every step
        self.last_penalty: torch.Tensor | None = None
        """The penalty at the last optimizer step (a tensor: reading it would sync the device)."""

    @property
    def state_key(self) -> str:
        if self.name:
            return super().state_key
        # Differently configured instances (an l1 and an l2) must not share checkpoint state.
        return self._generate_state_key(kind=self.kind, weight=self.weight, reference=self.reference)

    @property
    def log_key(self) -> str:
        """Where the penalty is logged."""
        return f"{self.name or f'anchor_{self.kind}_{self.reference}'}/penalty"

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "weight": self.weight, "reference": self.reference}

    @classmethod
    def describe(cls, settings: dict[str, Any]) -> str:
        """``L2 to previous, w=705``."""
        return f"{str(settings['kind']).upper()} to {settings['reference']}, w={float(settings['weight']):g}"

    # -- per request ---------------------------------------------------------------------------
    def on_request_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.keys = list(pl_module.trainable_keys)
        if self.reference == "previous":
            params = dict(pl_module.unet.named_parameters())
            self.anchor = [params[k].detach().clone() for k in self.keys]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning moves the module to its device inside fit (and back to the CPU after it),
        # so the anchor follows the parameters here rather than at request start.
        if not self.keys:  # a plain fit outside the stream: anchor to where it starts
            self.on_request_start(trainer, pl_module)
        params = dict(pl_module.unet.named_parameters())
        self._params = [params[k] for k in self.keys]
        source = self.anchor if self.reference == "previous" else [pl_module.base_state()[k] for k in self.keys]
        self.anchor = [a.to(device=p.device, dtype=p.dtype) for p, a in zip(self._params, source)]
        self._numel = sum(p.numel() for p in self._params)

    # -- per optimizer step --------------------------------------------------------------------
    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if not self._params or not self.anchor:
            return
        params = self._params
        numel = self._numel or sum(p.numel() for p in params)
        diffs = torch._foreach_sub(params, self.anchor)
        if self.kind == "l2":
            norms = torch._foreach_norm(diffs, 2)
            penalty = torch.stack(norms).square().sum() * (self.weight / numel)
            torch._foreach_mul_(diffs, 2.0 * self.weight / numel)
        else:
            norms = torch._foreach_norm(diffs, 1)
            penalty = torch.stack(norms).sum() * (self.weight / numel)
            torch._foreach_sign_(diffs)
            torch._foreach_mul_(diffs, self.weight / numel)
        grads, updates = [], []
        for p, g in zip(params, diffs):
            if not p.requires_grad:  # frozen for this request by another callback
                continue
            if p.grad is None:  # no loss gradient this step; the penalty still pulls
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
            updates.append(g.to(p.grad.dtype))
        if grads:
            torch._foreach_add_(grads, updates)
        self.last_penalty = penalty
        pl_module.log(self.log_key, penalty, on_step=True, on_epoch=False)

    def on_request_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The next request takes a fresh anchor; do not hold a copy of the weights meanwhile.
        self.keys, self.anchor, self._params = [], [], []

    def state_dict(self) -> dict[str, Any]:
        # "base" is rebuilt from the module; "previous" cannot be once the request has trained.
        anchor = [a.detach().cpu() for a in self.anchor] if self.reference == "previous" else []
        return {"kind": self.kind, "weight": self.weight, "reference": self.reference,
                "keys": list(self.keys), "anchor": anchor}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.keys = list(state_dict.get("keys", []))
        self.anchor = list(state_dict.get("anchor", [])) if self.reference == "previous" else []
