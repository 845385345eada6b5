"""LoRA requests (``--model.trainable=lora``): each request trains a fresh low-rank adapter.

A request on weights W trains, for every targeted linear layer, factors A [r, d_in] and
B [d_out, r] (peft's LoRA, through diffusers' ``add_adapter``); the layer computes
(W + s B A) x with s = alpha / r. peft starts B at zero, so a request starts from exactly W.
At the end of the request the adapter is fused into W (``fuse_lora`` then ``unload_lora``):
the next request (sequential protocol) starts a fresh adapter on the fused weights, so each
request's adapter is its own update, and the UNet between requests is a plain UNet again.

What a request leaves in its folder:

- ``weights.safetensors``: the fused weights W + s B A of the targeted layers under their plain
  UNet names (``...attn2.to_k.weight``), the file the ledger, verify, export, evaluation and
  merging read, exactly as for a full trainable set.
- ``adapter.safetensors`` + ``adapter.json``: the adapter itself in peft's key format
  (``...attn2.to_k.lora_A.weight``) and its settings (rank, alpha, targets, scale).

Merging (independent protocol, ``--stream.merge``): request i's task vector theta_i - theta_0
*is* its effective update s B_i A_i (it trained from the base and fused into it), so merging the
fused weights merges the effective updates; :func:`merge_adapters` computes the same merge from
the adapter files alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_unlearn.atomic_io import load_weights, save_weights, write_json
from lightning_unlearn.checks import at_least, positive
from lightning_unlearn.errors import SettingsError

LORA = "lora"
"""The ``--model.trainable`` value that trains adapters instead of a weight set."""

ADAPTER_NAME = "request"
"""peft's name of the one adapter a request trains (fused and removed when the request ends)."""

ADAPTER_FORMAT = "peft-lora"


@dataclass
class LoraSettings:
    """The adapter every request trains (``--model.lora.*``, with ``--model.trainable=lora``)."""

    rank: int = 4
    """r: rank of each adapter (A is [r, d_in], B is [d_out, r])."""
    alpha: float = 4.0
    """Scale numerator: the layer adds (alpha / rank) B A; alpha = rank keeps the scale at 1."""
    targets: list[str] = field(default_factory=lambda: ["attn2.to_k", "attn2.to_v"])
    """Linear layers that get an adapter, as module-name suffixes (peft's ``target_modules``).
    Default: the cross-attention keys and values (kv-xattn), the only layers that read the text
    and the ones gradient projection protects; ``[attn2.to_q, attn2.to_k, attn2.to_v,
    attn2.to_out.0]`` is ESD-x's set."""

    def __post_init__(self) -> None:
        at_least(self.rank, 1, "--model.lora.rank")
        positive(self.alpha, "--model.lora.alpha")
        if not self.targets or not all(isinstance(t, str) and t.strip() for t in self.targets):
            raise SettingsError(f"--model.lora.targets must be a non-empty list of module names, got {self.targets!r}")
        self.targets = list(self.targets)

    @property
    def scale(self) -> float:
        """s = alpha / rank, the factor of B A in the effective update."""
        return float(self.alpha) / int(self.rank)

    def peft_config(self):
        """peft's ``LoraConfig`` for one request's adapter (no dropout, no bias, B starts at zero)."""
        from peft import LoraConfig

        return LoraConfig(r=int(self.rank), lora_alpha=float(self.alpha), target_modules=list(self.targets),
                          lora_dropout=0.0, bias="none", init_lora_weights=True)

    def describe(self) -> dict[str, Any]:
        """The JSON next to each adapter (and in the manifest)."""
        return {"format": ADAPTER_FORMAT, **asdict(self), "scale": self.scale}


def _matches(module_name: str, target: str) -> bool:
    # peft's rule for a list of target_modules: the full name or a dotted suffix of it.
    return module_name == target or module_name.endswith("." + target)


def target_weight_names(unet: nn.Module, settings: LoraSettings) -> list[str]:
    """Plain UNet names (``<module>.weight``) of the linear layers ``settings`` targets; a
    :class:`SettingsError` naming a target that matches no linear layer of this UNet."""
    linears = [name for name, module in unet.named_modules() if type(module) is nn.Linear]
    for target in settings.targets:
        if not any(_matches(name, target) for name in linears):
            near = sorted({n.split(".", 1)[-1] for n in linears if target.split(".")[-1] in n})[:3]
            hint = f"; e.g. {near}" if near else ""
            raise SettingsError(
                f"--model.lora.targets: {target!r} matches no linear layer of this UNet (a target is a module-name "
                f"suffix such as attn2.to_k{hint})"
            )
    return sorted(f"{name}.weight" for name in linears if any(_matches(name, t) for t in settings.targets))


