"""UnlearningModule: the LightningModule that wraps the UNet and the unlearning loss.

Per request (``begin_request``) it freezes a reference copy of the UNet as it stands, selects
the trainable set, and lets the method prepare its data; ``training_step`` is the method's
loss. Regularizer callbacks see only parameters, gradients and ``current_request``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable

from lightning_unlearn.backbone import Backbone, DiffusersBackbone
from lightning_unlearn.methods import ESD, UnlearningMethod
from lightning_unlearn.requests import ConceptVocabulary, Request
# The module picks the tiny world when no --model.pretrained is given: it sits above both.
from lightning_unlearn.tinyworld.backbone import TinyWorldBackbone
from lightning_unlearn.tinyworld.concepts import tiny_vocabulary
from lightning_unlearn.trainable import apply_trainable
from lightning_unlearn.unet_weights import load_unet_weights

REFERENCE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
}
"""``--model.reference_dtype`` choices: the dtype the frozen reference UNet is held in."""


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
        reference_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        gradient_checkpointing: bool = False,
    ) -> None:
        """
        Args:
            method: the unlearning loss (default: ``ESD()``).
            pretrained: a diffusers-format Stable Diffusion folder; unset = the tiny world.
            unet_weights: UNet weights to start from instead of the backbone's (either world): a
                diffusers UNet folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) or
                a safetensors state dict, full or only some keys (e.g. trained cross-attention).
                Pickled ``.bin``/``.ckpt`` files are refused, never unpickled.
            trainable: weights a request may change: ``esd-x`` (cross-attention), ``kv-xattn``
                (cross-attention keys and values), ``esd-u`` (all but cross-attention), ``full``.
            optimizer: optimizer factory (``--model.optimizer=torch.optim.AdamW --model.optimizer.lr=...``;
                bitsandbytes.optim.AdamW8bit works the same way);
                unset = ``AdamW(lr=lr, weight_decay=0)``.
            lr: learning rate of the default optimizer.
            seed: seed of per-request randomness the method draws (banks, noise).
            reference_dtype: dtype of the frozen reference UNet copy (``bfloat16`` halves its
                memory; the trainable UNet keeps its own dtype, inputs are cast at the call).
            gradient_checkpointing: recompute the UNet's block activations in backward instead of
                keeping them (diffusers' ``enable_gradient_checkpointing``): less memory, about
                a third more compute per step. Attention is torch SDPA either way (no xformers).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["method", "optimizer"])
        self.method = method if method is not None else ESD()
        self.optimizer_factory = optimizer
        if reference_dtype not in REFERENCE_DTYPES:
            raise ValueError(f"reference_dtype must be one of {sorted(REFERENCE_DTYPES)}, got {reference_dtype!r}")
        self.backbone: Backbone = DiffusersBackbone(pretrained) if pretrained else TinyWorldBackbone()
        if unet_weights:
            load_unet_weights(self.unet, unet_weights)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.trainable = trainable
        self.trainable_keys = apply_trainable(self.unet, trainable)
        self.current_request: Request | None = None
        self.erasing: list[Request] = []
        """Concepts the current training erases: the current request alone, or (the
        simultaneous protocol) every request up to it. ``current_request`` is the last."""
        self.already_erased: list[Request] = []
        """Concepts erased in the weights the current request started from (sequential: the
        requests before it; protocols that restart from the base: none)."""
        self.request_index = -1
        self.request_captions: list[str] = []
        self.run_dir: Path | None = None
        """The stream's run folder (set by the runner); methods may cache per-run data under it."""
        # Outside a stream the tiny world's own vocabulary stands in (what generic code once
        # defaulted to); a Stable Diffusion model has none until the runner sets the stream's.
        self.vocabulary: ConceptVocabulary | None = None if pretrained else tiny_vocabulary()
        """The stream's concept vocabulary (set by the runner); methods that build captions over
        the other kind's concepts (Concept Ablation) read it. Outside a stream: the tiny
        world's for the tiny backbone, ``None`` for a ``pretrained`` folder."""
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

    def frozen_reference_copy(self) -> torch.nn.Module:
        """A frozen copy of the UNet as it stands, in ``reference_dtype``, on the UNet's device."""
        reference = copy.deepcopy(self.unet).requires_grad_(False).eval()
        # The reference only runs forward passes under no_grad: checkpointing would buy nothing.
        if getattr(reference, "is_gradient_checkpointing", False):
            reference.disable_gradient_checkpointing()
        # nn.Module.to: diffusers' own .to warns on every dtype cast, though a UNet2DConditionModel
        # has no modules it keeps in float32.
        return torch.nn.Module.to(reference, REFERENCE_DTYPES[self.hparams.get("reference_dtype", "float32")])

    def base_state(self) -> dict[str, torch.Tensor]:
        """Pretrained values of the trainable keys (CPU tensors, never trained)."""
        return self.__dict__["_base_state"]

    def begin_request(
        self,
        index: int,
        request: Request,
        captions: list[str],
        erasing: list[Request] | None = None,
        already_erased: list[Request] | None = None,
    ) -> None:
        """Start serving ``request`` (the ``index``-th): freeze the reference, prepare the method.

        ``captions`` are the training captions; ``erasing`` the concepts they erase (default:
        ``[request]``); ``already_erased`` the concepts the current weights have already had
        erased (default: none).
        """
        self.current_request = request
        self.erasing = list(erasing) if erasing is not None else [request]
        if self.erasing[-1] != request:
            raise ValueError(f"the request being served ({request.concept!r}) must be the last concept erased")
        self.already_erased = list(already_erased or [])
        self.request_index = index
        self.request_captions = list(captions)
        reference = self.frozen_reference_copy()
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

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # A mid-request checkpoint holds only the trainable keys (a request changes nothing else):
        # a few MB instead of the whole UNet (3.4 GB for Stable Diffusion).
        prefix = "backbone.unet."
        keep = {prefix + k for k in self.trainable_keys}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["trainable_keys"] = list(self.trainable_keys)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # The untrained keys are the request-start values the stream loaded before resuming;
        # a key this model lacks still fails Lightning's strict load, naming it.
        state = checkpoint["state_dict"]
        for key, value in self.state_dict().items():
            state.setdefault(key, value)

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
