"""``train.py verify RUN_DIR [--strict]``: audit a run folder against its ledger.

The same checks the stream makes on every start (:func:`lightning_unlearn.ledger.verify_committed_files`),
reported file by file, plus notes on files that should not be there. One line per request
(``OK`` / ``MISMATCH`` / ``MISSING``; ``PENDING`` for requests not yet served), the notes, and a
summary. Exit 0 when every recorded file matches, 1 otherwise (``--strict``: notes fail too), 2
when RUN_DIR is not a run folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from lightning_unlearn.errors import UnlearnError
from lightning_unlearn.ledger import FileCheck, check_file, ledger_problems, recorded_files, request_label
from lightning_unlearn.run_folder import (
    CHECKPOINTS_DIR, FAILED_FILE, REQUESTS_DIR, RunFolder, checkpoint_request_number,
)


class NotARunFolderError(UnlearnError, ValueError):
    """The path given as a run folder does not exist or holds no ledger."""


def unexpected_files(run_dir: Path, ledger: dict[str, Any]) -> list[str]:
    """Notes on files an auditor should know about: none of them changes a committed result,
    but each says something happened (an interrupted write, uncommitted weights, a failure,
    a checkpoint Lightning would restore on its own)."""
    run_dir = Path(run_dir)
    notes = []
    committed = len(ledger["completed"])
    recorded = {PurePosixPath(f.path) for f in recorded_files(ledger)}
    recorded |= {PurePosixPath(e[k]) for e in ledger["completed"] for k in ("weights", "merged", "metrics", "attacks") if k in e}
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file():
            continue
        relative = PurePosixPath(path.relative_to(run_dir).as_posix())
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            notes.append(f"{relative}: temporary file of an interrupted write (the next run removes it)")
        elif path.name.startswith("hpc_ckpt_") and path.suffix == ".ckpt":
            notes.append(f"{relative}: Lightning SLURM auto-checkpoint, not the stream's; Lightning would "
                         "restore it at the next fit: delete it")
        elif relative.parts[0] == CHECKPOINTS_DIR and (number := checkpoint_request_number(path.name)) is not None:
            if number <= committed:
                notes.append(f"{relative}: mid-request checkpoint of a committed request (the next run removes it)")
            else:
                notes.append(f"{relative}: mid-request checkpoint: request {number} will resume from it")
        elif relative.parts[0] == REQUESTS_DIR and path.suffix == ".safetensors" and relative not in recorded:
            notes.append(f"{relative}: weights not recorded in the ledger (an uncommitted or failed request)")
        elif path.name == FAILED_FILE:
            notes.append(f"{relative}: a request stopped here and was not committed")
    return notes


def _run_folder(path: str) -> RunFolder:
    """``path`` as a :class:`RunFolder`; :class:`NotARunFolderError` if it is none (no ledger)."""
    folder = RunFolder(path)
    if not folder.path.exists():
        raise NotARunFolderError(f"run folder {folder.path} does not exist")
    if not folder.path.is_dir():
        raise NotARunFolderError(f"{folder.path} is a file, not a run folder")
    if not folder.ledger_path.is_file():
        raise NotARunFolderError(f"{folder.path} is not a run folder: it has no {folder.ledger_path.name}")
    return folder


def verify(run_dir: Path, strict: bool = False, out=None) -> int:
    """Print the audit of ``run_dir`` (see the module docstring) and return the exit status."""
    out = out or sys.stdout
    folder = _run_folder(str(run_dir))
    run_dir, ledger_path = folder.path, folder.ledger_path
    try:
        # Read as plain JSON, not RunFolder.load_ledger: a malformed ledger is reported line by line.
        ledger = json.loads(ledger_path.read_text())
        problems = ledger_problems(ledger)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        problems = [f"not valid JSON ({err})"]
    if problems:
        for problem in problems:
            print(f"ledger  MALFORMED  {problem}", file=out)
        print(f"FAILED: {ledger_path} is malformed ({len(problems)} problem(s)); no file was checked", file=out)
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
        print(f"FAILED: {bad} of {len(owners)} entries do not match {ledger_path} "
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
