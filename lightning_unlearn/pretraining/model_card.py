"""What the tiny world's model cards (``lightning_unlearn/weights/*.json``) record of a recipe.

A card ships with the package, so it must not record where the weights were written on the
training machine (``/root/...``, ``/home/...``): that says nothing about the model and leaks the
trainer's file layout. The recipe's other hyperparameters are kept, so the card still tells how
to reproduce the weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

OUTPUT_KEYS = ("export_path", "export_dir")
"""Hyperparameters that name where a recipe writes its weights, never part of a card."""


def is_machine_path(value: Any) -> bool:
    """Whether ``value`` is an absolute file path (POSIX, ``~``-relative or Windows)."""
    if not isinstance(value, str):
        return False
    return PurePosixPath(value).is_absolute() or value.startswith("~") or PureWindowsPath(value).is_absolute()


def card_hyperparameters(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """``hparams`` as a card records them: without output locations, without any other absolute
    path, and without jsonargparse's private keys (``_class_path``, ``_instantiator``)."""
    return {
        key: value
        for key, value in hparams.items()
        if not key.startswith("_") and key not in OUTPUT_KEYS and not is_machine_path(value)
    }
