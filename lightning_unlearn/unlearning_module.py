"""UnlearningModule: the LightningModule that wraps the UNet and the unlearning loss.

Per request (``begin_request``) it freezes a reference copy of the UNet as it stands, selects
the trainable set, and lets the method prepare its data; ``training_step`` is the method's
loss. Regularizer callbacks see only parameters, gradients and ``current_request``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable

from lightning_unlearn.backbone import Backbone, DiffusersBackbone, TinyWorldBackbone
from lightning_unlearn.methods import ESD, UnlearningMethod
from lightning_unlearn.requests import ConceptVocabulary, Request
from lightning_unlearn.trainable import apply_trainable


class NonFiniteLossError(FloatingPointError):
    """The unlearning loss became NaN or infinite; the request is stopped."""


class UnlearningModule(LightningModule):
    """Wraps a backbone (tiny world or Stable Diffusion) and an unlearning method."""

    def __init__(
        self,
        method: UnlearningMethod | None = None,
        pretrained: str | None = None,
        unet_weights: str | None = None,
        trainable: str = "esd-x",
        optimizer: OptimizerCallable | None = None,
        lr: float = 1e-5,
        seed: int = 0,
    ) -> None:
        """
        Args:
            method: the unlearning loss (default: ``ESD()``).
            pretrained: a diffusers-format Stable Diffusion folder; unset = the tiny world.
            unet_weights: tiny world only: a UNet safetensors file other than the shipped one.
            trainable: weights a request may change: ``esd-x`` (cross-attention), ``kv-xattn``
                (cross-attention keys and values), ``esd-u`` (all but cross-attention), ``full``.
            optimizer: optimizer factory (``--model.optimizer=torch.optim.AdamW --model.optimizer.lr=...``;
                bitsandbytes.optim.AdamW8bit works the same way);
                unset = ``AdamW(lr=lr, weight_decay=0)``.
            lr: learning rate of the default optimizer.
            seed: seed of per-request randomness the method draws (banks, noise).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["method", "optimizer"])
        self.method = method if method is not None else ESD()
        self.optimizer_factory = optimizer
        self.backbone: Backbone = (
            DiffusersBackbone(pretrained) if pretrained else TinyWorldBackbone(weights=unet_weights)
        )
        self.trainable = trainable
        self.trainable_keys = apply_trainable(self.unet, trainable)
        self.current_request: Request | None = None
        self.request_index = -1
        self.request_captions: list[str] = []
        self.run_dir: Path | None = None
        """The stream's run folder (set by the runner); methods may cache per-run data under it."""
        self.vocabulary: ConceptVocabulary | None = None
        """The stream's concept vocabulary (set by the runner); methods that build captions over
        the other kind's concepts (Concept Ablation) read it. ``None`` outside a stream."""
        # The pretrained values of the trainable keys: the "base" that anchors, merging and
        # drift compare against, whatever the stream has done since.
        self.__dict__["_base_state"] = {k: v.detach().clone().cpu() for k, v in self.trainable_state().items()}

    @property
    def unet(self) -> torch.nn.Module:
        """The UNet being unlearned."""
        return self.backbone.unet

    @property
    def reference_unet(self) -> torch.nn.Module:
        """Frozen copy of the UNet as it stood when the current request started."""
        return self.__dict__["_reference_unet"]

    @property
    def request_seed(self) -> int:
        """Seed of the current request's randomness."""
        return self.hparams.seed * 10_007 + self.request_index

    def base_state(self) -> dict[str, torch.Tensor]:
        """Pretrained values of the trainable keys (CPU tensors, never trained)."""
        return self.__dict__["_base_state"]

    def begin_request(self, index: int, request: Request, captions: list[str]) -> None:
        """Start serving ``request`` (the ``index``-th): freeze the reference, prepare the method."""
        self.current_request = request
        self.request_index = index
        self.request_captions = list(captions)
        reference = copy.deepcopy(self.unet).requires_grad_(False).eval()
        # Kept outside the module tree: not trained, not checkpointed, not moved twice.
        self.__dict__["_reference_unet"] = reference
        self.trainable_keys = apply_trainable(self.unet, self.trainable)
        self.method.prepare_request(self, self.request_captions)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable keys' current values (what a request's checkpoint holds)."""
        params = dict(self.unet.named_parameters())
        return {k: params[k].detach() for k in self.trainable_keys}

    def load_trainable_state(self, state: dict[str, torch.Tensor], source: str | Path = "checkpoint") -> None:
        """Load trainable keys saved by :meth:`trainable_state`; a named error on a mismatch."""
        params = dict(self.unet.named_parameters())
        unknown = [k for k in state if k not in params]
        if unknown:
            raise ValueError(f"{source} does not fit this model: it has keys this UNet lacks, e.g. {unknown[:3]}")
        for k, v in state.items():
            if params[k].shape != v.shape:
                raise ValueError(
                    f"{source} does not fit this model: {k} has shape {tuple(v.shape)}, the UNet's is {tuple(params[k].shape)}"
                )
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v.to(params[k].dtype))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.method.loss(self, batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite unlearning loss ({float(loss)}) at step {self.global_step} of request "
                f"{self.current_request.concept if self.current_request else '?'}"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["seed"]))
        return loss

    def configure_optimizers(self):
        params = [p for p in self.unet.parameters() if p.requires_grad]
        if self.optimizer_factory is not None:
            return self.optimizer_factory(params)
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=0.0)
