"""A run folder's ledger: its structure and the sha256 checks of the files it records.

``ledger.json`` lists the committed requests in order, each with the files it commits and their
sha256 (weights; the merge under ``--stream.merge``; metrics when the request was evaluated;
``attacks.json`` under ``--stream.attacks``),
and the base evaluation's metrics. The stream checks every recorded file on every start
(:func:`verify_committed_files`, before it writes anything), so an edited or replaced file is
refused with :class:`LedgerMismatchError` naming it rather than built upon or reported as done.

Auditors run the same checks with ``train.py verify`` (:mod:`lightning_unlearn.verify`). The
rest of the run folder's format (where the ledger lies among the other files, how it is
written) belongs to :mod:`lightning_unlearn.run_folder`, the one reader and writer of it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from lightning_unlearn.atomic_io import file_sha256
from lightning_unlearn.errors import UnlearnError

LEDGER_NAME = "ledger.json"
SHA256 = re.compile(r"[0-9a-f]{64}")
FileStatus = Literal["OK", "MISMATCH", "MISSING"]


class LedgerMismatchError(UnlearnError, RuntimeError):
    """A run folder's files do not match its ledger (edited, truncated, or another run's)."""


@dataclass(frozen=True)
class RecordedFile:
    """One file the ledger commits: whose it is, what it is, where (relative), its sha256."""

    owner: str
    role: str
    path: str
    sha256: str


@dataclass(frozen=True)
class FileCheck:
    """A recorded file compared with the file on disk."""

    recorded: RecordedFile
    status: FileStatus
    actual_sha256: str | None = None

    def describe(self, run_dir: Path) -> str:
        where = run_dir / self.recorded.path
        if self.status == "MISSING":
            return f"{where} is missing (the ledger {run_dir / LEDGER_NAME} records it)"
        if self.status == "MISMATCH":
            return (f"{where} does not match the sha256 in {run_dir / LEDGER_NAME} (has {self.actual_sha256[:12]}..., "
                    f"recorded {self.recorded.sha256[:12]}...): it was changed after it was committed")
        return f"{where} matches the ledger"


def request_label(entry: dict[str, Any], position: int) -> str:
    """``01 Van Gogh (style)`` for the request at 0-based ``position``."""
    return f"{position + 1:02d} {entry.get('concept')} ({entry.get('kind')})"


def _bad_path(value: Any) -> str | None:
    """Why ``value`` is not a path inside the run folder, or ``None`` if it is one."""
    if not isinstance(value, str) or not value:
        return "is not a path"
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts:
        return "points outside the run folder"
    return None


def ledger_problems(ledger: Any) -> list[str]:
    """What is wrong with the ledger's structure (empty when nothing is)."""
    if not isinstance(ledger, dict):
        return ["the ledger is not a JSON object"]
    problems = []
    stream, completed = ledger.get("stream"), ledger.get("completed")
    if not isinstance(stream, list) or not all(isinstance(r, dict) and isinstance(r.get("concept"), str)
                                               and r.get("kind") in ("style", "object") for r in stream):
        problems.append("'stream' is not a list of {concept, kind: style|object}")
        stream = None
    if not isinstance(completed, list):
        return [*problems, "'completed' is not a list"]
    for position, entry in enumerate(completed):
        if not isinstance(entry, dict):
            problems.append(f"completed[{position}] is not an object")
            continue
        label = f"completed[{position}] ({entry.get('concept')!r})"
        if entry.get("index") != position + 1:
            problems.append(f"{label} has index {entry.get('index')!r}, expected {position + 1} (entries are in order)")
        # A stream may be extended on a re-run (the ledger keeps the first run's list): only
        # the overlap must agree.
        if stream is not None and position < len(stream) and (
                {k: entry.get(k) for k in ("concept", "kind")} != {k: stream[position].get(k) for k in ("concept", "kind")}):
            problems.append(f"{label} is not the stream's request {position + 1} ({stream[position].get('concept')!r})")
        for path_key, sha_key, required in (("weights", "sha256", True), ("merged", "merged_sha256", False),
                                            ("metrics", "metrics_sha256", False), ("attacks", "attacks_sha256", False)):
            if path_key not in entry and sha_key not in entry:
                if required:
                    problems.append(f"{label} records no {path_key}")
                continue
            why = _bad_path(entry.get(path_key))
            if why:
                problems.append(f"{label} {path_key} {entry.get(path_key)!r} {why}")
            if sha_key in entry or path_key != "metrics":  # metrics' sha256 is absent in older ledgers
                if not isinstance(entry.get(sha_key), str) or not SHA256.fullmatch(entry[sha_key]):
                    problems.append(f"{label} {sha_key} {entry.get(sha_key)!r} is not a sha256")
        carried = entry.get("carried_states", {})
        if not isinstance(carried, dict) or any(
                not isinstance(r, dict) or _bad_path(r.get("file")) or not isinstance(r.get("sha256"), str)
                or not SHA256.fullmatch(r["sha256"]) for r in carried.values()):
            problems.append(f"{label} carried_states is not a map of files inside the run folder with their sha256")
    base = ledger.get("base")
    if base is not None:
        if not isinstance(base, dict) or _bad_path(base.get("metrics")):
            problems.append("'base' does not name its metrics file inside the run folder")
        elif "metrics_sha256" in base and not (isinstance(base["metrics_sha256"], str)
                                               and SHA256.fullmatch(base["metrics_sha256"])):
            problems.append(f"base metrics_sha256 {base['metrics_sha256']!r} is not a sha256")
    if "failed" in ledger and not isinstance(ledger["failed"], list):
        problems.append("'failed' is not a list")
    return problems


