"""Selective fine-tuning (SelFT): each request trains only its top-k most important weights.

At the start of a request, importance = |theta * g|, g = the gradient of the method's own
loss on the request's captions, summed over ``importance_batches`` batches with fixed seeds
(for ESD the draws cover the frozen trajectory's timesteps), on the weights the request
starts from. The global top-k fraction of trainable elements is kept; every other element is
frozen for the request:

- a tensor with no selected element gets ``requires_grad=False`` before the optimizer is
  built, so the optimizer never sees it (no weight decay, no state);
- in a partially selected tensor the unselected gradient entries are zeroed before each
  optimizer step, and after each step the unselected values are written back, because AdamW's
  decoupled weight decay (and any momentum from other regularizers' gradients) would
  otherwise still move them. They stay bit-identical for the whole request.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_unlearn.callbacks.base import RequestCallback
from lightning_unlearn.checks import at_least, in_interval
from lightning_unlearn.topk import count_for_fraction, global_topk_masks

IMPORTANCE_SEED_OFFSET = 7_777_777
"""Keeps the importance batches' seeds apart from the training samples' seeds."""


class SelectiveFineTuning(RequestCallback):
    """Freeze all but the global top-k fraction of trainable elements, per request."""

    acts_on_training = "it masks the gradients of all but the top-k trainable elements"

    def __init__(self, top_k: float = 0.05, importance_batches: int = 8, name: str | None = None) -> None:
        """
        Args:
            top_k: fraction of trainable elements a request may change (reference 0.01-0.40).
            importance_batches: batches of the request's captions the importance gradient is
                accumulated over (batch size = the datamodule's times the processes: one global
                batch; under DDP the ranks share the batches and all-reduce the sum).
            name: distinguishes two instances of this class in checkpoints and logs.
        """
        super().__init__(name=name)
        in_interval(top_k, 0, 1, "lightning_unlearn.callbacks.selective_finetuning.SelectiveFineTuning init_args.top_k")
        at_least(importance_batches, 1, "lightning_unlearn.callbacks.selective_finetuning.SelectiveFineTuning init_args.importance_batches")
        self.top_k = float(top_k)
        self.importance_batches = int(importance_batches)
        self.masks: dict[str, torch.Tensor] = {}
        """Per trainable key: bool mask of the elements this request may change."""
        self.selected = 0
        self.total = 0
        # The hot path: partially selected parameters, their masks and their frozen values.
        self._partial: list[torch.nn.Parameter] = []
        self._partial_masks: list[torch.Tensor] = []
        self._frozen_values: list[torch.Tensor] = []
        self._unselected: list[torch.Tensor] = []

    @property
    def state_key(self) -> str:
        if self.name:
            return super().state_key
        return self._generate_state_key(top_k=self.top_k, importance_batches=self.importance_batches)

    @property
    def log_prefix(self) -> str:
        return self.name or f"selft_{self.top_k:g}"

    def settings(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "importance_batches": self.importance_batches}

    @classmethod
    def describe(cls, settings: dict[str, Any]) -> str:
        """``top-k 5%``: the share of trainable elements each request may change."""
        return f"top-k {100 * float(settings['top_k']):g}%"

    # -- importance ----------------------------------------------------------------------------
    def importance(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, torch.Tensor]:
        """|theta * g| per trainable key, g summed over the importance batches (and ranks)."""
        params = dict(pl_module.unet.named_parameters())
        keys = [k for k in pl_module.trainable_keys if params[k].requires_grad]
        tensors = [params[k] for k in keys]
        grads = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]
        captions = list(pl_module.request_captions)
        if not captions:
            raise ValueError("SelectiveFineTuning needs the request's captions: call module.begin_request first")
        datamodule = getattr(trainer, "datamodule", None)
        # One importance batch is one *global* batch (per-process batch x processes), so a DDP run
        # scores the same samples as one process with the same global batch.
        processes = max(1, int(getattr(trainer, "world_size", 1)))
        batch_size = int(getattr(datamodule, "batch_size", 0) or len(captions)) * processes
        world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_available() and dist.is_initialized() else (1, 0)
        base_seed = IMPORTANCE_SEED_OFFSET + pl_module.request_seed * 1_000_003
        for i in range(self.importance_batches):
            if i % world != rank:  # ranks share the batches; the all-reduce below sums them
                continue
            start = i * batch_size
            batch = {
                "caption": [captions[(start + j) % len(captions)] for j in range(batch_size)],
                "seed": torch.arange(base_seed + start, base_seed + start + batch_size),
            }
            loss = pl_module.method.loss(pl_module.method_context, batch)
            # autograd.grad leaves every p.grad untouched (and DDP's gradient hooks unfired).
            step_grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            present = [(acc, g) for acc, g in zip(grads, step_grads) if g is not None]
            if present:  # one fused add over all tensors (float32 accumulators; add casts)
                torch._foreach_add_([acc for acc, _ in present], [g for _, g in present])
        if world > 1:
            # Every rank must freeze the same elements; summing also makes the result independent
            # of how the batches were split.
            for g in grads:
                dist.all_reduce(g, op=dist.ReduceOp.SUM)
        with torch.no_grad():
            return {k: (p.detach().float() * g).abs_() for k, p, g in zip(keys, tensors, grads)}

    # -- per request ---------------------------------------------------------------------------
    def on_request_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        scores = self.importance(trainer, pl_module)
        keys = list(scores)
        self.total = sum(s.numel() for s in scores.values())
        self.selected = count_for_fraction(self.top_k, self.total)
        masks = global_topk_masks([scores[k] for k in keys], self.selected)
        self.masks = {k: m.cpu() for k, m in zip(keys, masks)}
        self._apply(pl_module)
        # The request-start values of the unselected entries, taken now: when the request resumes
        # from a mid-request checkpoint, fit starts from trained weights in which a callback
        # listed after this one (a projected update) may have moved them.
        self._frozen_values = [p.detach()[~m.to(p.device)].clone() for p, m in zip(self._partial, self._partial_masks)]
        frozen = sum(1 for m in self.masks.values() if not m.any())
        rank_zero_info(
            f"{self.log_prefix}: {self.selected} of {self.total} trainable elements selected; "
            f"{frozen} of {len(keys)} tensors frozen whole, {len(self._partial)} partially"
        )

    def _apply(self, pl_module: LightningModule) -> None:
        """Freeze unselected whole tensors; remember the partially selected ones."""
        params = dict(pl_module.unet.named_parameters())
        self._partial, self._partial_masks = [], []
        for key, mask in self.masks.items():
            p = params[key]
            if not mask.any():
                p.requires_grad_(False)
            elif not mask.all():
                self._partial.append(p)
                self._partial_masks.append(mask)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Inside fit the parameters sit on their device; the masks and frozen values follow them.
        self._partial_masks = [m.to(p.device) for p, m in zip(self._partial, self._partial_masks)]
        # The unselected positions, inverted once here rather than on every optimizer step.
        self._unselected = [~m for m in self._partial_masks]
        if len(self._frozen_values) == len(self._partial):
            self._frozen_values = [v.to(p.device) for p, v in zip(self._partial, self._frozen_values)]
        else:  # a plain fit, without on_request_start: freeze the values it starts from
            self._frozen_values = [p.detach()[u].clone() for p, u in zip(self._partial, self._unselected)]

    # -- per optimizer step --------------------------------------------------------------------
    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        grads = [p.grad for p in self._partial if p.grad is not None]
        masks = [m for p, m in zip(self._partial, self._partial_masks) if p.grad is not None]
        if grads:
            # Unselected entries get no gradient, so Adam's moments for them stay zero.
            torch._foreach_mul_(grads, masks)
        if self._partial or self.masks:
            pl_module.log(f"{self.log_prefix}/selected_fraction", self.selected / max(1, self.total),
                          on_step=True, on_epoch=False)

    @torch.no_grad()
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        for p, unselected, values in zip(self._partial, self._unselected, self._frozen_values):
            # Weight decay moved them anyway; write back the exact request-start values.
            p.masked_scatter_(unselected, values)

    def on_request_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        params = dict(pl_module.unet.named_parameters())
        for key in pl_module.trainable_keys:
            params[key].requires_grad_(True)
        self._partial, self._partial_masks, self._frozen_values, self._unselected = [], [], [], []

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "selected": self.selected, "total": self.total,
                "masks": {k: m.cpu() for k, m in self.masks.items()}}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning restores callback state after ``setup`` and before it builds the optimizer:
        # remembering the module here lets a restored selection freeze tensors in time.
        self._module = pl_module

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.selected, self.total = int(state_dict["selected"]), int(state_dict["total"])
        self.masks = dict(state_dict["masks"])
        module = getattr(self, "_module", None)
        if module is not None and self.masks:
            self._apply(module)
