"""Mid-request checkpoints: an interrupted request resumes where it stopped, not from its start.

With ``--stream.checkpoint_every_n_steps=N`` the stream saves a Lightning checkpoint every N
optimizer steps of a request (never after its last step: that state is the committed request),
and -- with or without the option -- at the step where a pre-emption signal (SIGUSR1) stopped
the request (:mod:`lightning_unlearn.preemption`)::

    <run_dir>/checkpoints/request-03-step-000020.ckpt   trainable weights, optimizer, loop counters,
                                                          callback states, the loader's position
    <run_dir>/checkpoints/request-03.json               which request, protocol, steps; sha256

Both are written atomically (temporary name, fsync, rename), the record after the checkpoint it
names, so the record always points at a complete file; older checkpoints of the request are
removed after the record moves on, and all of them once the request is committed.

A checkpoint is read only from the run folder the stream wrote, only if its sha256 matches the
record, and only with ``torch.load(weights_only=True)`` (tensors and primitive containers, no
code): :class:`AtomicCheckpointIO` refuses anything else.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_unlearn.atomic_io import file_sha256, write_bytes, write_json
from lightning_unlearn.errors import UnlearnError
from lightning_unlearn.run_folder import CHECKPOINTS_DIR, checkpoint_file_name, checkpoint_stem

if TYPE_CHECKING:
    from lightning_unlearn.preemption import PreemptionSignal


class CheckpointMismatchError(UnlearnError, RuntimeError):
    """A mid-request checkpoint does not match its record or the stream being resumed."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes atomically (fsync + rename) and never unpickles code.

    Lightning's own writer renames through fsspec without fsync; this one goes through
    :mod:`lightning_unlearn.atomic_io` (a full disk raises ``DiskFullError`` and leaves nothing
    half-written) and remembers the sha256 of what it wrote last.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_sha256: str | None = None
        """sha256 of the checkpoint written last (what its record stores)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        self.last_sha256 = write_bytes(buffer.getvalue(), path)

    def load_checkpoint(self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError(f"refusing to unpickle {path}: checkpoints are loaded with weights_only=True only")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        with open(path, "rb") as fh:
            return torch.load(fh, map_location=map_location or (lambda storage, loc: storage), weights_only=True)

    def remove_checkpoint(self, path: str | Path) -> None:
        Path(path).unlink(missing_ok=True)


def checkpoint_dir(run_dir: Path) -> Path:
    """``<run_dir>/checkpoints/``."""
    return Path(run_dir) / CHECKPOINTS_DIR


def record_path(run_dir: Path, index: int) -> Path:
    """``checkpoints/request-NN.json`` of request ``index`` (0-based; NN as in ``requests/NN-...``)."""
    return checkpoint_dir(run_dir) / f"{checkpoint_stem(index)}.json"


def latest_checkpoint(run_dir: Path, index: int, expected: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of request ``index`` and its record, or ``None`` if there is none.

    ``expected`` holds record fields the resumed request must agree on (concept, protocol,
    training steps, batch size); a disagreement or a file that does not match its sha256 is a
    :class:`CheckpointMismatchError` naming the file.
    """
    path = record_path(run_dir, index)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    ckpt = Path(run_dir) / record["checkpoint"]
    differing = {k: (record.get(k), v) for k, v in expected.items() if record.get(k) != v}
    if differing:
        raise CheckpointMismatchError(
            f"{ckpt} was saved by a differently configured request ({', '.join(f'{k}: saved {a!r}, now {b!r}' for k, (a, b) in differing.items())}); "
            f"restore the settings, or delete {path} to restart the request from its start"
        )
    if not ckpt.is_file() or file_sha256(ckpt) != record["sha256"]:
        raise CheckpointMismatchError(f"{ckpt} is missing or does not match the sha256 in {path}")
    return ckpt, record