def adapter_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """The request adapter's peft layers by plain module name (empty when none is attached)."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in unet.named_modules()
            if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A}


def add_request_adapter(unet: nn.Module, settings: LoraSettings) -> list[str]:
    """Attach a fresh adapter (peft's init: A random, B zero; under the caller's seed) and make
    its factors the only trainable parameters; returns their names."""
    unet.requires_grad_(False)
    unet.add_adapter(settings.peft_config(), adapter_name=ADAPTER_NAME)
    names = sorted(name for name, _ in unet.named_parameters() if f".{ADAPTER_NAME}." in name and ".lora_" in name)
    for name, param in unet.named_parameters():
        param.requires_grad_(name in names)
    return names


def effective_weights(unet: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """W + s B A (``W`` where no adapter is attached) for plain weight ``names``, detached."""
    layers = adapter_layers(unet)
    out: dict[str, torch.Tensor] = {}
    for name in names:
        path = name.removesuffix(".weight")
        layer = layers.get(path)
        if layer is None:
            out[name] = unet.get_submodule(path).weight.detach()
        else:
            with torch.no_grad():
                out[name] = (layer.get_base_layer().weight + layer.get_delta_weight(ADAPTER_NAME)).detach()
    return out


def adapter_state(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The attached adapter's factors in peft's saved format (``...to_k.lora_A.weight``), CPU copies."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", copy=True).contiguous()
            for k, v in get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME).items()}


def fuse_request_adapter(unet: nn.Module) -> None:
    """Fold the attached adapter into its layers' weights (peft's merge) and remove it."""
    if adapter_layers(unet):
        unet.fuse_lora(adapter_names=[ADAPTER_NAME])
        unet.unload_lora()


def drop_request_adapter(unet: nn.Module) -> None:
    """Remove the attached adapter without fusing it (the weights stay as they were)."""
    if adapter_layers(unet):
        unet.unload_lora()


# -- adapter files ---------------------------------------------------------------------------
def save_adapter(state: dict[str, torch.Tensor], settings: LoraSettings, weights_path: Path, config_path: Path) -> str:
    """Write an adapter (safetensors) and its settings (JSON); returns the adapter's sha256."""
    sha = save_weights(state, weights_path)
    write_json(settings.describe(), config_path)
    return sha


def load_adapter(weights_path: Path, config_path: Path) -> tuple[dict[str, torch.Tensor], LoraSettings]:
    """An adapter written by :func:`save_adapter` (safetensors and JSON only: nothing unpickled)."""
    config = json.loads(Path(config_path).read_text())
    if config.get("format") != ADAPTER_FORMAT:
        raise SettingsError(f"{config_path} is not a LoRA adapter config (format {config.get('format')!r})")
    settings = LoraSettings(rank=config["rank"], alpha=config["alpha"], targets=config["targets"])
    return load_weights(weights_path), settings


def adapter_update(state: dict[str, torch.Tensor], settings: LoraSettings) -> dict[str, torch.Tensor]:
    """The effective update s B A of every adapted layer, by plain weight name, float32."""
    out: dict[str, torch.Tensor] = {}
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        b = state[key.replace(".lora_A.", ".lora_B.")]
        out[key.replace(".lora_A.weight", ".weight")] = settings.scale * (b.float() @ a.float())
    return out


def merge_adapters(base: dict[str, torch.Tensor], adapters: Sequence[tuple[dict[str, torch.Tensor], LoraSettings]],
                   merge: Any) -> dict[str, torch.Tensor]:
    """Merge independently trained adapters' effective updates with ``merge`` (a
    :class:`lightning_unlearn.protocols.MergeSettings`: uniform, task arithmetic or TIES).

    Each adapter i, trained from ``base``, stands for the checkpoint base + s B_i A_i, whose task
    vector is its effective update; the result is the merged weights under plain names (the
    same as merging the requests' fused ``weights.safetensors``)."""
    checkpoints = []
    for state, settings in adapters:
        update = adapter_update(state, settings)
        missing = [k for k in update if k not in base]
        if missing:
            raise SettingsError(f"an adapter has layers the base lacks, e.g. {missing[:3]}")
        checkpoints.append({k: (base[k].float() + d).to(base[k].dtype) for k, d in update.items()})
    keys = sorted(set().union(*checkpoints))
    filled = [{k: c.get(k, base[k]) for k in keys} for c in checkpoints]
    return merge.merge({k: base[k] for k in keys}, filled)


# -- callbacks -------------------------------------------------------------------------------
def refuse_callbacks_without_lora_support(trainable: str, callbacks: Sequence[Any]) -> None:
    """A :class:`SettingsError` naming the first request callback that does not declare
    ``supports_lora`` when requests train LoRA adapters (see docs/lora.md for each callback's
    decision): its penalties, masks or importance weights are defined per element of the
    trained weights, which with LoRA are rank-r factors, not weights."""
    if trainable != LORA:
        return
    for callback in callbacks:
        if not getattr(callback, "supports_lora", False):
            raise SettingsError(
                f"--model.trainable=lora trains adapter factors, and {type(callback).__name__} acts element by element "
                "on the trained weights (an anchor, mask or importance weight per weight), which LoRA factors are "
                "not: remove it, or use a full trainable set (--model.trainable=kv-xattn or esd-x); with LoRA, "
                "GradientProjection, Replay and DriftRecorder work"
            )
