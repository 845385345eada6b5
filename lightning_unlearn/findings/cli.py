"""``python train.py findings``: run what the paper's five findings need, then judge each one.

``train.py findings --profile quick`` (the default; about 30 minutes on 2 CPU cores) runs the
study ``configs/tinyworld/findings_quick.yaml``: Concept Ablation on the first 4 style and the
first 4 object requests, evaluated every 2 requests, sequential, simultaneous, L1-SP, L2-SP,
top-k, independent + TIES, gradient projection and projection + top-k. ``--profile full`` runs
``findings_full.yaml``: the paper's lengths (12 style and 8 object requests, evaluation after
each), Concept Ablation's whole table and ESD's sequential and simultaneous, 3 replicates each
(the time it states in its header). ``--config STUDY.yaml`` checks any study whose runs follow
the names of :mod:`lightning_unlearn.findings.claims`.

Runs go through the study runner: each is its own resumable run folder, finished runs are skipped
and an interrupted one resumes, so the same command continues after a kill. Then it writes, in
the study's root,

- ``findings.md``: for each finding, the paper's statement and number, our checks with their 95%
  intervals, a verdict (holds / does not hold / inconclusive) and the rule that decided it; then
  the regularizer table with ours beside the paper's;
- ``findings.json``: the same as data;
- ``report/report.html`` (and ``report.md``): the study's report with the findings first.

``--no-run`` judges the runs already finished without training anything.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning_unlearn.checks import ArgumentParser
from lightning_unlearn.config_names import resolve_config
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.findings.claims import check_findings, regularizer_table
from lightning_unlearn.findings.data import StudyResults, load_study_results
from lightning_unlearn.findings.render import findings_markdown, findings_section
from lightning_unlearn.run_folder import RunFolder
from lightning_unlearn.study import Study, StudyRunsFailedError, run_study

PROFILES = {"quick": "tinyworld/findings_quick", "full": "tinyworld/findings_full"}
"""``--profile`` name -> the shipped study config it runs."""
FINDINGS_MD, FINDINGS_JSON = "findings.md", "findings.json"


class FindingsError(SettingsError):
    """A findings command that cannot start (unknown profile, nothing to judge with --no-run)."""


def describe(results: StudyResults) -> str:
    """What the numbers rest on: requests, replicates and images per prompt of each finished run."""
    parts = []
    for run in results.runs.values():
        settings = RunFolder(run.folders[0]).read_settings() or {}
        seeds = settings.get("evaluation", {}).get("seeds_per_prompt", "?")
        parts.append(f"{run.name} ({run.requests} requests, {len(run.replicates)} replicate(s), "
                     f"{seeds} image(s) a prompt, evaluated every {settings.get('evaluate_every', '?')})")
    return "Runs: " + "; ".join(parts) + "." if parts else "No finished runs."


def judge(study: Study, profile: str) -> dict[str, Any]:
    """Judge the study's finished runs: write findings.md, findings.json and the report; returns
    findings.json's content."""
    from lightning_unlearn.atomic_io import write_json, write_text
    from lightning_unlearn.report import write_report

    results = load_study_results(study)
    findings = check_findings(results)
    tables = {method: regularizer_table(results, method) for method in ("ca", "esd")}
    about = {"profile": profile, "what": describe(results), "unfinished": results.unfinished}
    section = findings_section(findings, tables, about)
    write_text(findings_markdown(section, f"Findings: {study.root.name}"), study.root / FINDINGS_MD)
    record = {
        **about,
        "findings": [f.as_dict() for f in findings],
        "regularizer_tables": [
            {"method": method, "domain": domain, "metric": metric, "column": column, "ours": cell.ours.value,
             "low": cell.ours.low, "high": cell.ours.high, "versus_sequential": cell.versus_sequential,
             "paper": cell.paper, "collapsed": cell.collapsed}
            for method, table in tables.items()
            for (domain, metric), cells in table.items() for column, cell in cells.items()
        ],
    }
    write_json(record, study.root / FINDINGS_JSON)
    reported = [folder for run in results.runs.values() for folder in run.folders]
    unfinished = [study.run_dir(f) for run in study.runs for f, _ in run.jobs()
                  if str(study.run_dir(f)) not in reported and RunFolder(study.run_dir(f)).read_results()]
    if reported or unfinished:
        write_report([*reported, *map(str, unfinished)], study.root / "report", title=f"Findings {study.root.name}",
                     leading_sections=[section])
    return record


def main(args: list[str]) -> None:
    """``train.py findings [--profile quick|full | --config STUDY.yaml] [--root DIR] [--no-run]``."""
    parser = ArgumentParser(prog="train.py findings", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", help=f"a shipped profile: {', '.join(PROFILES)} (default quick)")
    parser.add_argument("--config", default=None, help="a study YAML to judge instead of a profile's")
    parser.add_argument("--root", default=None, help="the study's folder, instead of the config's root")
    parser.add_argument("--no-run", action="store_true", help="judge the finished runs only; train nothing")
    parser.add_argument("--extra", action="append", default=[], metavar="ARG",
                        help="one more train.py unlearn argument for every run, e.g. --extra=--trainer.accelerator=gpu")
    ns = parser.parse_args(args)
    if ns.config is None and ns.profile not in PROFILES:
        raise FindingsError(f"--profile {ns.profile!r} is not a findings profile; choose one of {sorted(PROFILES)}")
    config = resolve_config(ns.config or PROFILES[ns.profile])
    profile = ns.profile if ns.config is None else f"custom ({ns.config})"
    study = Study.load(config)
    if ns.root is not None:
        study.root = Path(ns.root)
    study.common = [*study.common, *ns.extra]
    if ns.no_run and not study.root.is_dir():
        raise FindingsError(f"--no-run: the study folder {study.root} does not exist; run without --no-run first")
    started = time.perf_counter()
    statuses: dict[str, Any] = {}
    if not ns.no_run:
        study.report = False  # the report is written below, with the findings first
        statuses = run_study(study)
    record = judge(study, profile)
    minutes = (time.perf_counter() - started) / 60
    for finding in record["findings"]:
        print(f"[findings] {finding['number']}. {finding['title']}: {finding['verdict']}", flush=True)
    print(f"[findings] {study.root / FINDINGS_MD} ({minutes:.1f} min)", flush=True)
    failed = [n for n, s in statuses.items() if s["status"].startswith("failed")]
    if failed:
        raise StudyRunsFailedError("findings runs failed: " + ", ".join(failed)
                                   + "; their errors are above; re-run the same command to retry them")
