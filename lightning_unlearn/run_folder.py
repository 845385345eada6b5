"""The run folder's format: its layout, lock, ledger, results table and ``run.json``.

Everything a stream writes lands in one folder; this module is the only one that knows its
names. The stream writes through it, and the report, the study runner and ``train.py verify``
read through it::

    <run_dir>/
      .lock                         held (flock) by the process serving the stream
      stream_settings.json          the --stream settings of the last start
      run.json                      protocol, method, callbacks, requests (read by reports, studies)
      ledger.json                   the committed requests and the sha256 of their files
      results.csv  results.json     one row per evaluated model (RESULT_COLUMNS)
      requests/00-base/             the base model's metrics.json, grid.png
      requests/NN-<slug>/           weights.safetensors, merged.safetensors (--stream.merge),
                                    adapter.safetensors + adapter.json (--model.trainable=lora),
                                    manifest.json, metrics.json, grid.png, <record>.json of the
                                    request callbacks, attacks.json (--stream.attacks),
                                    FAILED.json of a failed attempt
      checkpoints/                  request-NN-step-SSSSSS.ckpt + request-NN.json (mid-request)
      tensorboard/                  the default logger; its config.yaml is the command's settings
                                    (LightningCLI writes it to the logger's folder, else run_dir)

Every file is written atomically (:mod:`lightning_unlearn.atomic_io`); ``ledger.json`` is written
last in a commit. The ledger's structure and the sha256 checks of the files it records live in
:mod:`lightning_unlearn.ledger`; :class:`RunFolder` reads and writes it through them.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from lightning_unlearn.atomic_io import file_sha256, load_weights, save_weights, write_json, write_text
from lightning_unlearn.errors import SettingsError, UnlearnError
from lightning_unlearn.intervals import bound_keys
from lightning_unlearn.ledger import LEDGER_NAME, LedgerMismatchError, read_ledger, verified_path, verify_committed_files
from lightning_unlearn.requests import Request

if TYPE_CHECKING:
    import torch

METRIC_NAMES = ("UA", "UA_latest", "IRA", "CRA", "style_acc", "object_acc")
"""The evaluation's numbers in each results row (and ``metrics.json``), in column order."""
COLLAPSE_TOP_SHARE = 0.5
"""A classifier head has collapsed when over this share of the retained prompts' images go to
one class (and over twice the share that class would get if every image were classified as its
prompt says). Why 0.5 (docs/studies-and-reports.md, "Reading a report"): the base tiny-world
model's largest share is 0.10 on objects (1/12 = 0.083) and 0.06 on styles (1/16), measured; a
Concept Ablation model that draws one shape for every prompt puts nearly all images in one class."""
COLLAPSE_COLUMNS = ("style_top_share", "object_top_share", "style_entropy", "object_entropy", "collapsed")
"""The collapse indicator of an evaluated model (``evaluation.collapse_indicator``), in each
results row and ``metrics.json``: per classifier head, the share of the most frequent predicted
class on the retained prompts and the normalised entropy of the predicted classes; ``collapsed``:
a head UA is read with went over :data:`COLLAPSE_TOP_SHARE`, so UA means
nothing there. Rows written before the indicator existed lack these keys."""
METRIC_COLUMNS = tuple(key for name in METRIC_NAMES for key in (name, *bound_keys(name)))
"""Every metric followed by its 95% interval's bounds (``UA, UA_lo, UA_hi, UA_latest, ...``;
docs/statistics.md). Folders written before the intervals have the metrics alone."""
RESULT_COLUMNS = (
    "request", "concept", "kind", *METRIC_COLUMNS,
    "train_steps", "cumulative_steps", "train_seconds", "eval_seconds", "drift_to_base", "drift_to_previous",
    "similarity_drop_r", *COLLAPSE_COLUMNS,
)
"""Columns of ``results.csv`` (``results.json`` rows hold the same keys, unformatted)."""
ATTACK_COLUMNS = (
    "relearn_asr", "relearn_asr_low", "relearn_asr_high", "relearn_steps_to_recover",
    "embedding_asr", "embedding_asr_low", "embedding_asr_high",
    "prompt_asr", "prompt_asr_low", "prompt_asr_high", "attack_images", "attack_seconds",
)
"""Columns ``--stream.attacks`` adds after RESULT_COLUMNS (only in runs that attack): each attack's
ASR on the request's concept with its 95% Wilson interval, relearning's steps to bring UA under
50 (empty: not within the budgets), the images each ASR is over, the attacks' seconds."""

