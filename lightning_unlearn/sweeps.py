"""Strength sweeps of a study: one row per setting, and the setting that keeps UA with the best IRA.

A study run that declares ``sweep: {OPTION: [values]}`` becomes one run per setting
(:mod:`lightning_unlearn.study`). After the runs this module reads the study's aggregated rows
(``study_results``: per run name and request, the mean over replicates with its 95% interval)
and writes, for every sweep, the trade-off at the last request:

``root/sweeps.csv`` and ``root/sweeps.json``: one row per setting, columns :data:`SWEEP_COLUMNS`:
``sweep`` (the swept run's name), ``run`` (the setting's run name, ``l2@weight=100``),
``setting`` (``weight=100``), ``request`` (the last request's number, as in ``results.csv``:
0 is the base; empty when the setting has no finished run), ``concept``, ``kind``,
``replicates``, ``interval`` (how the bounds were made), every metric with its ``_lo`` / ``_hi``
bounds (``results.csv``'s ``METRIC_COLUMNS``: UA, UA_latest, IRA, CRA, style_acc, object_acc),
and ``best`` (true on the one setting :func:`best_setting` picks, false elsewhere). The JSON rows
also carry ``values``: ``{option: value}`` as the study YAML wrote them.

The rule (:func:`best_setting`): among the settings whose UA (mean) at the last request is at
least :data:`UA_FLOOR` (95), the one with the highest IRA (mean); ties go to the higher CRA, then
to the earlier setting. None when no setting reaches the floor. The verdict
(:func:`sweep_verdicts`) also names the other qualifying settings whose IRA interval overlaps
the best one's: between those the data cannot choose.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_unlearn.intervals import bound_keys, format_interval
from lightning_unlearn.run_folder import METRIC_COLUMNS

UA_FLOOR = 95.0
"""A setting must keep UA (all erased concepts, last request) at least this to be a candidate."""
SWEEPS = "sweeps"
"""``root/sweeps.{csv,json}``."""
SWEEP_COLUMNS = ("sweep", "run", "setting", "request", "concept", "kind", "replicates", "interval",
                 *METRIC_COLUMNS, "best")
"""Columns of ``sweeps.csv``, one row per setting."""
BEST_RULE = f"highest IRA among the settings with UA >= {UA_FLOOR:g} at the last request (ties: higher CRA)"


def option_text(value: Any) -> str:
    """A swept value as ``train.py unlearn`` reads it: ``true``/``false``, numbers as Python writes them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def option_label(option: str) -> str:
    """The short name of a swept option in run names: its last dotted part, without a trailing
    ``_`` (``--stream.merge.lambda_`` -> ``lambda``)."""
    return option.lstrip("-").split(".")[-1].rstrip("_") or option.lstrip("-")


