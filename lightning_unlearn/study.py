"""Studies: several streams (protocol x method x regularizer stack x domain) run in turn.

``python train.py study --config configs/tinyworld/study_styles.yaml`` (or, from any folder,
``lightning-unlearn study --config tinyworld/study_styles``)

A study config is YAML::

    root: runs/study_styles          # every run gets its own folder root/<name>
    common: [--stream.evaluate_every=1]   # arguments given to every run (optional)
    report: true                     # write root/report/ over all runs at the end (optional)
    runs:
      - name: sequential
        args: [--config, configs/tinyworld/esd_styles_sequential.yaml]
      - name: simultaneous
        args: [--config, configs/tinyworld/esd_styles_sequential.yaml, --stream.protocol=simultaneous]

Each run is ``python -m lightning_unlearn unlearn <args> <common> --stream.run_dir=root/<name>``
in its own process, in the current folder (a crash or a DDP launch in one run cannot leak into
the next). A run whose ledger says every request is complete is skipped without starting; an
unfinished one resumes where it stopped (the stream's own resume). Failed runs are reported at
the end and make the study exit non-zero; the others still run. Every run's summary line and
``study.json`` entry say how many of its planned requests are done ("8 of 12 requests,
unfinished"); the report covers every run that evaluated its base, unfinished ones marked.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_unlearn.checks import ArgumentParser
from lightning_unlearn.config_names import resolve_config
from lightning_unlearn.errors import UnlearnError
from lightning_unlearn.run_folder import RunFolder, progress_text

STUDY_KEYS = {"root", "common", "report", "runs"}
RUN_KEYS = {"name", "args"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class StudyRunsFailedError(UnlearnError, RuntimeError):
    """One or more runs of a study ended with an error (each printed its own above)."""


class StudyConfigError(UnlearnError, ValueError):
    """A study config that cannot be run (unknown key, bad or duplicate run name, ...)."""


@dataclass
class StudyRun:
    """One stream of a study."""

    name: str
    args: list[str]


@dataclass
class Study:
    """A parsed study config."""

    root: Path
    runs: list[StudyRun]
    common: list[str] = field(default_factory=list)
    report: bool = True

    @classmethod
    def load(cls, path: str | Path) -> Study:
        """Parse and check a study YAML; a StudyConfigError names what is wrong."""
        path = Path(path)
        if not path.is_file():
            raise StudyConfigError(f"study config {path} does not exist")
        raw = yaml.safe_load(path.read_text())
        if not isinstance(raw, dict):
            raise StudyConfigError(f"{path}: a study config is a mapping with keys {sorted(STUDY_KEYS)}")
        unknown = set(raw) - STUDY_KEYS
        if unknown:
            raise StudyConfigError(f"{path}: unknown key(s) {sorted(unknown)}; a study has {sorted(STUDY_KEYS)}")
        if "root" not in raw or not raw.get("runs"):
            raise StudyConfigError(f"{path}: a study needs 'root' and a non-empty 'runs' list")
        runs: list[StudyRun] = []
        for i, entry in enumerate(raw["runs"]):
            if not isinstance(entry, dict) or set(entry) - RUN_KEYS or "name" not in entry:
                raise StudyConfigError(f"{path}: run {i} must be a mapping with 'name' and 'args', got {entry!r}")
            name = str(entry["name"])
            if not NAME.match(name):
                raise StudyConfigError(f"{path}: run name {name!r} must be a folder name (letters, digits, _ . + -)")
            if any(r.name == name for r in runs):
                raise StudyConfigError(f"{path}: run name {name!r} appears twice")
            args = entry.get("args") or []
            if not isinstance(args, list) or any(a.startswith("--stream.run_dir") for a in map(str, args)):
                raise StudyConfigError(f"{path}: run {name!r}: 'args' is a list of train.py unlearn arguments without --stream.run_dir")
            runs.append(StudyRun(name, [str(a) for a in args]))
        common = [str(a) for a in raw.get("common") or []]
        root = Path(raw["root"])
        for folder in (root, *root.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise StudyConfigError(f"{path}: root {root} is or is inside the file {folder}, not a folder")
                break
        return cls(root=Path(raw["root"]), runs=runs, common=common, report=bool(raw.get("report", True)))

    def run_dir(self, run: StudyRun) -> Path:
        return self.root / run.name


def is_finished(run_dir: Path) -> bool:
    """Every request of the run is in its ledger (:meth:`RunFolder.is_finished`)."""
    return RunFolder(run_dir).is_finished()


def progress(run_dir: Path) -> dict[str, Any]:
    """How far a run got, from its run folder (:meth:`RunFolder.progress`): ``done``, ``planned``
    (``None`` if the folder records no plan), ``finished`` and the text ``"8 of 12 requests,
    unfinished"`` the summaries print."""
    done, planned = RunFolder(run_dir).progress()
    return {"done": done, "planned": planned, "finished": planned is not None and done >= planned,
            "requests": progress_text(done, planned)}


