"""Replicates: run folders of one study run repeated with other seeds, and their aggregation.

A study run ``name`` asked for replicates (``replicates:`` in the study YAML, see
:mod:`lightning_unlearn.study`) gets one run folder per seed, ``<root>/<name>@seed<S>``: an
ordinary, resumable run folder whose name says which run and seed it is (a study run's name
cannot hold ``@``). This module owns that naming, the arguments that hand a seed to every
random part of a stream, and the aggregation of replicate results: per run name and per request,
the mean over replicates with Student's t 95% interval (with one replicate, that run's own
interval). It reads plain results rows (``results.json``), so the study and the report share it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_unlearn.intervals import bound_keys, t_interval
from lightning_unlearn.run_folder import METRIC_COLUMNS, METRIC_NAMES

REPLICATE_SEPARATOR = "@seed"
_REPLICATE_NAME = re.compile(r"^(?P<run>.+)@seed(?P<seed>\d+)$")
AGGREGATE_COLUMNS = ("run", "request", "concept", "kind", "replicates", "interval", *METRIC_COLUMNS)
"""Columns of a study's ``study_results.csv`` (one row per run name and request)."""
EVALUATION_SEED_BASE = 1234
"""Replicate seed S evaluates with noise seed EVALUATION_SEED_BASE + S: ``EvaluationSettings.seed``'s
default, so seed 0 is the default run (not imported from there: the report reads this module
without loading torch)."""


def replicate_name(run: str, seed: int) -> str:
    """``<run>@seed<S>``: the folder (and report) name of run ``run``'s replicate with seed ``seed``."""
    return f"{run}{REPLICATE_SEPARATOR}{seed}"


def parse_replicate_name(name: str) -> tuple[str, int] | None:
    """``(run, seed)`` of a replicate's name, ``None`` for any other name."""
    match = _REPLICATE_NAME.match(name)
    return (match.group("run"), int(match.group("seed"))) if match else None


def seed_arguments(seed: int, shuffle_order: bool) -> list[str]:
    """``train.py unlearn`` arguments that give a replicate its seed everywhere a stream draws:
    Lightning's global seed, the method's draws (``--model.seed``: banks, noise, anchors), the
    training samples (``--data.seed``), the evaluation noise (``--stream.evaluation.seed``, so
    that replicates also sample evaluation noise) and, with ``shuffle_order``, the request order."""
    args = [f"--seed_everything={seed}", f"--model.seed={seed}", f"--data.seed={seed}",
            f"--stream.evaluation.seed={EVALUATION_SEED_BASE + seed}"]
    if shuffle_order:
        args.append(f"--data.order_seed={seed}")
    return args


def group_replicates(names: Sequence[str]) -> dict[str, list[str]]:
    """``{run: [replicate names in seed order]}`` of the replicate names among ``names``; every
    other name stands for itself (``{name: [name]}``), in first-seen order."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        parsed = parse_replicate_name(name)
        run, seed = parsed if parsed is not None else (name, -1)
        groups.setdefault(run, []).append((seed, name))
    return {run: [name for _, name in sorted(members)] for run, members in groups.items()}


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def aggregate_rows(run: str, replicates: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Per request (by position: 0 = base), the replicates' results rows summed up.

    Each metric's value is the mean over the replicates that evaluated the request, its bounds
    the t interval over them (``interval`` = ``t over replicates``); a request only one
    replicate evaluated keeps that replicate's own interval (``interval`` = ``within run``, or
    ``none`` for a folder written before the intervals). A request the replicates name
    differently (shuffled orders) has concept ``varies``.
    """
    rows: list[dict[str, Any]] = []
    depth = max((len(r) for r in replicates), default=0)
    for position in range(depth):
        present = [r[position] for r in replicates if position < len(r)]
        concepts = {str(row.get("concept", "")) for row in present}
        kinds = {str(row.get("kind") or "") for row in present}
        row: dict[str, Any] = {
            "run": run, "request": position, "concept": concepts.pop() if len(concepts) == 1 else "varies",
            "kind": kinds.pop() if len(kinds) == 1 else "mixed",
        }
        counted = 0
        interval_kinds = set()
        for metric in METRIC_NAMES:
            low_key, high_key = bound_keys(metric)
            finite = [p for p in present if math.isfinite(_float(p.get(metric)))]
            counted = max(counted, len(finite))
            if len(finite) == 1:
                only = finite[0]
                row[metric], row[low_key], row[high_key] = (_float(only.get(k)) for k in (metric, low_key, high_key))
                interval_kinds.add("within run" if math.isfinite(row[low_key]) else "none")
            else:
                mean, (low, high) = t_interval([_float(p.get(metric)) for p in finite])
                row[metric], row[low_key], row[high_key] = mean, low, high
                if finite:
                    interval_kinds.add("t over replicates")
        row["replicates"] = counted
        row["interval"] = ", ".join(sorted(interval_kinds)) or "none"
        rows.append(row)
    return rows
