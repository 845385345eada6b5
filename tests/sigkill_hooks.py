"""Test-only callbacks that SIGKILL the training process at a chosen moment (fault tests), or
send it another signal (``signal=SIGUSR1`` / ``SIGTERM`` / ``SIGINT``: pre-emption and interruption tests).

They are added on the command line (``--trainer.callbacks+=sigkill_hooks.SigkillAtStep``, with
``tests/`` on ``PYTHONPATH``) and fire once: they create ``marker`` first and do nothing if it
exists, so the very same command re-run afterwards trains on undisturbed. The kill is a real
``SIGKILL`` of the real process: nothing is flushed, no handler runs. Other signals are sent the
same way (``os.kill`` of the process itself), so the process's own handlers see them.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_unlearn.callbacks.base import RequestCallback


def _first_time(marker: str) -> bool:
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _send(name: str) -> None:
    os.kill(os.getpid(), getattr(signal, name))


class SigkillAtStep(Callback):
    """SIGKILL (or ``signal``) after optimizer step ``step`` of request ``request`` (1-based, as in
    ``requests/NN-``)."""

    def __init__(self, request: int, step: int, marker: str, signal: str = "SIGKILL") -> None:
        self.request, self.step, self.marker, self.signal = request, step, marker, signal
        self._start = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = trainer.global_step  # where this request's fit started

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if pl_module.request_index + 1 == self.request and trainer.global_step - self._start == self.step:
            if _first_time(self.marker):
                _send(self.signal)


class SignalAtRequestEnd(RequestCallback):
    """Send ``signal`` when request ``request``'s training is done, before its commit (weights,
    evaluation, ledger): a signal that arrives outside ``fit``."""

    def __init__(self, request: int, marker: str, signal: str = "SIGUSR1") -> None:
        super().__init__(name=f"SignalAtRequestEnd-{request}")
        self.request, self.marker, self.signal = request, marker, signal

    def on_request_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if pl_module.request_index + 1 == self.request and _first_time(self.marker):
            _send(self.signal)


class SigkillBeforeRename(Callback):
    """SIGKILL at the worst moment of an atomic write: the temporary file is complete and
    fsync'ed, the rename over a path ending in ``name`` (the ``occurrence``-th such write) not
    done yet.

    Python's audit hook for ``os.replace`` runs before the rename itself.
    """

    def __init__(self, name: str, marker: str, occurrence: int = 1, signal: str = "SIGKILL") -> None:
        self.name, self.marker, self.occurrence, self.signal = name, marker, occurrence, signal
        self._seen = 0
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if event != "os.rename" or len(args) < 2 or not str(args[1]).endswith(self.name):
            return
        self._seen += 1
        if self._seen == self.occurrence and _first_time(self.marker):
            _send(self.signal)