def run_study(study: Study, python: str = sys.executable) -> dict[str, Any]:
    """Run every unfinished run in turn; returns {name: status} and writes root/study.json."""
    study.root.mkdir(parents=True, exist_ok=True)
    statuses: dict[str, Any] = {}
    for run in study.runs:
        run_dir = study.run_dir(run)
        if is_finished(run_dir):
            statuses[run.name] = {"status": "skipped (finished)", **progress(run_dir)}
            print(f"[study] {run.name}: finished already, skipped ({statuses[run.name]['requests']})", flush=True)
            continue
        # The package's module, not the checkout's train.py: a wheel install has no checkout. It
        # runs in this folder, where the root and the study's paths are; a repository-relative
        # config (configs/tinyworld/...) that is not here resolves to the shipped one.
        command = [python, "-m", "lightning_unlearn", "unlearn", *run.args, *study.common,
                   f"--stream.run_dir={run_dir}"]
        print(f"[study] {run.name}: {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        code = subprocess.call(command)
        seconds = round(time.perf_counter() - started, 1)
        statuses[run.name] = {"status": "finished" if code == 0 else f"failed (exit {code})", "seconds": seconds,
                              **progress(run_dir)}
        print(f"[study] {run.name}: {statuses[run.name]['status']} in {seconds:.0f}s "
              f"({statuses[run.name]['requests']})", flush=True)
    from lightning_unlearn.atomic_io import write_json

    write_json({"runs": statuses}, study.root / "study.json")
    # Unfinished runs that evaluated their base are in the report too, marked as unfinished there.
    reported = [study.run_dir(r) for r in study.runs if RunFolder(study.run_dir(r)).read_results()]
    unfinished = [r.name for r in study.runs if not statuses[r.name].get("finished")]
    if unfinished:
        print("[study] unfinished: " + ", ".join(f"{n} ({statuses[n]['requests']})" for n in unfinished), flush=True)
    if study.report and reported:
        from lightning_unlearn.report import write_report

        write_report([str(d) for d in reported], study.root / "report", title=f"Study {study.root.name}")
        print(f"[study] report: {study.root / 'report' / 'report.html'}", flush=True)
    return statuses


def main(args: list[str]) -> None:
    """``train.py study --config STUDY.yaml``."""
    parser = ArgumentParser(prog="train.py study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the study YAML (root, common, report, runs)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these run names")
    parser.add_argument("--extra", action="append", default=[], metavar="ARG",
                        help="one more train.py unlearn argument for every run (after the study's own); "
                             "repeat it for several, e.g. --extra=--stream.evaluate_every=4")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    ns = parser.parse_args(args)
    study = Study.load(resolve_config(ns.config))
    study.common = [*study.common, *ns.extra]
    study.report = study.report and not ns.no_report
    if ns.only is not None:
        unknown = set(ns.only) - {r.name for r in study.runs}
        if unknown:
            raise StudyConfigError(f"--only names unknown runs {sorted(unknown)}")
        study.runs = [r for r in study.runs if r.name in ns.only]
    statuses = run_study(study)
    failed = [n for n, s in statuses.items() if s["status"].startswith("failed")]
    if failed:
        raise StudyRunsFailedError(
            "study runs failed: " + ", ".join(f"{n} ({statuses[n]['status']})" for n in failed)
            + "; their errors are above; re-run the same command to retry them (finished runs are skipped)"
        )