REQUESTS_DIR = "requests"
BASE_FOLDER = "00-base"
CHECKPOINTS_DIR = "checkpoints"
ANCHOR_CACHE_DIR = ".anchor_cache"
"""Next to the run folder (``runs/.anchor_cache``), like the evaluation cache: what methods cache
across requests and runs (Concept Ablation's anchor images, keyed by the base's fingerprint and
every setting that shapes them), so every run of a study on the same base shares them."""
LOCK_NAME = ".lock"
RESULTS_JSON, RESULTS_CSV = "results.json", "results.csv"
RUN_INFO_NAME = "run.json"
SETTINGS_NAME = "stream_settings.json"
CONFIG_NAME = "config.yaml"
CONFIG_FOLDERS = ("tensorboard", "")
"""Where LightningCLI's ``config.yaml`` lands: the default logger's folder, else the run folder
(``--trainer.logger=false``: ``default_root_dir``, which the stream sets to the run folder)."""
WEIGHTS_FILE, MERGED_FILE = "weights.safetensors", "merged.safetensors"
METRICS_FILE, GRID_FILE, MANIFEST_FILE, FAILED_FILE = "metrics.json", "grid.png", "manifest.json", "FAILED.json"
ADAPTER_FILE, ADAPTER_CONFIG_FILE = "adapter.safetensors", "adapter.json"
"""``requests/NN-*/adapter.*``: with ``--model.trainable=lora``, the request's adapter and its settings."""
ATTACKS_FILE = "attacks.json"
"""``requests/NN-*/attacks.json``: the attacks' full record (``--stream.attacks``), in the ledger."""
CARRIED_STATE_PREFIX = "carried-"
"""``requests/NN-*/carried-<callback>.safetensors``: a callback's state that outlives the request."""

_REQUEST_FOLDER = re.compile(r"^(\d+)-(.+)$")
_CHECKPOINT_FILE = re.compile(r"^request-(\d+)")


class RunFolderBusyError(UnlearnError, RuntimeError):
    """Another process is serving a stream into the same run folder."""


def check_run_dir(run_dir: str | Path) -> None:
    """A :class:`SettingsError` when ``run_dir`` cannot be a run folder: empty, an existing
    file, or below one (checked before anything else, so nothing is loaded or written)."""
    if not str(run_dir).strip():
        raise SettingsError("--stream.run_dir is empty: give the run folder's path")
    path = Path(run_dir)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is an existing file" if folder == path else f"is inside {folder}, which is a file"
                raise SettingsError(f"--stream.run_dir {path} {where}, not a folder: give a folder's path")
            return


# -- names ----------------------------------------------------------------------------------------
def request_folder_name(index: int, request: Request | None) -> str:
    """``00-base`` for the base model (``request`` None), ``NN-<slug>`` for the 0-based ``index``."""
    return BASE_FOLDER if request is None else f"{index + 1:02d}-{request.slug}"


def parse_request_folder(name: str) -> tuple[int, str] | None:
    """The inverse of :func:`request_folder_name`: ``(request number, slug)`` (0 = the base), or
    ``None`` for a name that is not a request folder's."""
    match = _REQUEST_FOLDER.match(name)
    return (int(match.group(1)), match.group(2)) if match else None


def checkpoint_file_name(index: int, steps_done: int) -> str:
    """``request-NN-step-SSSSSS.ckpt``: request ``index``'s (0-based) checkpoint after ``steps_done``."""
    return f"{checkpoint_stem(index)}-step-{steps_done:06d}.ckpt"


def checkpoint_stem(index: int | None) -> str:
    """The prefix of every checkpoint file of request ``index`` (0-based; all requests' if ``None``)."""
    return "request-" if index is None else f"request-{index + 1:02d}"


