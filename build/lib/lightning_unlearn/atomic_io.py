"""Atomic writes of safetensors weights, JSON, text and PNG files.

Every file is written to a temporary name in the same folder, flushed and fsync'ed, then
renamed over the target, so a reader never sees half a file: after a crash the old file (or
none) is there, never a torn one. A write that fails (disk full: :class:`DiskFullError`)
removes its temporary file and leaves the target as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from lightning_unlearn.errors import UnlearnError

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""Out of space: device full, quota exceeded, or the process's file-size limit (``ulimit -f``)."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


class DiskFullError(UnlearnError, OSError):
    """A file could not be written for lack of space; the target was left untouched."""

    def __str__(self) -> str:
        return str(self.strerror)  # the message alone, without OSError's "[Errno N]" prefix


class WeightsFileError(UnlearnError, ValueError):
    """A weights file that is not a readable safetensors file (truncated, corrupt, another
    format): the message names its path."""


class MissingWeightsError(UnlearnError, FileNotFoundError):
    """A weights file that does not exist (or is a folder where a file is expected)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Run ``write`` on an open temporary file next to ``path``, fsync it, rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (reports and
        # checkpoints are shared between people).
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            raise DiskFullError(
                exc.errno,
                f"no space left to write {path}: the disk is full (or a quota / file-size limit was hit: "
                f"{os.strerror(exc.errno)}); {path} was left as it was and nothing half-written remains",
            ) from exc
        raise


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writes killed before their rename left under ``folder``
    (``.<name>.<random>.tmp``); call it only while no write into ``folder`` is in progress."""
    stale = [p for p in Path(folder).rglob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_bytes(payload: bytes, path: str | Path) -> str:
    """Write ``payload`` atomically; returns its sha256."""
    _atomic_write(Path(path), lambda fh: fh.write(payload))
    return hashlib.sha256(payload).hexdigest()


def save_weights(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """Write ``tensors`` as safetensors atomically; returns the file's sha256."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # Serialised in memory and written by Python, so a full disk surfaces as an OSError with its
    # errno (safetensors' own file writer reports it as a bare SafetensorError string).
    return write_bytes(safetensors_bytes(clean, metadata=metadata), path)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (never unpickles). A missing file is a :class:`MissingWeightsError`,
    anything safetensors cannot read (truncated, corrupt, a pickle, text) a
    :class:`WeightsFileError`; both name the path."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a weights file" if path.is_dir() else "does not exist"
        raise MissingWeightsError(f"weights file {path} {what}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        # safetensors' own messages ("HeaderTooLarge", "invalid JSON in header") name no file.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsFileError(f"{path} is not a readable safetensors file ({reason})") from exc


def write_json(data: Any, path: str | Path) -> None:
    """Write ``data`` as indented JSON atomically."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    _atomic_write(Path(path), lambda fh: fh.write(text.encode()))


def write_text(text: str, path: str | Path) -> None:
    """Write ``text`` (UTF-8) atomically."""
    _atomic_write(Path(path), lambda fh: fh.write(text.encode()))


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_png(image, path: str | Path) -> None:
    """Write a uint8 [H, W, 3] array as PNG atomically."""
    from PIL import Image

    _atomic_write(Path(path), lambda fh: Image.fromarray(image).save(fh, format="PNG"))
