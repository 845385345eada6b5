"""Reading stream run folders into plain records for the report.

This module only reads, and only through :mod:`lightning_unlearn.run_folder` (the one owner of
the folder's names and layout): nothing here draws, formats or writes. Its surface is the
records (:class:`RunRecord`, :class:`RequestRecord`), :func:`load_run` and :class:`RunFolderError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_unlearn.errors import SettingsError, UnlearnError
from lightning_unlearn.intervals import bound_keys
from lightning_unlearn.run_folder import ATTACK_COLUMNS, GRID_FILE, METRIC_NAMES, SETTINGS_NAME, RunFolder, progress_text

__all__ = ["ATTACK_COLUMNS", "METRIC_NAMES", "HEADLINE_METRICS", "RunFolderError", "RequestRecord", "RunRecord", "load_run",
           "metric_interval"]

HEADLINE_METRICS = ("UA", "IRA", "CRA")
"""The subset of METRIC_NAMES the report plots and sums a run up with."""
REQUEST_FILES = ("metrics", "drift", "semantic")
"""Optional ``<name>.json`` files of a request folder, read into the :class:`RequestRecord` field of that name."""


class RunFolderError(UnlearnError, ValueError):
    """A path given to the report is not a readable stream run folder."""


@dataclass
class RequestRecord:
    """What one request (0 = the base model) left in its folder; ``None`` where a file is absent."""

    index: int
    concept: str
    kind: str
    folder: Path | None
    metrics: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    semantic: dict[str, Any] | None = None
    grid: Path | None = None


@dataclass
class RunRecord:
    """One run folder: its results table, its ``run.json`` (if any) and its request folders."""

    path: Path
    name: str
    results: list[dict[str, Any]]
    info: dict[str, Any] | None
    requests: list[RequestRecord] = field(default_factory=list)
    done: int = 0
    """Requests committed (the ledger's ``completed``)."""
    planned: int | None = None
    """Requests the run plans (``run.json``'s list, else the ledger's stream); ``None`` if neither says."""
    settings: dict[str, Any] | None = None
    """``stream_settings.json`` (the last start's ``--stream`` settings), if any."""
    configured_callbacks: list[str] | None = None
    """Labels of the request callbacks ``config.yaml`` names (class path and settings), for run
    folders whose ``run.json`` predates recorded labels; ``None`` where it cannot tell."""

    @property
    def finished(self) -> bool:
        """Every planned request is committed (an unknown plan counts as unfinished)."""
        return self.planned is not None and self.done >= self.planned

    @property
    def progress(self) -> str:
        """``2 of 2 requests`` / ``1 of 3 requests, unfinished`` / ``1 requests (plan not recorded)``."""
        return progress_text(self.done, self.planned)

    @property
    def title(self) -> str:
        """The run's name as every section shows it: unfinished runs carry their progress."""
        return self.name if self.finished else f"{self.name} (unfinished: {self.progress.split(',')[0]})"

    @property
    def protocol_label(self) -> str | None:
        """The protocol in words (``run.json``), ``None`` without one."""
        from lightning_unlearn.protocols import recorded_protocol_label

        return recorded_protocol_label(self.info) if self.info else None

    @property
    def callback_labels(self) -> list[str] | None:
        """Each request callback in words, as ``run.json`` records it at the run's start; for older
        folders (``run.json`` lists short names), made from the class and settings ``config.yaml``
        records. ``None`` without ``run.json``."""
        from lightning_unlearn.callbacks.base import recorded_label

        entries = (self.info or {}).get("callbacks")
        if not isinstance(entries, list):
            return None
        if any(not isinstance(e, dict) for e in entries) and self.configured_callbacks is not None \
                and len(self.configured_callbacks) == len(entries):
            return list(self.configured_callbacks)
        return [recorded_label(e) for e in entries]

    @property
    def protocol(self) -> str | None:
        """The stream protocol ``run.json`` records; ``None`` for older folders without one."""
        return (self.info or {}).get("protocol")

    def erased_after(self, index: int) -> list[tuple[str, str]]:
        """(concept, kind) pairs the model evaluated after request ``index`` is meant to have forgotten.

        Sequential and simultaneous runs (and merged independent ones) have erased requests
        1..index; an independent run without merging erases request ``index`` alone.
        """
        served = [(r.concept, r.kind) for r in self.requests if 1 <= r.index <= index]
        if self.protocol == "independent" and not (self.info or {}).get("merge"):
            return served[-1:]
        return served

    def vocabulary(self) -> tuple[list[str], list[str]]:
        """Styles and objects in evaluation order (the grid's rows and columns), from metrics.json."""
        styles: list[str] = []
        objects: list[str] = []
        for request in self.requests:
            if request.metrics:
                styles += [s for s in request.metrics.get("per_style", {}) if s not in styles]
                objects += [o for o in request.metrics.get("per_object", {}) if o not in objects]
        return styles, objects


def metric_interval(row: dict[str, Any], metric: str) -> tuple[float, float]:
    """The 95% interval's bounds of ``metric`` in a results row; NaN bounds where the row has none
    (a folder written before the intervals, a request not evaluated)."""

    def number(value: Any) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            return float("nan")

    low_key, high_key = bound_keys(metric)
    return number(row.get(low_key)), number(row.get(high_key))


def read_json(path: Path) -> Any:
    """``path`` parsed; :class:`RunFolderError` naming the file if it is not JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path} is not valid JSON: {exc}") from exc


def read_results(path: Path) -> list[dict[str, Any]]:
    """The rows of ``path/results.json``, checked to be a non-empty list of request rows."""
    results_path = RunFolder(path).results_path
    if not results_path.is_file():
        raise RunFolderError(f"{path} is not a stream run folder: it has no results.json (run `train.py unlearn` first)")
    results = read_json(results_path)
    if not isinstance(results, list) or not all(isinstance(r, dict) and "request" in r and "concept" in r for r in results):
        raise RunFolderError(f"{results_path} should be a list of rows, each with 'request' and 'concept'")
    if not results:
        raise RunFolderError(f"{results_path} has no rows: the run has not evaluated its base model yet")
    return results


def read_info(path: Path) -> dict[str, Any] | None:
    """``path/run.json`` (protocol, method, callbacks, label); ``None`` for folders written before it existed."""
    info_path = RunFolder(path).run_info_path
    if not info_path.is_file():
        return None
    info = read_json(info_path)
    if not isinstance(info, dict):
        raise RunFolderError(f"{info_path} should be a JSON object")
    return info


def read_request(row: dict[str, Any], folder: Path | None) -> RequestRecord:
    """One ``results.json`` row with whatever optional files its request ``folder`` holds."""
    record = RequestRecord(index=int(row["request"]), concept=str(row["concept"]), kind=str(row.get("kind") or ""),
                           folder=folder)
    if folder is not None:
        for name in REQUEST_FILES:
            if (folder / f"{name}.json").is_file():
                setattr(record, name, read_json(folder / f"{name}.json"))
        record.grid = folder / GRID_FILE if (folder / GRID_FILE).is_file() else None
    return record


def configured_callbacks(folder: RunFolder) -> list[str] | None:
    """Labels of the request callbacks the run's ``config.yaml`` lists (``trainer.callbacks``),
    each made by its class from its recorded settings; ``None`` without a readable config."""
    from lightning_unlearn.callbacks.base import configured_labels

    try:
        config = folder.read_config()
    except SettingsError:
        return None
    callbacks = ((config or {}).get("trainer") or {}).get("callbacks")
    return configured_labels(callbacks) if isinstance(callbacks, list) else None


def load_run(path: str | Path) -> RunRecord:
    """Read a run folder; :class:`RunFolderError` naming what is missing or malformed."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"run folder {path} does not exist")
    results = read_results(path)
    info = read_info(path)
    name = str((info or {}).get("label") or path.resolve().name)
    folder = RunFolder(path)
    folders = folder.request_folders()
    requests = [read_request(row, folders.get(int(row["request"]))) for row in results]
    done, planned = folder.progress()
    if not folder.ledger_path.is_file():  # a folder without a ledger: its results rows are its requests
        done = len(results) - 1
    settings_path = path / SETTINGS_NAME
    settings = read_json(settings_path) if settings_path.is_file() else None
    old_style = isinstance((info or {}).get("callbacks"), list) and any(not isinstance(e, dict) for e in info["callbacks"])
    return RunRecord(path=path, name=name, results=results, info=info, requests=requests, done=done, planned=planned,
                     settings=settings if isinstance(settings, dict) else None,
                     configured_callbacks=configured_callbacks(folder) if old_style else None)
