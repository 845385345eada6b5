"""Atomic writes of safetensors weights, JSON, text and PNG files.

Every file is written to a temporary name in the same folder, flushed and fsync'ed, then
renamed over the target, so a reader never sees half a file: after a crash the old file (or
none) is there, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_weights(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """Write ``tensors`` as safetensors atomically; returns the file's sha256."""
    path = Path(path)
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic_write(path, lambda tmp: save_file(clean, str(tmp), metadata=metadata))
    return file_sha256(path)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (never unpickles); a clear error if it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    return load_file(str(path))


def write_json(data: Any, path: str | Path) -> None:
    """Write ``data`` as indented JSON atomically."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    _atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def write_text(text: str, path: str | Path) -> None:
    """Write ``text`` atomically."""
    _atomic_write(Path(path), lambda tmp: tmp.write_text(text))


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

    _atomic_write(Path(path), lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))