def checkpoint_request_number(name: str) -> int | None:
    """The request number (1-based) a ``checkpoints/`` file belongs to, ``None`` if not one of ours."""
    match = _CHECKPOINT_FILE.match(name)
    return int(match.group(1)) if match else None


# -- results --------------------------------------------------------------------------------------
def result_row(number: int, request: Request | None, metrics: dict[str, Any], steps: int, cumulative: int,
               train_seconds: float, eval_seconds: float) -> dict[str, Any]:
    """One results row: request ``number`` (0 = the base model, ``request`` None)."""
    return {
        "request": number,
        "concept": "base" if request is None else request.concept,
        "kind": "" if request is None else request.kind,
        **{k: metrics[k] for k in METRIC_COLUMNS},
        "train_steps": steps,
        "cumulative_steps": cumulative,
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        # Absent (empty in results.csv) where not measured: a request not evaluated (--stream.evaluate_every).
        **{k: metrics[k] for k in COLLAPSE_COLUMNS if k in metrics},
    }


def results_csv(rows: list[dict[str, Any]]) -> str:
    """``results.csv``'s text: RESULT_COLUMNS (then ATTACK_COLUMNS when a row has them), floats
    with two decimals, other keys left out."""
    buffer = io.StringIO()
    attacked = any(key in row for row in rows for key in ATTACK_COLUMNS)
    columns = (*RESULT_COLUMNS, *ATTACK_COLUMNS) if attacked else RESULT_COLUMNS
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def progress_text(done: int, planned: int | None) -> str:
    """How far a run got, as reports and study summaries say it: ``8 of 12 requests, unfinished``,
    ``12 of 12 requests``, or ``3 requests (plan not recorded)``."""
    if planned is None:
        return f"{done} requests (plan not recorded)"
    return f"{done} of {planned} requests" + ("" if done >= planned else ", unfinished")


