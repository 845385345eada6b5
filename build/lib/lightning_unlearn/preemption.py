"""How a stream stops when the scheduler or the user asks it to, and how it says so.

**SIGUSR1 (pre-emption, time limit).** SLURM sends it ``N`` seconds before a time limit with
``--signal=USR1@N``, and at a pre-emption only where the cluster sets
``PreemptParameters=send_user_signal`` (older releases: ``SchedulerParameters=preempt_send_user_signal``);
otherwise a pre-empted job gets SIGTERM. The stream takes SIGUSR1 over from Lightning (whose
SLURM plugin would save ``hpc_ckpt_*.ckpt`` into the run folder and restore it at the start of
*every* request's ``fit``): the handler only raises a flag, and the stream stops at its next
safe point --

- inside ``fit``: after the current optimizer step, saving a mid-request checkpoint
  (:class:`lightning_unlearn.request_checkpoints.RequestCheckpoints`) so that the re-run resumes
  at that step, bit-identically; the request is not committed;
- outside ``fit`` (base evaluation, the method's per-request preparation such as ESD's x_t bank,
  a request's commit): once the unit at hand is finished (files are written atomically, the
  ledger last);

then asks ``scontrol requeue $SLURM_JOB_ID`` (rank 0, only when ``SLURM_JOB_ID`` is set), prints
``pre-empted: ...`` and exits with :data:`EXIT_PREEMPTED`. The re-run resumes from the ledger and
``checkpoints/`` only, never from a Lightning HPC checkpoint.

**SIGTERM / SIGINT inside fit** (Lightning raises ``SIGTERMException`` / handles
``KeyboardInterrupt``): the request is not committed; the stream prints ``interrupted: ...`` and
exits 143 / 130 (128 + the signal's number, the shell's convention), never 0, so a scheduler or an
``&&`` chain does not take an unfinished stream for a finished one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType

PREEMPTION_SIGNAL = signal.SIGUSR1
EXIT_PREEMPTED = 128 + int(signal.SIGUSR1)  # 138
"""Exit status after a pre-emption (128 + SIGUSR1): non-zero, so an ``&&`` chain stops."""
EXIT_SIGTERM = 128 + int(signal.SIGTERM)  # 143
EXIT_SIGINT = 128 + int(signal.SIGINT)  # 130


class StreamStopped(Exception):
    """The stream stopped before its end at a safe point (nothing half-written); the run folder
    resumes on re-run. Raised by the runner, turned into a message and an exit status by
    :func:`lightning_unlearn.stream.unlearn`."""

    def __init__(self, message: str, exit_code: int, requeue: bool = False) -> None:
        super().__init__(message)
        self.message, self.exit_code, self.requeue = message, exit_code, requeue


class PreemptionSignal:
    """Holds the SIGUSR1 handler of a stream while it runs: the handler only records the signal
    (a signal may arrive inside any write); the runner and its checkpoint callback act on it."""

    def __init__(self) -> None:
        self.requested = False
        """Whether SIGUSR1 arrived (in this process)."""
        self._previous: object = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def install(self) -> None:
        """Replace the SIGUSR1 handler (main thread only: Python allows no other)."""
        if threading.current_thread() is threading.main_thread() and not self._installed:
            self._previous = signal.signal(PREEMPTION_SIGNAL, self._handle)
            self._installed = True

    def restore(self) -> None:
        if self._installed:
            signal.signal(PREEMPTION_SIGNAL, self._previous)  # type: ignore[arg-type]
            self._installed = False


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes for this job (``ARRAY_TASK`` form for array jobs), or
    ``None`` outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue() -> str:
    """Ask SLURM to requeue this job; returns what happened, for the stream's last line.

    ``scontrol requeue`` ends the running job, so the caller has written and printed everything
    before calling this.
    """
    job_id = slurm_job_id()
    if job_id is None:
        return "not under SLURM (no SLURM_JOB_ID): re-run the same command to resume"
    if not re.fullmatch(r"[0-9]+(_[0-9]+)?", job_id):
        return f"SLURM_JOB_ID={job_id!r} is not a job id, not requeued: resubmit the same command to resume"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        status = subprocess.run(["scontrol", "requeue", job_id], check=False).returncode
    except OSError as error:
        return f"could not run scontrol ({error}): resubmit the same command to resume"
    if status != 0:
        return f"'scontrol requeue {job_id}' failed (exit {status}): resubmit the same command to resume"
    return f"requeued job {job_id}"


def stray_hpc_checkpoints(*folders: str | Path) -> list[Path]:
    """Lightning HPC checkpoints (``hpc_ckpt_*.ckpt``) in ``folders``: Lightning restores the newest
    at the start of every ``fit`` on SLURM, so a stream refuses to start next to one."""
    found: set[Path] = set()
    for folder in folders:
        folder = Path(folder)
        if folder.is_dir():
            found.update(p.resolve() for p in folder.glob("hpc_ckpt_*.ckpt"))
    return sorted(found)