def clear_checkpoints(run_dir: Path, index: int | None = None) -> None:
    """Remove request ``index``'s checkpoints (all requests' if ``None``): the record first, so a
    crash in between leaves unreferenced files, never a record naming a missing one."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return
    stem = checkpoint_stem(index)
    for record in folder.glob(f"{stem}*.json"):
        record.unlink()
    for ckpt in folder.glob(f"{stem}*.ckpt"):
        ckpt.unlink()


class RequestCheckpoints(Callback):
    """Saves a Lightning checkpoint every ``every_n_steps`` optimizer steps of one request, and
    at the step a pre-emption signal arrived (then it stops the fit).

    The stream adds one per request (and removes it after the request's ``fit``), so it holds
    no state of its own in the checkpoint. It is the last callback of the trainer, so the
    checkpoint sees every other callback's state after the step.
    """

    def __init__(self, run_dir: Path, every_n_steps: int | None, index: int, record: dict[str, Any],
                 request_start_step: int, checkpoint_io: AtomicCheckpointIO,
                 preemption: "PreemptionSignal | None" = None) -> None:
        """
        Args:
            run_dir: the stream's run folder.
            every_n_steps: optimizer steps between checkpoints; ``None``: only at a pre-emption.
            index: the request's 0-based position in the stream.
            record: what identifies the request (concept, protocol, steps, batch size), stored in
                the record and checked on resume.
            request_start_step: the trainer's ``global_step`` when the request started.
            checkpoint_io: the strategy's checkpoint IO (it knows the sha256 of what it wrote).
            preemption: the stream's SIGUSR1 flag; when raised (on any rank), the fit stops
                after the current optimizer step with a checkpoint of it.
        """
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"checkpoint_every_n_steps must be at least 1, got {every_n_steps}")
        self.run_dir, self.every_n_steps, self.index = Path(run_dir), every_n_steps, index
        self.record, self.request_start_step, self.checkpoint_io = dict(record), int(request_start_step), checkpoint_io
        self.preemption = preemption
        self.preempted_at: int | None = None
        """Steps of the request done when a pre-emption stopped the fit (its checkpoint's step)."""
        self._last_saved_step: int | None = None
        self._step_at_batch_start: int | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        done = trainer.global_step - self.request_start_step
        stepped = trainer.global_step != self._step_at_batch_start  # gradient accumulation: not every batch steps
        last = done >= int(self.record["train_steps"])  # the last step's state is committed as the request
        if self.preemption is not None and stepped and not last:
            # Every rank must stop at the same step: stop if any rank got the signal.
            if trainer.strategy.reduce_boolean_decision(self.preemption.requested, all=False):
                self.preempted_at = done
                if trainer.global_step != self._last_saved_step:
                    self.save(trainer, done)
                trainer.should_stop = True
                return
        if (
            self.every_n_steps is None
            or done <= 0
            or done % self.every_n_steps
            or last
            or trainer.global_step == self._last_saved_step
            or trainer.should_stop
        ):
            return
        self.save(trainer, done)

    def save(self, trainer: Trainer, done: int) -> None:
        """Checkpoint the request after ``done`` of its steps (every rank calls this)."""
        self._last_saved_step = trainer.global_step
        name = checkpoint_file_name(self.index, done)
        path = checkpoint_dir(self.run_dir) / name
        trainer.save_checkpoint(path, weights_only=False)  # the whole training state, not only the weights
        if trainer.is_global_zero:
            write_json(
                {**self.record, "request_index": self.index, "steps_done": done,
                 "request_start_step": self.request_start_step, "global_step": trainer.global_step,
                 "checkpoint": f"{CHECKPOINTS_DIR}/{name}", "sha256": self.checkpoint_io.last_sha256},
                record_path(self.run_dir, self.index),
            )
            for old in checkpoint_dir(self.run_dir).glob(f"{checkpoint_stem(self.index)}-step-*.ckpt"):
                if old.name != name:
                    old.unlink()
        trainer.strategy.barrier()
