"""Atomic writes: a full disk leaves the target as it was and no temporary file behind.

The failures are real ones from the OS, provoked in a child process: a file-size limit
(``RLIMIT_FSIZE``, EFBIG) and a genuinely full file system (a 64 KiB tmpfs mounted in a private
user + mount namespace, ENOSPC; skipped where the kernel does not allow that namespace).
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_unlearn.atomic_io import (
    WeightsFileError, file_sha256, load_weights, save_weights, write_bytes, write_json, write_png, write_text,
)

REPO = Path(__file__).resolve().parents[1]

# Each writer overwrites an existing small file with a payload of about 200 KB.
CHILD = textwrap.dedent(
    """
    import errno, json, sys
    from pathlib import Path
    import numpy as np, torch
    from lightning_unlearn.atomic_io import DiskFullError, save_weights, write_json, write_png, write_text

    folder = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    writers = {
        "weights.safetensors": lambda p: save_weights({"w": torch.randn(50_000)}, p),
        "metrics.json": lambda p: write_json({"x": list(range(40_000))}, p),
        "notes.txt": lambda p: write_text("x" * 200_000, p),
        "grid.png": lambda p: write_png(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), p),
    }
    outcome = {}
    for name, write in writers.items():
        try:
            write(folder / name)
            outcome[name] = "written"
        except DiskFullError as exc:
            outcome[name] = [errno.errorcode[exc.errno], str(exc)]
    print(json.dumps(outcome))
    """
)


def old_files(folder: Path) -> dict[str, bytes]:
    """Small existing versions of the files the child overwrites."""
    save_weights({"w": torch.ones(4)}, folder / "weights.safetensors")
    write_json({"old": True}, folder / "metrics.json")
    write_text("old", folder / "notes.txt")
    write_png(np.zeros((4, 4, 3), dtype=np.uint8), folder / "grid.png")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def assert_full_disk_left_no_trace(folder: Path, before: dict[str, bytes], outcome: dict, code: str) -> None:
    assert set(outcome) == set(before)
    for name, result in outcome.items():
        assert result != "written", f"{name} was written past the limit"
        assert result[0] == code
        assert f"no space left to write {folder / name}: the disk is full" in result[1]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # untouched, no temporary files


def _limit_file_size() -> None:
    # Runs in the child before exec: writes past 64 KiB fail with EFBIG instead of killing it.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_file_size_limit_fails_every_writer_cleanly(tmp_path):
    before = old_files(tmp_path)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          preexec_fn=_limit_file_size, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert_full_disk_left_no_trace(tmp_path, before, json.loads(proc.stdout.splitlines()[-1]), "EFBIG")


def _can_mount_private_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_private_tmpfs(), reason="no unprivileged user+mount namespace to mount a tmpfs in")
def test_full_file_system_fails_every_writer_cleanly(tmp_path):
    # The child mounts a 64 KiB tmpfs over an empty folder (visible only to itself), writes the
    # old files there, then the big ones; it reports the folder's contents before and after.
    folder = tmp_path / "full"
    folder.mkdir()
    script = CHILD.replace(
        "outcome = {}",
        "from test_atomic_io import old_files\nbefore = {k: v.hex() for k, v in old_files(folder).items()}\noutcome = {}",
    ).replace(
        "print(json.dumps(outcome))",
        "after = {p.name: p.read_bytes().hex() for p in folder.iterdir()}\n"
        "print(json.dumps({'outcome': outcome, 'before': before, 'after': after}))",
    )
    mount_and_run = f'mount -t tmpfs -o size=64k tmpfs "$1" && exec "{sys.executable}" -c "$2" "$1"'
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", mount_and_run, "sh", str(folder), script], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    before = {k: bytes.fromhex(v) for k, v in report["before"].items()}
    assert {k: bytes.fromhex(v) for k, v in report["after"].items()} == before
    for name, result in report["outcome"].items():
        assert result != "written" and result[0] == "ENOSPC"
        assert f"no space left to write {folder / name}: the disk is full" in result[1]
    assert not list(folder.iterdir())  # the tmpfs was private to the child


def test_writers_round_trip_and_hash(tmp_path):
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    sha = save_weights(tensors, tmp_path / "w.safetensors")
    assert sha == file_sha256(tmp_path / "w.safetensors")
    loaded = load_weights(tmp_path / "w.safetensors")
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert write_bytes(b"abc", tmp_path / "x.bin") == file_sha256(tmp_path / "x.bin")
    write_text("é\n", tmp_path / "t.txt")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "é\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt", "w.safetensors", "x.bin"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_weights(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("content", ["truncated", "text", "pickle", "empty"])
def test_a_file_safetensors_cannot_read_is_named_by_its_path(tmp_path, content):
    import pickle

    good = tmp_path / "good.safetensors"
    save_weights({"a": torch.ones(64)}, good)
    payload = {"truncated": good.read_bytes()[:100], "text": b"these are not weights\n",
               "pickle": pickle.dumps({"a": 1}), "empty": b""}[content]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(payload)
    with pytest.raises(WeightsFileError, match=rf"^{re.escape(str(bad))} is not a readable safetensors file \(.+\)$"):
        load_weights(bad)


def test_written_files_get_the_mode_a_plain_open_would(tmp_path):
    import os
    import stat

    from lightning_unlearn.atomic_io import write_text

    write_text("x", tmp_path / "shared.txt")
    (tmp_path / "plain.txt").write_text("x")
    mode = stat.S_IMODE(os.stat(tmp_path / "shared.txt").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)
