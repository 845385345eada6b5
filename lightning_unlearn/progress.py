"""The stream's live view: one display for the whole stream of requests.

:class:`StreamProgress` is a Lightning callback that the stream adds (``--stream.progress``, on
by default). The stream feeds it what only the stream knows (request i of N, its concept and
step budget, each request's UA / IRA / CRA and timings); ``on_train_batch_end`` feeds it the
step within the request. It shows elapsed time and the time left for the stream, estimated
from the mean seconds per optimizer step (preparation included) and per evaluation of the
requests finished so far ("estimating..." until one has finished).

Two renderings, chosen by ``isatty()`` of the output (stderr):

- a terminal: one status line redrawn in place with ``\\r`` (at most ``1 / min_interval`` times a
  second; each finished request leaves one permanent line);
- anything else (a log file, CI, ``| tee``): plain lines at coarse points only -- request start,
  every ~10% of a request's steps or every 30 s, request end with its metrics -- and no carriage
  returns or escape codes, so that the log reads top to bottom.

Only rank 0 draws. :func:`quiet_lightning_banners` drops Lightning's per-fit INFO lines that the
display replaces ("GPU available...", "`Trainer.fit` stopped: `max_steps=N` reached.").
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ["LightningBannerFilter", "StreamProgress", "format_duration", "quiet_lightning_banners"]


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``M:SS`` under an hour): what a user reads at a glance."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _metric(value: Any) -> str:
    """A percentage metric as the stream prints it; ``-`` for a request that was not evaluated (NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(number) else f"{number:.1f}"


class StreamProgress(Callback):
    """Stream-level progress display (request i/N, step k/steps, elapsed, ETA, last metrics).

    Args:
        stream: where to draw; ``None`` = ``sys.stderr`` at the time of drawing (so that pytest's
            capture and redirections made after construction are honoured).
        interactive: redraw one line with ``\\r`` (True) or print plain lines (False);
            ``None`` = ``stream.isatty()``.
        min_interval: the least seconds between two redraws of the terminal line.
        log_fraction: in plain output, a line every this fraction of a request's steps...
        log_seconds: ...or after this many seconds without one, whichever comes first.
        clock: the time source (tests pass a fake one).
    """

    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None, min_interval: float = 0.25,
                 log_fraction: float = 0.1, log_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._interactive = interactive
        self.min_interval, self.log_fraction, self.log_seconds = min_interval, log_fraction, log_seconds
        self.clock = clock
        self.total = 0
        self.index = -1
        """0-based index of the request being served; -1 before the first."""
        self.concept = ""
        self.steps = 0
        """The current request's step budget."""
        self.start_step = 0
        """``trainer.global_step`` when the current request started (a resumed one: when it first started)."""
        self.step = 0
        """Optimizer steps done in the current request."""
        self.phase = "preparing"
        self.will_evaluate: list[bool] = []
        self.started_at: float | None = None
        self.done_steps = 0
        self.done_train_seconds = 0.0
        self.eval_seconds: list[float] = []
        self.last_metrics: Mapping[str, Any] | None = None
        self._last_draw = -math.inf
        self._last_logged_step = 0
        self._last_logged_at = -math.inf
        self._drawn_width = 0
        """Width of the status line now on the terminal (0: none), to blank it before other output."""
        self.lines = 0
        """Lines and redraws written (tests and the cost benchmark read it)."""

    # -- where and how --------------------------------------------------------------------------
    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    @property
    def interactive(self) -> bool:
        if self._interactive is None:
            isatty = getattr(self.stream, "isatty", None)
            self._interactive = bool(isatty and isatty())
        return self._interactive

    # -- fed by the stream (rank 0 only) --------------------------------------------------------
    def start_stream(self, total: int, completed: int, steps_per_request: int, will_evaluate: Sequence[bool],
                     device: str = "") -> None:
        """The stream serves requests ``completed+1..total`` of ``steps_per_request`` steps each;
        ``will_evaluate[i]`` says whether request i is evaluated after it is served."""
        self.total, self.steps, self.will_evaluate = total, steps_per_request, list(will_evaluate)
        self.index = completed - 1
        self.started_at = self.clock()
        on = f" on {device}" if device else ""
        self._emit(f"stream: requests {completed + 1}-{total} of {total}, {steps_per_request} steps each{on}")

    def start_request(self, index: int, concept: str, steps: int, start_step: int, what: str = "") -> None:
        """Request ``index`` (0-based) starts: ``steps`` optimizer steps from ``global_step == start_step``."""
        self.index, self.concept, self.steps, self.start_step = index, concept, steps, start_step
        self.step, self.phase = 0, "preparing"
        self._last_logged_step, self._last_logged_at = 0, self.clock()
        detail = f": {what}" if what else ""
        if self.interactive:
            self._draw(force=True)
        else:
            self._emit(f"{self._head()}{detail} | {self._times()}")

    def end_request(self, row: Mapping[str, Any]) -> None:
        """The request is committed: ``row`` is its results row (metrics, steps, train and eval seconds)."""
        self.done_steps += int(row.get("train_steps", self.step))
        self.done_train_seconds += float(row.get("train_seconds", 0.0))
        evaluated = not math.isnan(float(row.get("UA", math.nan)))
        if evaluated:
            self.eval_seconds.append(float(row.get("eval_seconds", 0.0)))
            self.last_metrics = row
        self.phase = "done"
        metrics = (f"UA {_metric(row.get('UA'))}  UA_latest {_metric(row.get('UA_latest'))}  "
                   f"IRA {_metric(row.get('IRA'))}  CRA {_metric(row.get('CRA'))}" if evaluated else "not evaluated")
        self._emit(f"request {self.index + 1}/{self.total} {self.concept} done: {metrics}  "
                   f"({int(row.get('train_steps', 0))} steps, {float(row.get('train_seconds', 0)):.0f}s train, "
                   f"{float(row.get('eval_seconds', 0)):.0f}s eval) | {self._times()}")

    def finish(self) -> None:
        """The stream has ended (or stopped): leave the terminal on a fresh line."""
        self._clear()

    # -- fed by Lightning ---------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Hot path, once per batch: an int subtraction and a clock read unless a line is due.
        if self.started_at is None or not trainer.is_global_zero:
            return
        self.step, self.phase = trainer.global_step - self.start_step, "training"
        if self.interactive:
            self._draw()
            return
        now = self.clock()
        every = max(1, math.ceil(self.steps * self.log_fraction))
        if (self.step // every > self._last_logged_step // every and self.step < self.steps) \
                or now - self._last_logged_at >= self.log_seconds:
            self._last_logged_step, self._last_logged_at = self.step, now
            self._emit(f"{self._head()} | {self._times()}")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.started_at is None or not trainer.is_global_zero:
            return
        # Evaluation follows the fit: say so, or the terminal shows a frozen "step 100/100".
        self.phase = "evaluating" if self._evaluates(self.index) else "saving"
        if self.interactive:
            self._draw(force=True)

    # -- estimates ----------------------------------------------------------------------------------
    def _evaluates(self, index: int) -> bool:
        return self.will_evaluate[index] if 0 <= index < len(self.will_evaluate) else True

    def eta_seconds(self) -> float | None:
        """Seconds left for the stream, or None until a request has finished."""
        if not self.done_steps:
            return None
        per_step = self.done_train_seconds / self.done_steps
        per_eval = sum(self.eval_seconds) / len(self.eval_seconds) if self.eval_seconds else 0.0
        later = range(self.index + 1, self.total)
        steps_left = sum(self.steps for _ in later)
        evals_left = sum(self._evaluates(i) for i in later)
        if self.phase != "done" and self.index >= 0:
            steps_left += max(0, self.steps - self.step)
            evals_left += self._evaluates(self.index)
        return steps_left * per_step + evals_left * per_eval

    # -- rendering ----------------------------------------------------------------------------------
    def _head(self) -> str:
        state = f"step {self.step}/{self.steps}" if self.phase == "training" else f"{self.phase} (step {self.step}/{self.steps})"
        return f"request {self.index + 1}/{self.total} {self.concept}: {state}"

    def _times(self) -> str:
        elapsed = self.clock() - (self.started_at if self.started_at is not None else self.clock())
        eta = self.eta_seconds()
        left = "ETA estimating..." if eta is None else f"ETA {format_duration(eta)}"
        return f"elapsed {format_duration(elapsed)}, {left}"

    def _status(self) -> str:
        last = ""
        if self.last_metrics is not None:
            m = self.last_metrics
            last = f" | last UA {_metric(m.get('UA'))} IRA {_metric(m.get('IRA'))} CRA {_metric(m.get('CRA'))}"
        return f"{self._head()} | {self._times()}{last}"

    def _draw(self, force: bool = False) -> None:
        """Redraw the terminal's status line, at most once per ``min_interval`` unless ``force``."""
        now = self.clock()
        if not force and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        text = self._status()
        # Pad over the previous, longer line with spaces: no escape codes, which some "terminals"
        # (IDE consoles) print verbatim.
        pad = max(0, self._drawn_width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._drawn_width = len(text)
        self.lines += 1

    def _clear(self) -> None:
        """Blank the status line so that the next output starts at column 0 of an empty line."""
        if self._drawn_width:
            self.stream.write("\r" + " " * self._drawn_width + "\r")
            self.stream.flush()
            self._drawn_width = 0

    def _emit(self, line: str) -> None:
        """One permanent line (both renderings); in a terminal, the status line is redrawn under it."""
        self._clear()
        self.stream.write(line + "\n")
        self.stream.flush()
        self.lines += 1
        if self.interactive and self.phase not in ("done",) and self.index >= 0 and self.total:
            self._draw(force=True)


class LightningBannerFilter(logging.Filter):
    """Drops Lightning's INFO lines that every ``fit`` of a stream repeats and the live view
    replaces; warnings and errors always pass."""

    PATTERNS = re.compile(
        r"^(`Trainer\.fit` stopped: `max_steps=\d+` reached\.|GPU available: |TPU available: |HPU available: "
        r"|LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES: |\S* ?Tip: For seamless cloud logging)"
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not self.PATTERNS.match(record.getMessage())


# The loggers those lines are logged on: rank_zero_info's, and the CUDA accelerator's own.
BANNER_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                  "lightning.pytorch.accelerators.cuda")


@contextmanager
def quiet_lightning_banners(stream: TextIO | None = None) -> Iterator[None]:
    """While the ``unlearn`` command runs: filter :class:`LightningBannerFilter`'s lines out of
    Lightning's loggers (a filter, not a level: the stream's own INFO lines share the logger),
    and, when ``stream`` (default stderr) is no terminal, turn off transformers' tqdm bars (its
    "Loading weights" bar writes carriage returns into log files)."""
    banner_filter = LightningBannerFilter()
    loggers = [logging.getLogger(name) for name in BANNER_LOGGERS]
    for logger in loggers:
        logger.addFilter(banner_filter)
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    hf_logging: Any = None
    if not (isatty and isatty()):
        from transformers.utils import logging as hf_logging  # the backbone imports it anyway

        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
        else:
            hf_logging = None  # the user's own setting: leave it as it was
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(banner_filter)
        if hf_logging is not None:
            hf_logging.enable_progress_bar()
