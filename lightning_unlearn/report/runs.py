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

from lightning_unlearn.errors import UnlearnError
from lightning_unlearn.run_folder import ATTACK_COLUMNS, GRID_FILE, METRIC_NAMES, RunFolder

__all__ = ["ATTACK_COLUMNS", "METRIC_NAMES", "HEADLINE_METRICS", "RunFolderError", "RequestRecord", "RunRecord", "load_run"]

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


def load_run(path: str | Path) -> RunRecord:
    """Read a run folder; :class:`RunFolderError` naming what is missing or malformed."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"run folder {path} does not exist")
    results = read_results(path)
    info = read_info(path)
    name = str((info or {}).get("label") or path.resolve().name)
    folders = RunFolder(path).request_folders()
    requests = [read_request(row, folders.get(int(row["request"]))) for row in results]
    return RunRecord(path=path, name=name, results=results, info=info, requests=requests)
