"""UnlearningModule: the LightningModule that wraps the UNet and the unlearning loss.

Per request (``begin_request``, given the protocol's :class:`RequestPlan`) it freezes a
reference copy of the UNet as it stands, selects the trainable set, builds the request's
:class:`MethodContext` and lets the method prepare its data; ``training_step`` is the method's
loss. Regularizer callbacks see only parameters, gradients and the request
(``current_request``, ``erasing``, ``already_erased``: read from the plan).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable

from lightning_unlearn.backbone import Backbone, DiffusersBackbone
from lightning_unlearn.checks import positive
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.lora import (
    LORA, LoraSettings, add_request_adapter, adapter_state, drop_request_adapter, effective_weights,
    fuse_request_adapter, target_weight_names,
)
from lightning_unlearn.methods import ESD, MethodContext, UnlearningMethod
from lightning_unlearn.protocols import RequestPlan
from lightning_unlearn.requests import ConceptVocabulary, Request
# The module picks the tiny world when no --model.pretrained is given: it sits above both.
from lightning_unlearn.tinyworld.backbone import TinyDiT12Backbone, TinyDiTBackbone, TinyWorldBackbone
from lightning_unlearn.tinyworld.concepts import tiny_vocabulary
from lightning_unlearn.trainable import apply_trainable
from lightning_unlearn.unet_weights import UnetWeightsError, load_unet_weights

REFERENCE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
}
"""``--model.reference_dtype`` choices: the dtype the frozen reference UNet is held in."""

TINY_BACKBONES: dict[str, type[TinyWorldBackbone]] = {
    "tinyworld": TinyWorldBackbone,
    "tinyworld-dit": TinyDiTBackbone,
    "tinyworld-dit-12": TinyDiT12Backbone,
}
"""``--model.backbone`` choices: the tiny world's UNet (epsilon prediction) or one of its two DiTs (flow matching)."""

COMPILE_MODES: tuple[str, ...] = ("off", "default", "reduce-overhead", "max-autotune")
"""``--model.compile`` choices: ``off``, or the ``torch.compile`` mode the UNets are compiled with."""

OPTIMIZER_IMPLEMENTATION_KEYS = frozenset({"params", "foreach", "fused", "capturable", "differentiable"})
"""Param-group entries that say how an optimizer runs, not what it computes."""


class NonFiniteLossError(FloatingPointError):
    """The unlearning loss became NaN or infinite; the request is stopped."""