class RunFolder:
    """One run folder (see the module docstring): paths, lock, ledger, results, ``run.json``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_handle: IO[str] | None = None

    # -- layout -------------------------------------------------------------------------------
    @property
    def ledger_path(self) -> Path:
        """``ledger.json``."""
        return self.path / LEDGER_NAME

    @property
    def run_info_path(self) -> Path:
        """``run.json``."""
        return self.path / RUN_INFO_NAME

    @property
    def results_path(self) -> Path:
        """``results.json`` (the unformatted table; ``results.csv`` is its formatted copy)."""
        return self.path / RESULTS_JSON

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``: mid-request checkpoints and their records."""
        return self.path / CHECKPOINTS_DIR

    @property
    def anchors(self) -> Path:
        """``<parent>/.anchor_cache``: where methods cache data across requests and runs
        (``begin_request``'s cache_dir; :data:`ANCHOR_CACHE_DIR`)."""
        return self.path.resolve().parent / ANCHOR_CACHE_DIR

    def request_dir(self, index: int, request: Request | None) -> Path:
        """``requests/00-base`` (``request`` None) or ``requests/NN-<slug>`` of 0-based ``index``."""
        return self.path / REQUESTS_DIR / request_folder_name(index, request)

    def relative(self, path: Path) -> str:
        """``path`` as the ledger records it: relative to the run folder."""
        return str(Path(path).relative_to(self.path))

    def request_folders(self) -> dict[int, Path]:
        """``{request number (0 = base): folder}`` of the folders under ``requests/``."""
        folders: dict[int, Path] = {}
        if (self.path / REQUESTS_DIR).is_dir():
            for folder in sorted((self.path / REQUESTS_DIR).iterdir()):
                parsed = parse_request_folder(folder.name)
                if folder.is_dir() and parsed is not None:
                    folders[parsed[0]] = folder
        return folders

    # -- lock ---------------------------------------------------------------------------------
    def lock(self) -> None:
        """Hold an exclusive lock on ``.lock`` until :meth:`unlock` (or this process ends), so two
        jobs never interleave writes; :class:`RunFolderBusyError` if another process holds it."""
        if self._lock_handle is not None:
            return
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK_NAME, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RunFolderBusyError(
                f"{self.path} is in use by another process serving a stream into it; wait for it or use another run_dir"
            ) from None
        self._lock_handle = handle

    def unlock(self) -> None:
        """Release :meth:`lock` (closing the descriptor drops the flock); no-op when not held."""
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    # -- ledger -------------------------------------------------------------------------------
    def load_ledger(self, requests: list[Request]) -> dict[str, Any]:
        """The ledger (a new one for a new folder), refused with :class:`LedgerMismatchError` if
        it is malformed, was written for another request list, or any file it records (weights,
        merges, metrics) no longer has its recorded sha256. Reads only."""
        if not self.ledger_path.exists():
            return {"stream": [vars(r) for r in requests], "completed": []}
        ledger = read_ledger(self.path)
        configured = [vars(r) for r in requests]
        done = [dict(concept=e["concept"], kind=e["kind"]) for e in ledger["completed"]]
        if configured[: len(done)] != done:
            raise LedgerMismatchError(
                f"{self.path} was run with the requests {[d['concept'] for d in done]} first; "
                f"this config asks for {[c['concept'] for c in configured]}: use another run_dir"
            )
        # Every start, finished runs included: a changed file is refused before anything is
        # written, not built upon or reported as complete.
        verify_committed_files(self.path, ledger)
        return ledger

    def verified_ledger(self) -> dict[str, Any]:
        """The ledger as it is (whatever request list the caller has in mind), once its structure
        and the sha256 of every file it records check out; :class:`LedgerMismatchError` otherwise.
        For readers of a finished or stopped run (``train.py export``). Reads only."""
        ledger = read_ledger(self.path)
        verify_committed_files(self.path, ledger)
        return ledger

    def write_ledger(self, ledger: dict[str, Any]) -> None:
        """Write ``ledger.json`` (atomically: the last write of every commit)."""
        write_json(ledger, self.ledger_path)

    def ledger_entry(self, index: int, request: Request, weights_sha256: str) -> dict[str, Any]:
        """A new ``completed`` entry for request ``index`` whose weights file has ``weights_sha256``."""
        weights = self.request_dir(index, request) / WEIGHTS_FILE
        return {**vars(request), "index": index + 1, "weights": self.relative(weights), "sha256": weights_sha256}

    def record_file(self, entry: dict[str, Any], key: str, path: Path, sha256: str | None = None) -> str:
        """Record ``path`` in ledger ``entry`` under ``key`` (with its sha256, ``<key>_sha256``); returns it."""
        sha256 = sha256 if sha256 is not None else file_sha256(path)
        entry[key] = self.relative(path)
        entry[f"{key}_sha256"] = sha256
        return sha256

    def verified_weights(self, entry: dict[str, Any], key: str = "weights") -> dict[str, torch.Tensor]:
        """The weights a ledger entry records under ``key`` (``weights`` or ``merged``), once
        their sha256 matches the ledger's; :class:`LedgerMismatchError` otherwise."""
        sha_key = "sha256" if key == "weights" else f"{key}_sha256"
        return load_weights(verified_path(self.path, entry[key], entry[sha_key], role=key))

    def save_carried_states(self, entry: dict[str, Any], out: Path, states: dict[str, dict[str, torch.Tensor]]) -> None:
        """Write each callback's carried state (by its state key) next to the request's weights
        and record it, with its sha256, in ledger ``entry`` under ``carried_states``."""
        for key, state in states.items():
            path = out / f"{CARRIED_STATE_PREFIX}{_file_safe(key)}.safetensors"
            sha256 = save_weights(state, path)
            entry.setdefault("carried_states", {})[key] = {"file": self.relative(path), "sha256": sha256}

    def carried_states(self, entry: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        """The carried states a ledger entry records, by callback state key, sha256-verified."""
        return {key: load_weights(verified_path(self.path, record["file"], record["sha256"], role=f"carried state {key}"))
                for key, record in (entry.get("carried_states") or {}).items()}

    def metrics_of(self, ledger: dict[str, Any], number: int) -> dict[str, Any] | None:
        """``metrics.json`` of request ``number`` (0 = base) as the ledger records it, if evaluated."""
        entry = ledger.get("base") if number == 0 else ledger["completed"][number - 1]
        if not entry or "metrics" not in entry:
            return None
        path = self.path / entry["metrics"]
        return json.loads(path.read_text()) if path.exists() else None

    def record_failure(self, ledger: dict[str, Any], index: int, request: Request, failure: dict[str, Any]) -> Path:
        """Write ``FAILED.json`` of request ``index`` and append ``failure`` to the ledger's
        ``failed`` list; returns the file."""
        path = self.request_dir(index, request) / FAILED_FILE
        write_json(failure, path)
        ledger.setdefault("failed", []).append(failure)
        self.write_ledger(ledger)
        return path

    def clear_failure(self, index: int, request: Request) -> None:
        """Remove an earlier attempt's ``FAILED.json`` (the request is committed now)."""
        (self.request_dir(index, request) / FAILED_FILE).unlink(missing_ok=True)

    def progress(self) -> tuple[int, int | None]:
        """``(committed, planned)`` requests: how many the ledger holds, and how many the run
        plans (the requests ``run.json`` lists, as the last start was given them; the ledger's
        ``stream`` for folders without one). ``planned`` is ``None`` when neither file says.
        Reads only, without checking the files (``train.py verify`` does)."""
        def read(path: Path) -> dict[str, Any]:
            try:
                value = json.loads(path.read_text())
            except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
                return {}
            return value if isinstance(value, dict) else {}

        described, ledger = read(self.run_info_path), read(self.ledger_path)
        completed = ledger.get("completed")
        done = len(completed) if isinstance(completed, list) else 0
        for plan in (described.get("requests"), ledger.get("stream")):
            if isinstance(plan, list) and plan:
                return done, len(plan)
        return done, None

    def is_finished(self) -> bool:
        """Whether every request ``run.json`` lists is in the ledger (False when either is absent)."""
        if not self.run_info_path.is_file() or not self.ledger_path.is_file():
            return False
        done, planned = self.progress()
        return planned is not None and done == planned

    # -- results, run.json, settings ----------------------------------------------------------
    def read_results(self) -> list[dict[str, Any]]:
        """The rows of ``results.json`` (empty for a new folder)."""
        return json.loads(self.results_path.read_text()) if self.results_path.exists() else []

    def write_results(self, rows: list[dict[str, Any]]) -> None:
        """Write ``results.json`` and ``results.csv``."""
        write_json(rows, self.results_path)
        write_text(results_csv(rows), self.path / RESULTS_CSV)

    def read_run_info(self) -> Any:
        """``run.json`` parsed (``None`` for folders written before it existed); not checked."""
        return json.loads(self.run_info_path.read_text()) if self.run_info_path.is_file() else None

    def write_run_info(self, info: dict[str, Any]) -> None:
        """Write ``run.json``."""
        write_json(info, self.run_info_path)

    def config_path(self) -> Path | None:
        """The ``config.yaml`` LightningCLI saved for the run's last start (see
        :data:`CONFIG_FOLDERS`), ``None`` if there is none."""
        for folder in CONFIG_FOLDERS:
            path = self.path / folder / CONFIG_NAME
            if path.is_file():
                return path
        return None

    def read_config(self) -> dict[str, Any] | None:
        """``config.yaml`` parsed (``yaml.safe_load``), ``None`` if absent; a
        :class:`SettingsError` if it is not a YAML mapping."""
        import yaml

        path = self.config_path()
        if path is None:
            return None
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise SettingsError(f"{path} is not valid YAML ({err}); restore it") from None
        if not isinstance(config, dict):
            raise SettingsError(f"{path} is not a mapping of settings; restore it")
        return config

    def read_settings(self) -> dict[str, Any] | None:
        """``stream_settings.json`` parsed (``None`` if absent or not a mapping); not checked."""
        path = self.path / SETTINGS_NAME
        settings = json.loads(path.read_text()) if path.is_file() else None
        return settings if isinstance(settings, dict) else None

    def write_settings(self, settings: dict[str, Any]) -> None:
        """Write ``stream_settings.json``."""
        write_json(settings, self.path / SETTINGS_NAME)


def _file_safe(key: str) -> str:
    """A callback state key ("InverseEWC{'name': None}") as a file-name fragment."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", key).strip("-")