def setting_text(setting: dict[str, Any]) -> str:
    """``weight=100`` / ``lambda=2, top_k=0.2``: a setting as the rows and the report show it."""
    return ", ".join(f"{option_label(o)}={option_text(v)}" for o, v in setting.items())


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def sweep_rows(settings: Sequence[tuple[str, str, dict[str, Any]]], results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per ``(sweep, run, setting)`` from ``results`` (rows with ``run`` and ``request``,
    as ``study_results.json``): the row of the run's last request, metrics NaN where the run has
    no result; ``best`` marks :func:`best_setting` of each sweep."""
    last: dict[str, dict[str, Any]] = {}
    for row in results:
        run = str(row.get("run"))
        if run not in last or int(row["request"]) > int(last[run]["request"]):
            last[run] = dict(row)
    rows: list[dict[str, Any]] = []
    for sweep, run, setting in settings:
        found = last.get(run, {})
        row: dict[str, Any] = {
            "sweep": sweep, "run": run, "setting": setting_text(setting),
            "request": found.get("request"), "concept": found.get("concept", ""), "kind": found.get("kind", ""),
            "replicates": int(found.get("replicates", 0) or 0), "interval": found.get("interval", "none"),
        }
        row.update({key: _float(found.get(key)) for key in METRIC_COLUMNS})
        row["best"] = False
        row["values"] = dict(setting)
        rows.append(row)
    for sweep in dict.fromkeys(r["sweep"] for r in rows):
        best = best_setting([r for r in rows if r["sweep"] == sweep])
        if best is not None:
            best["best"] = True
    return rows


def best_setting(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The row with the highest IRA among those with UA >= :data:`UA_FLOOR` (ties: the higher
    CRA, then the earlier row); ``None`` when no row reaches the floor (or none has an IRA)."""
    candidates = [r for r in rows if _float(r.get("UA")) >= UA_FLOOR and math.isfinite(_float(r.get("IRA")))]
    if not candidates:
        return None
    cra = [(_float(r.get("CRA")) if math.isfinite(_float(r.get("CRA"))) else -math.inf) for r in candidates]
    order = sorted(range(len(candidates)), key=lambda i: (-_float(candidates[i]["IRA"]), -cra[i], i))
    return candidates[order[0]]


def _cell(row: dict[str, Any], metric: str) -> str:
    low, high = bound_keys(metric)
    return format_interval(_float(row.get(metric)), (_float(row.get(low)), _float(row.get(high))))


def _overlap(a: dict[str, Any], b: dict[str, Any], metric: str) -> bool:
    """Whether the two rows' 95% intervals of ``metric`` overlap (or either has none)."""
    low, high = bound_keys(metric)
    bounds = [_float(a.get(low)), _float(a.get(high)), _float(b.get(low)), _float(b.get(high))]
    if not all(math.isfinite(x) for x in bounds):
        return True
    return bounds[0] <= bounds[3] and bounds[2] <= bounds[1]


def sweep_verdicts(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """``{sweep: one sentence}``: the best setting with its UA and IRA, the qualifying settings
    it cannot be told apart from (overlapping IRA intervals), or that no setting keeps UA >= 95."""
    verdicts: dict[str, str] = {}
    for sweep in dict.fromkeys(r["sweep"] for r in rows):
        group = [r for r in rows if r["sweep"] == sweep]
        measured = [r for r in group if math.isfinite(_float(r.get("UA")))]
        missing = len(group) - len(measured)
        tail = f" ({missing} of {len(group)} settings have no finished run)" if missing else ""
        best = next((r for r in group if r.get("best")), None)
        if not measured:
            verdicts[sweep] = f"no setting has a finished run yet{tail}"
            continue
        if best is None:
            top = max(measured, key=lambda r: _float(r["UA"]))
            verdicts[sweep] = (f"no setting keeps UA >= {UA_FLOOR:g} (highest UA: {_cell(top, 'UA')} at "
                               f"{top['setting']}){tail}")
            continue
        text = (f"{best['setting']} keeps UA >= {UA_FLOOR:g} ({_cell(best, 'UA')}) with the best IRA, "
                f"{_cell(best, 'IRA')}")
        close = [r["setting"] for r in group if r is not best and _float(r.get("UA")) >= UA_FLOOR
                 and math.isfinite(_float(r.get("IRA"))) and _overlap(r, best, "IRA")]
        if close:
            text += f"; its IRA interval overlaps that of {', '.join(close)}: the data do not tell them apart"
        verdicts[sweep] = text + tail
    return verdicts


def write_sweeps(rows: Sequence[dict[str, Any]], root: Path) -> None:
    """``root/sweeps.json`` (the rows, with ``values``) and ``root/sweeps.csv`` (:data:`SWEEP_COLUMNS`;
    metrics with 2 decimals, NaN as empty)."""
    from lightning_unlearn.atomic_io import write_json, write_text

    write_json([dict(r) for r in rows], root / f"{SWEEPS}.json")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SWEEP_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        cells = {}
        for key in SWEEP_COLUMNS:
            value = row.get(key)
            if isinstance(value, bool):
                cells[key] = "true" if value else "false"
            elif isinstance(value, float):
                cells[key] = f"{value:.2f}" if math.isfinite(value) else ""
            else:
                cells[key] = "" if value is None else value
        writer.writerow(cells)
    write_text(buffer.getvalue(), root / f"{SWEEPS}.csv")
