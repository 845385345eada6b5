"""A run folder's ledger: its structure, the files it records, and ``train.py verify``.

``ledger.json`` lists the committed requests in order, each with the files it commits and their
sha256 (weights; the merge under ``--stream.merge``; metrics when the request was evaluated),
and the base evaluation's metrics. The stream checks every recorded file on every start
(:func:`verify_committed_files`, before it writes anything), so an edited or replaced file is
refused with :class:`LedgerMismatchError` naming it rather than built upon or reported as done.

Auditors run the same checks, and look for files that should not be there::

    python train.py verify RUN_DIR [--strict]

One line per request (``OK`` / ``MISMATCH`` / ``MISSING``; ``PENDING`` for requests not yet
served), notes on unexpected files, and a summary. Exit 0 when every recorded file matches,
1 otherwise (``--strict``: notes fail too), 2 when RUN_DIR is not a run folder.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
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


class NotARunFolderError(UnlearnError, ValueError):
    """The path given as a run folder does not exist or holds no ledger."""


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
                                            ("metrics", "metrics_sha256", False)):
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
        for path_key, sha_key in (("weights", "sha256"), ("merged", "merged_sha256"), ("metrics", "metrics_sha256")):
            if sha_key in entry:
                files.append(RecordedFile(owner, path_key, entry[path_key], entry[sha_key]))
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


def unexpected_files(run_dir: Path, ledger: dict[str, Any]) -> list[str]:
    """Notes on files an auditor should know about: none of them changes a committed result,
    but each says something happened (an interrupted write, uncommitted weights, a failure,
    a checkpoint Lightning would restore on its own)."""
    run_dir = Path(run_dir)
    notes = []
    committed = len(ledger["completed"])
    recorded = {PurePosixPath(f.path) for f in recorded_files(ledger)}
    recorded |= {PurePosixPath(e[k]) for e in ledger["completed"] for k in ("weights", "merged", "metrics") if k in e}
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file():
            continue
        relative = PurePosixPath(path.relative_to(run_dir).as_posix())
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            notes.append(f"{relative}: temporary file of an interrupted write (the next run removes it)")
        elif path.name.startswith("hpc_ckpt_") and path.suffix == ".ckpt":
            notes.append(f"{relative}: Lightning SLURM auto-checkpoint, not the stream's; Lightning would "
                         "restore it at the next fit: delete it")
        elif relative.parts[0] == "checkpoints" and (m := re.match(r"request-(\d+)", path.name)):
            if int(m.group(1)) <= committed:
                notes.append(f"{relative}: mid-request checkpoint of a committed request (the next run removes it)")
            else:
                notes.append(f"{relative}: mid-request checkpoint: request {int(m.group(1))} will resume from it")
        elif relative.parts[0] == "requests" and path.suffix == ".safetensors" and relative not in recorded:
            notes.append(f"{relative}: weights not recorded in the ledger (an uncommitted or failed request)")
        elif path.name == "FAILED.json":
            notes.append(f"{relative}: a request stopped here and was not committed")
    return notes


def _run_folder(path: str) -> Path:
    run_dir = Path(path)
    if not run_dir.exists():
        raise NotARunFolderError(f"run folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise NotARunFolderError(f"{run_dir} is a file, not a run folder")
    if not (run_dir / LEDGER_NAME).is_file():
        raise NotARunFolderError(f"{run_dir} is not a run folder: it has no {LEDGER_NAME}")
    return run_dir


def verify(run_dir: Path, strict: bool = False, out=None) -> int:
    """Print the audit of ``run_dir`` (see the module docstring) and return the exit status."""
    out = out or sys.stdout
    run_dir = _run_folder(str(run_dir))
    try:
        ledger = json.loads((run_dir / LEDGER_NAME).read_text())
        problems = ledger_problems(ledger)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        problems = [f"not valid JSON ({err})"]
    if problems:
        for problem in problems:
            print(f"ledger  MALFORMED  {problem}", file=out)
        print(f"FAILED: {run_dir / LEDGER_NAME} is malformed ({len(problems)} problem(s)); no file was checked", file=out)
        return 1
    checks = [check_file(run_dir, f) for f in recorded_files(ledger)]
    by_owner: dict[str, list[FileCheck]] = {}
    for check in checks:
        by_owner.setdefault(check.recorded.owner, []).append(check)
    owners = (["base"] if "base" in by_owner else []) + [request_label(e, i) for i, e in enumerate(ledger["completed"])]
    bad = 0
    for owner in owners:
        owned = by_owner.get(owner, [])
        failing = [c for c in owned if c.status != "OK"]
        if not failing:
            print(f"{owner}  OK  {', '.join(c.recorded.role for c in owned)}", file=out)
            continue
        bad += 1
        status = "MISSING" if all(c.status == "MISSING" for c in failing) else "MISMATCH"
        details = "; ".join(f"{c.status} {c.recorded.path}" + (f" (sha256 {c.actual_sha256[:12]}..., ledger "
                                                                f"{c.recorded.sha256[:12]}...)" if c.actual_sha256 else "")
                            for c in failing)
        print(f"{owner}  {status}  {details}", file=out)
    pending = ledger["stream"][len(ledger["completed"]):]
    for offset, entry in enumerate(pending):
        print(f"{request_label(entry, len(ledger['completed']) + offset)}  PENDING  not served yet", file=out)
    notes = unexpected_files(run_dir, ledger)
    for note in notes:
        print(f"note: {note}", file=out)
    served = len(ledger["completed"])
    if bad:
        print(f"FAILED: {bad} of {len(owners)} entries do not match {run_dir / LEDGER_NAME} "
              f"({len(checks)} files checked)", file=out)
        return 1
    summary = (f"{run_dir}: {served} request(s) committed, all {len(checks)} recorded files match the ledger"
               + (f"; {len(pending)} pending" if pending else "") + (f"; {len(notes)} note(s)" if notes else ""))
    if strict and notes:
        print(f"FAILED (--strict): {summary}", file=out)
        return 1
    print(f"OK: {summary}", file=out)
    return 0


def main(argv: list[str]) -> None:
    """``train.py verify RUN_DIR [--strict]``: audit a run folder against its ledger."""
    parser = argparse.ArgumentParser(
        prog="train.py verify",
        description="Check every file a run folder's ledger records (sha256), the ledger's structure, "
                    "and flag unexpected files (temporaries, uncommitted weights, stray checkpoints). "
                    "Prints one line per request (OK / MISMATCH / MISSING / PENDING) and a summary. "
                    "Exit 0: every recorded file matches; 1: something does not; 2: not a run folder.",
    )
    parser.add_argument("run_dir", help="the run folder (holds ledger.json)")
    parser.add_argument("--strict", action="store_true", help="notes on unexpected files fail the check too")
    args = parser.parse_args(argv)
    raise SystemExit(verify(Path(args.run_dir), strict=args.strict))
