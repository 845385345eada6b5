"""Which UNet weights a request may change (the ESD paper's trainable sets)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lightning_unlearn.errors import SettingsError


def cross_attention(*projections: str) -> Callable[[str], bool]:
    """Selects the named projections (``to_q``, ``to_k``, ``to_v``, ``to_out``) of every
    cross-attention layer."""
    return lambda name: any(f".attn2.{projection}." in name for projection in projections)


TRAINABLE_SETS: dict[str, Callable[[str], bool]] = {
    # cross-attention layers only (ESD-x)
    "esd-x": lambda name: ".attn2." in name,
    # cross-attention key and value projections only (ESD-x-strict / Concept Ablation's kv-xattn)
    "kv-xattn": cross_attention("to_k", "to_v"),
    # The two halves between kv-xattn and esd-x, to tell which of the cross-attention's query and
    # output projections a method's damage comes through (docs/dit.md): keys, values and queries;
    # keys, values and the output projection.
    "qkv-xattn": cross_attention("to_q", "to_k", "to_v"),
    "kvo-xattn": cross_attention("to_k", "to_v", "to_out"),
    # everything except cross-attention (ESD-u)
    "esd-u": lambda name: ".attn2." not in name,
    "full": lambda name: True,
}


def trainable_names(unet: nn.Module, trainable: str) -> list[str]:
    """Names of the parameters in ``trainable`` (one of :data:`TRAINABLE_SETS`)."""
    if trainable not in TRAINABLE_SETS:
        raise SettingsError(f"--model.trainable: unknown trainable set {trainable!r}; choose one of {sorted(TRAINABLE_SETS)} or lora")
    selected = TRAINABLE_SETS[trainable]
    names = [name for name, _ in unet.named_parameters() if selected(name)]
    if not names:
        raise SettingsError(f"--model.trainable: trainable set {trainable!r} selects no parameter of this UNet")
    return names


def apply_trainable(unet: nn.Module, trainable: str) -> list[str]:
    """Set ``requires_grad`` so only ``trainable`` learns; returns the selected names."""
    names = set(trainable_names(unet, trainable))
    for name, param in unet.named_parameters():
        param.requires_grad_(name in names)
    return sorted(names)