def recorded_files(ledger: dict[str, Any]) -> list[RecordedFile]:
    """Every file the (well-formed) ledger records with a sha256, base first, in commit order."""
    files = []
    base = ledger.get("base") or {}
    if "metrics_sha256" in base:
        files.append(RecordedFile("base", "metrics", base["metrics"], base["metrics_sha256"]))
    for position, entry in enumerate(ledger["completed"]):
        owner = request_label(entry, position)
        for path_key, sha_key in (("weights", "sha256"), ("merged", "merged_sha256"), ("adapter", "adapter_sha256"),
                                  ("metrics", "metrics_sha256"), ("attacks", "attacks_sha256")):
            if sha_key in entry:
                files.append(RecordedFile(owner, path_key, entry[path_key], entry[sha_key]))
        for key, record in (entry.get("carried_states") or {}).items():
            files.append(RecordedFile(owner, f"carried state {key}", record["file"], record["sha256"]))
    return files


def check_file(run_dir: Path, recorded: RecordedFile) -> FileCheck:
    """Compare one recorded file with the file on disk (its sha256)."""
    path = Path(run_dir) / recorded.path
    if not path.is_file():
        return FileCheck(recorded, "MISSING")
    actual = file_sha256(path)
    return FileCheck(recorded, "OK" if actual == recorded.sha256 else "MISMATCH", actual)


def verified_path(run_dir: Path, relative: str, sha256: str, role: str = "weights") -> Path:
    """``run_dir / relative`` once its sha256 is the recorded one; else :class:`LedgerMismatchError`."""
    check = check_file(Path(run_dir), RecordedFile("", role, relative, sha256))
    if check.status != "OK":
        raise LedgerMismatchError(check.describe(Path(run_dir)) + _REMEDY)
    return Path(run_dir) / relative


_REMEDY = "; restore it, or serve the stream into another run_dir (train.py verify RUN_DIR lists every file)"


def read_ledger(run_dir: Path) -> dict[str, Any]:
    """The ledger of ``run_dir``, checked for structure; :class:`LedgerMismatchError` if it is
    unreadable or malformed."""
    path = Path(run_dir) / LEDGER_NAME
    try:
        ledger = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LedgerMismatchError(f"{path} is not valid JSON ({err}): it was damaged or edited; "
                                  "restore it or use another run_dir") from None
    problems = ledger_problems(ledger)
    if problems:
        raise LedgerMismatchError(f"{path} is malformed: {problems[0]}"
                                  + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                                  + "; restore it or use another run_dir")
    return ledger


def verify_committed_files(run_dir: Path, ledger: dict[str, Any]) -> None:
    """Check the sha256 of every file the ledger records; the first that is missing or differs
    raises :class:`LedgerMismatchError` naming it. Reads only: safe before anything is written."""
    for recorded in recorded_files(ledger):
        check = check_file(Path(run_dir), recorded)
        if check.status != "OK":
            raise LedgerMismatchError(f"{recorded.owner}: {check.describe(Path(run_dir))}{_REMEDY}")
