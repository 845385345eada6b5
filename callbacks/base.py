"""RequestCallback: a Lightning Callback that also hears when a request starts and ends.

``serve_request`` (:mod:`lightning_unlearn.serving`) calls ``on_request_start`` after the module
has frozen its reference and prepared the method, and *before* ``trainer.fit`` builds the
optimizer (so a callback can freeze tensors with ``requires_grad=False`` in time);
``on_request_end`` after the request's training, before its weights are saved and evaluated. Every process of a DDP run calls both.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class RequestCallback(Callback):
    """Base of regularizers and recorders that act per unlearning request."""

    supports_lora: bool = False
    """Whether the callback serves ``--model.trainable=lora`` requests, whose trained parameters
    are adapter factors, not weights; a stream refuses the others at start (docs/lora.md)."""
    acts_on_training: ClassVar[str | None] = "it acts on a request's optimizer steps"
    """What the callback does to a request's training (a loss term, a gradient mask or
    projection, a statistic of the gradients), or ``None`` for one that only reads the weights
    a request starts and ends with (drift). A training-free method (UCE) takes no optimizer
    step, so the stream refuses a callback that acts on training, saying this."""

    def __init__(self, name: str | None = None) -> None:
        """
        Args:
            name: distinguishes two instances of one class in checkpoints (default: class name).
        """
        super().__init__()
        self.name = name

    @property
    def state_key(self) -> str:
        # Two instances of one class must not overwrite each other's checkpoint state.
        return self._generate_state_key(name=self.name or type(self).__qualname__)

    def on_request_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The module is ready for ``pl_module.current_request``; the optimizer is not built yet."""

    def on_request_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Training for the current request is done; weights are not saved yet."""

    def request_records(self) -> dict[str, dict[str, Any]]:
        """JSON records of the request just ended, by file stem: the runner writes each to
        ``requests/NN-<concept>/<stem>.json`` (after ``on_request_end``)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def carried_state(self) -> dict[str, torch.Tensor]:
        """Tensors that must outlive the request (e.g. a running average over requests), read
        after ``on_request_end``. The stream saves them with the committed request (safetensors,
        sha256 in the ledger) and gives them back through :meth:`load_carried_state` when a
        stream resumes after that request; default: nothing carried."""
        return {}

    def load_carried_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`carried_state` returned after the last committed request."""


def request_callbacks(trainer: Trainer) -> list[RequestCallback]:
    """The trainer's callbacks that take request hooks."""
    return [cb for cb in trainer.callbacks if isinstance(cb, RequestCallback)]
