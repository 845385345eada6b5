"""A study's finished runs as the findings read them: per run name, the replicate-aggregated rows
(mean and 95% interval per request) and each replicate's own rows.

Only finished runs count: an unfinished run's numbers are not final, so a check that needs it is
``not run`` (:data:`lightning_unlearn.findings.rules.NOT_RUN`) and ``findings.md`` lists the run
as unfinished.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from lightning_unlearn.findings.rules import Estimate, mean_estimate
from lightning_unlearn.intervals import bound_keys
from lightning_unlearn.report.document import as_float
from lightning_unlearn.replicates import aggregate_rows
from lightning_unlearn.run_folder import RunFolder
from lightning_unlearn.study import Study, is_finished


SEMANTIC_FILE = "semantic.json"
"""``requests/NN-*/semantic.json``: a request's semantic analysis (``lightning_unlearn.semantic_analysis``)."""


@dataclass
class RunResults:
    """One study run (all its finished replicates)."""

    name: str
    rows: list[dict[str, Any]]
    """Per request (0 = base): the mean over replicates with its interval (``aggregate_rows``)."""
    replicates: list[list[dict[str, Any]]]
    """Each finished replicate's own results rows."""
    folders: list[str]

    @property
    def requests(self) -> int:
        """Requests served (the base row excluded)."""
        return len(self.rows) - 1

    def last_evaluated(self) -> int:
        """Position of the last request whose model was evaluated (``evaluate_every`` > 1 leaves gaps)."""
        for position in range(len(self.rows) - 1, -1, -1):
            if math.isfinite(as_float(self.rows[position].get("IRA"))):
                return position
        return 0

    def metric(self, name: str, position: int | None = None) -> Estimate:
        """``name`` (UA, IRA, CRA, ...) at ``position`` (default: the last evaluated request)."""
        row = self.rows[self.last_evaluated() if position is None else position]
        low_key, high_key = bound_keys(name)
        return Estimate(as_float(row.get(name)), as_float(row.get(low_key)), as_float(row.get(high_key)))

    def column(self, key: str, position: int | None = None) -> list[float]:
        """``key`` (drift_to_base, cumulative_steps, ...) at ``position`` (default: the last request)
        in each replicate, NaN where a replicate lacks it."""
        values = []
        for rows in self.replicates:
            index = len(rows) - 1 if position is None else position
            values.append(as_float(rows[index].get(key)) if 0 <= index < len(rows) else float("nan"))
        return values

    def mean_column(self, key: str, position: int | None = None) -> Estimate:
        """The mean of :meth:`column` over the replicates, with its t interval."""
        return mean_estimate([v for v in self.column(key, position) if math.isfinite(v)])

    def semantic_values(self, key: str) -> list[float]:
        """``key`` of every request's ``semantic.json`` (e.g. ``pearson_similarity_kv``) in every
        replicate, finite ones."""
        values = []
        for folder in self.folders:
            for path in sorted(RunFolder(folder).request_folders().values()):
                record = path / SEMANTIC_FILE
                if record.is_file():
                    values.append(as_float(json.loads(record.read_text()).get(key)))
        return [v for v in values if math.isfinite(v)]

    def collapsed(self, position: int | None = None) -> bool | None:
        """Whether any replicate's model at ``position`` (default: the last evaluated) collapsed;
        ``None`` when no replicate measured it."""
        index = self.last_evaluated() if position is None else position
        flags = [rows[index].get("collapsed") for rows in self.replicates if index < len(rows)]
        flags = [bool(f) for f in flags if f is not None and not (isinstance(f, float) and math.isnan(f))]
        return any(flags) if flags else None


@dataclass
class StudyResults:
    """Every run of a study: the finished ones read, the others named."""

    runs: dict[str, RunResults]
    unfinished: list[str]
    """Run names with no finished folder, or with some replicates unfinished (their finished ones are used)."""

    def get(self, name: str) -> RunResults | None:
        return self.runs.get(name)


def load_study_results(study: Study) -> StudyResults:
    """Read every finished run folder of ``study``."""
    runs: dict[str, RunResults] = {}
    unfinished: list[str] = []
    for run in study.runs:
        folders = [study.run_dir(folder) for folder, _ in run.jobs()]
        finished = [folder for folder in folders if is_finished(folder)]
        if len(finished) < len(folders):
            unfinished.append(run.name)
        if not finished:
            continue
        replicates = [RunFolder(folder).read_results() for folder in finished]
        runs[run.name] = RunResults(run.name, aggregate_rows(run.name, replicates), replicates,
                                    [str(folder) for folder in finished])
    return StudyResults(runs, unfinished)