def check_edit_is_saved(method: UnlearningMethod, unet: torch.nn.Module, trainable: str,
                        trainable_keys: list[str]) -> None:
    """A :class:`SettingsError` unless the trainable set holds every weight a training-free
    method edits: a request saves, merges and measures the trainable keys only, so an edit
    outside them would be lost at the first commit."""
    outside = sorted(set(method.edited_keys(unet)) - set(trainable_keys))
    if outside:
        raise SettingsError(
            f"--model.trainable={trainable} does not hold the weights {type(method).__name__} edits "
            f"(e.g. {outside[0]}); "
            "use kv-xattn (its cross-attention keys and values), esd-x or full"
        )


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
        lora: LoraSettings | None = None,
        compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off",
        channels_last: bool = False,
        fused_optimizer: bool = False,
        backbone: str = "tinyworld",
    ) -> None:
        """
        Args:
            method: the unlearning loss (default: ``ESD()``).
            pretrained: a diffusers pipeline folder with safetensors weights: Stable Diffusion
                1.x / 2.x (``model_index.json`` ``_class_name`` StableDiffusionPipeline) or PixArt
                (PixArtAlphaPipeline, PixArtSigmaPipeline; docs/dit.md); SDXL, SD3, Flux, Sana and
                other families are refused, and so are pickled ``.bin`` folders (never
                unpickled); unset = the tiny world (``backbone``).
            unet_weights: UNet weights to start from instead of the backbone's (either world): a
                diffusers UNet folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) or
                a safetensors state dict, full or only some keys (e.g. trained cross-attention).
                Pickled ``.bin``/``.ckpt`` files are refused, never unpickled.
            trainable: weights a request may change: ``esd-x`` (cross-attention), ``kv-xattn``
                (cross-attention keys and values), ``qkv-xattn`` / ``kvo-xattn`` (keys and values
                plus the queries / the output projection), ``esd-u`` (all but cross-attention), ``full``;
                or ``lora``: each request trains a fresh low-rank adapter on ``lora.targets``,
                fused into the weights when the request ends (docs/lora.md).
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
            lora: the adapter of ``--model.trainable=lora`` (rank, alpha, target layers); unset =
                rank 4, alpha 4, the cross-attention keys and values.
            compile: ``torch.compile`` the trained UNet and every frozen copy of it (reference,
                base) in this mode: training steps, the x_t bank and evaluation sampling run
                compiled (``nn.Module.compile``: parameter names and checkpoints are unchanged).
                ``reduce-overhead`` adds CUDA graphs (for small, launch-bound batches on a GPU).
                ``off`` (default) runs eagerly; the first calls of each new batch shape compile.
            channels_last: hold the UNets' 4-D weights in channels-last memory format (faster
                convolutions on GPUs with tensor cores, above all in bf16); same results up to
                float rounding.
            fused_optimizer: the default AdamW as one fused kernel (``fused=True``, CUDA and
                CPU) instead of PyTorch's per-tensor or foreach loop; ignored with ``optimizer``
                (give that one ``--model.optimizer.fused=true`` yourself).
            backbone: the tiny world's model when ``pretrained`` is unset: ``tinyworld`` (its
                UNet, epsilon prediction), ``tinyworld-dit`` (its 8-block diffusion transformer,
                flow matching; docs/dit.md) or ``tinyworld-dit-12`` (the 12-block one, the DiT
                that meets the 90% object bar; 1.5 times slower a step).
        """
        super().__init__()
        # Checked before the backbone loads: a bad value must not cost a model load.
        positive(lr, "--model.lr")
        if reference_dtype not in REFERENCE_DTYPES:
            raise SettingsError(f"--model.reference_dtype must be one of {sorted(REFERENCE_DTYPES)}, got {reference_dtype!r}")
        if lora is not None and trainable != LORA:
            raise SettingsError(f"--model.lora configures LoRA adapters: it needs --model.trainable=lora, not {trainable!r}")
        if backbone not in TINY_BACKBONES:
            raise SettingsError(f"--model.backbone must be one of {', '.join(TINY_BACKBONES)}, got {backbone!r}")
        if pretrained and backbone != "tinyworld":
            raise SettingsError(
                f"--model.backbone={backbone} picks a tiny-world model, --model.pretrained a real one: give only one"
            )
        if compile not in COMPILE_MODES:
            raise SettingsError(f"--model.compile must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
        self.save_hyperparameters(ignore=["method", "optimizer", "lora"])
        self.method = method if method is not None else ESD()
        self.optimizer_factory = optimizer
        self.backbone: Backbone = DiffusersBackbone(pretrained) if pretrained else TINY_BACKBONES[backbone]()
        if unet_weights:
            load_unet_weights(self.unet, unet_weights)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self._speed_up(self.unet)
        self.trainable = trainable
        self.lora: LoraSettings | None = (lora or LoraSettings()) if trainable == LORA else None
        """The adapter settings when requests train LoRA adapters, else ``None``."""
        if self.lora is not None:
            # The weights a request changes: the targeted layers' (fused) weights.
            self.weight_keys = target_weight_names(self.unet, self.lora)
            self.unet.requires_grad_(False)
            self.trainable_keys: list[str] = []  # the adapter's factors, once a request attaches one
        else:
            self.trainable_keys = apply_trainable(self.unet, trainable)
            self.weight_keys = list(self.trainable_keys)
        if self.method.training_free:
            if self.lora is not None:
                raise SettingsError(
                    f"--model.trainable=lora trains an adapter, but {type(self.method).__name__} is a training-free "
                    "edit of the weights; use kv-xattn (its cross-attention keys and values), esd-x or full"
                )
            check_edit_is_saved(self.method, self.unet, trainable, self.trainable_keys)
        self.last_adapter: dict[str, torch.Tensor] | None = None
        """LoRA: the factors of the adapter the last request trained (``end_request``), for its commit."""
        # Outside a stream the tiny world's own vocabulary stands in; a Stable Diffusion model has
        # none: its requests come with the stream's (begin_request's ``vocabulary``).
        self.default_vocabulary: ConceptVocabulary | None = None if pretrained else tiny_vocabulary()
        """The vocabulary a request uses when ``begin_request`` is given none."""
        self.clear_request()
        # The pretrained values of the trainable keys: the "base" that anchors, merging and
        # drift compare against, whatever the stream has done since.
        self.__dict__["_base_state"] = {k: v.detach().clone().cpu() for k, v in self.trainable_state().items()}

    def _speed_up(self, unet: torch.nn.Module) -> None:
        """Compile ``unet`` in place when ``--model.compile`` asks for it (a deep copy of a
        compiled module is not compiled: every frozen copy is compiled anew)."""
        mode = self.hparams.get("compile", "off")
        if mode != "off":
            unet.compile(mode=mode)

    @property
    def unet(self) -> torch.nn.Module:
        """The UNet being unlearned."""
        return self.backbone.unet

    @property
    def reference_unet(self) -> torch.nn.Module:
        """Frozen copy of the UNet as it stood when the current request started."""
        return self.__dict__["_reference_unet"]

    @property
    def plan(self) -> RequestPlan | None:
        """The plan of the request being served (``None`` before ``begin_request``)."""
        return self.__dict__["_plan"]

    @property
    def current_request(self) -> Request | None:
        """The request being served (``None`` before ``begin_request``)."""
        plan = self.plan
        return None if plan is None else plan.request

    @property
    def erasing(self) -> tuple[Request, ...]:
        """Concepts the current training erases: the current request alone, or (the
        simultaneous protocol) every request up to it. ``current_request`` is the last."""
        plan = self.plan
        return () if plan is None else plan.erasing

    @property
    def already_erased(self) -> tuple[Request, ...]:
        """Concepts erased in the weights the current request started from (sequential: the
        requests before it; protocols that restart from the base: none)."""
        plan = self.plan
        return () if plan is None else plan.already_erased

    @property
    def request_index(self) -> int:
        """Position of the current request in its stream (-1 before ``begin_request``)."""
        plan = self.plan
        return -1 if plan is None else plan.index

    @property
    def vocabulary(self) -> ConceptVocabulary | None:
        """The current request's concept vocabulary, else :attr:`default_vocabulary`."""
        context = self.__dict__.get("_method_context")
        return context.vocabulary if context is not None else self.default_vocabulary

    @property
    def method_context(self) -> MethodContext:
        """What the method sees of the current request (built by ``begin_request``)."""
        context = self.__dict__["_method_context"]
        if context is None:
            raise RuntimeError("no request is being served: call begin_request first")
        return context

    @property
    def request_seed(self) -> int:
        """Seed of the current request's randomness."""
        return self.hparams.seed * 10_007 + self.request_index

    def frozen_reference_copy(self) -> torch.nn.Module:
        """A frozen copy of the UNet as it stands, in ``reference_dtype``, on the UNet's device
        (a plain UNet: an attached LoRA adapter is fused into the copy)."""
        reference = copy.deepcopy(self.unet).requires_grad_(False).eval()
        fuse_request_adapter(reference)
        # The reference only runs forward passes under no_grad: checkpointing would buy nothing.
        if getattr(reference, "is_gradient_checkpointing", False):
            reference.disable_gradient_checkpointing()
        # nn.Module.to: diffusers' own .to warns on every dtype cast, though a UNet2DConditionModel
        # has no modules it keeps in float32. (The copy keeps the weights' memory format.)
        reference = torch.nn.Module.to(reference, REFERENCE_DTYPES[self.hparams.get("reference_dtype", "float32")])
        self._speed_up(reference)
        return reference

    def frozen_base_copy(self) -> torch.nn.Module:
        """A frozen copy of the *base* UNet (pretrained values of the trainable keys, whatever the
        stream has trained since), in ``reference_dtype``, on the UNet's device."""
        base = self.frozen_reference_copy()
        params = dict(base.named_parameters())
        with torch.no_grad():
            for name, value in self.base_state().items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        return base

    def base_state(self) -> dict[str, torch.Tensor]:
        """Pretrained values of the weights a request changes (:attr:`weight_keys`; CPU tensors,
        never trained)."""
        return self.__dict__["_base_state"]

    def begin_request(
        self,
        plan: RequestPlan,
        captions: list[str],
        vocabulary: ConceptVocabulary | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        """Start serving ``plan.request``: freeze the reference, build the method's context,
        prepare the method.

        Args:
            plan: what the request trains (``lightning_unlearn.protocols.plan_request``); kept
                as given: ``current_request``, ``erasing``, ``already_erased`` and
                ``request_index`` read it.
            captions: the training captions (of the concepts ``plan.erasing`` names).
            vocabulary: the stream's concepts, for methods that caption over them (Concept
                Ablation); unset = the tiny world's.
            cache_dir: where the method may cache data across requests and runs (the stream
                passes ``<run_dir>/../.anchor_cache``); unset = in memory only.
        """
        if not plan.erasing or plan.erasing[-1] != plan.request:
            raise ValueError(f"the request being served ({plan.request.concept!r}) must be the last concept erased")
        self.__dict__["_plan"] = plan
        self.request_captions = list(captions)
        # LoRA: a request never ended (a caller without end_request) leaves its adapter in the weights.
        fuse_request_adapter(self.unet)
        reference = self.frozen_reference_copy()
        # Kept outside the module tree: not trained, not checkpointed, not moved twice.
        self.__dict__["_reference_unet"] = reference
        if self.lora is None:
            self.trainable_keys = apply_trainable(self.unet, self.trainable)
        vocabulary = vocabulary if vocabulary is not None else self.default_vocabulary
        if vocabulary is None:  # no world default for a real model: guessing one would caption the wrong concepts
            raise SettingsError("a request on a pretrained model needs the stream's concept vocabulary (begin_request's vocabulary)")
        context = MethodContext(
            unet=self.unet,
            reference_unet=reference,
            backbone=self.backbone,
            erasing=plan.erasing,
            already_erased=plan.already_erased,
            captions=tuple(self.request_captions),
            seed=self.request_seed,
            run_seed=int(self.hparams.seed),
            reference_dtype=self.hparams.get("reference_dtype", "float32"),
            vocabulary=vocabulary,
            cache_dir=None if cache_dir is None else Path(cache_dir),
            base_state=MappingProxyType(self.base_state()),  # a live, read-only view
            base_unet=self.frozen_base_copy,
        )
        self.__dict__["_method_context"] = context
        self.method.prepare_request(context)
        if self.lora is not None:
            # After the method's preparation (it sees the plain UNet); before the request hooks and
            # fit, which bind and checkpoint the adapter's factors. Its init draws from the request's seed.
            self.trainable_keys = add_request_adapter(self.unet, self.lora)
        self.last_adapter = None

    def end_request(self) -> None:
        """The request's training and end hooks are done: with LoRA, keep the adapter's factors
        (:attr:`last_adapter`, for the commit) and fuse it into the weights, so the UNet is plain
        again and the next request starts a fresh adapter on these weights."""
        if self.lora is not None and self.trainable_keys:
            self.last_adapter = adapter_state(self.unet)
            fuse_request_adapter(self.unet)
            self.trainable_keys = []

    @torch.no_grad()
    def apply_method_edit(self) -> None:
        """Serve the current request with a training-free method: load its closed-form edit
        (computed from the weights the request starts from) into the UNet."""
        edited = self.method.edit(self.method_context)
        self.load_trainable_state(edited, source=f"{type(self.method).__name__}'s edit")

    def clear_request(self) -> None:
        """Forget the request being served (plan, captions, reference copy, method context): the
        state of a module that has served none."""
        self.__dict__["_plan"] = None
        self.__dict__["_method_context"] = None
        self.__dict__.pop("_reference_unet", None)
        self.request_captions: list[str] = []

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The current values of the weights a request changes (:attr:`weight_keys`; what a
        request's ``weights.safetensors`` holds). LoRA: the effective weights W + s B A."""
        if self.lora is not None:
            return effective_weights(self.unet, self.weight_keys)
        params = dict(self.unet.named_parameters())
        return {k: params[k].detach() for k in self.trainable_keys}

    def load_trainable_state(self, state: dict[str, torch.Tensor], source: str | Path = "checkpoint") -> None:
        """Load weights saved by :meth:`trainable_state`; a named error on a mismatch. With LoRA
        an attached adapter is dropped first: the module then holds exactly these weights."""
        if self.lora is not None:
            drop_request_adapter(self.unet)
            self.trainable_keys = []
        params = dict(self.unet.named_parameters())
        unknown = [k for k in state if k not in params]
        if unknown:
            raise UnetWeightsError(f"{source} does not fit this model: it has keys this UNet lacks, e.g. {unknown[:3]}")
        for k, v in state.items():
            if params[k].shape != v.shape:
                raise UnetWeightsError(
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
        loss = self.method.loss(self.method_context, batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite unlearning loss ({float(loss)}) at step {self.global_step} of request "
                f"{self.current_request.concept if self.current_request else '?'}"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["seed"]))
        return loss

    def configure_optimizers(self):
        return self.build_optimizer([p for p in self.unet.parameters() if p.requires_grad])

    def build_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The optimizer of ``--model.optimizer`` (or the default AdamW) over ``params``."""
        if self.optimizer_factory is not None:
            return self.optimizer_factory(params)
        # fused=None: PyTorch's own choice (foreach on CUDA); True: one fused kernel.
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=0.0,
                                 fused=True if self.hparams.get("fused_optimizer", False) else None)

    def optimizer_settings(self) -> dict[str, Any]:
        """The hyperparameters the optimizer is built with (learning rate, betas, weight decay...),
        as JSON values; not how it runs (fused, foreach), which does not change the result.

        Restoring a mid-request checkpoint brings back the optimizer's saved hyperparameters
        over the configured ones, so a resumed request must have been saved with these (the
        stream checks them with the rest of the request's identity).
        """
        probe = self.build_optimizer([torch.nn.Parameter(torch.zeros(1))])
        group = {k: v for k, v in probe.param_groups[0].items() if k not in OPTIMIZER_IMPLEMENTATION_KEYS}
        return json.loads(json.dumps(group, default=repr))
