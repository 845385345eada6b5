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

Replicates: ``replicates: 3`` (seeds 0, 1, 2) or ``replicates: [0, 7, 42]`` (those seeds), at
the top (every run) or in a run (that run; it wins), and optionally ``shuffle_order: true``
(each replicate serves the requests in an order shuffled by its seed). Each replicate is its own
run folder ``root/<name>@seed<S>`` with the seed handed to everything random in the stream
(:func:`lightning_unlearn.replicates.seed_arguments`); a run without replicates keeps its
folder ``root/<name>``. After the runs, ``root/study_results.{csv,json}`` hold one row per run
name and request: the mean over its replicates with a 95% t interval (docs/statistics.md).

Sweeps: a run may declare ``sweep: {OPTION: [values]}`` (a ``train.py unlearn`` option, e.g.
``--trainer.callbacks.init_args.weight: [1, 10, 100]``): it becomes one run per value, named
``<name>@<option's last part>=<value>`` (``l2@weight=100``), each with ``OPTION=value`` after its
args; several options make the grid of their values (``ties@lambda=2@top_k=0.2``). Replicates
apply to every setting (``l2@weight=100@seed0``). A sweep whose list is empty, whose option
``train.py unlearn`` does not accept (checked by parsing each setting's arguments, before any
run starts) or that the run's args or ``common`` already set is a :class:`SweepSpecError`. After
the runs, ``root/sweeps.{csv,json}`` hold one row per setting (the last request's UA / IRA / CRA
with their intervals) and name the setting that keeps UA >= 95 with the best IRA
(:mod:`lightning_unlearn.sweeps`, docs/studies-and-reports.md).

Each run is ``python -m lightning_unlearn unlearn <args> <common> --stream.run_dir=root/<name>``
in its own process, in the current folder (a crash or a DDP launch in one run cannot leak into
the next). A run whose ledger says every request is complete is skipped without starting; an
unfinished one resumes where it stopped (the stream's own resume). Failed runs are reported at
the end and make the study exit non-zero; the others still run. Every run's summary line and
``study.json`` entry say how many of its planned requests are done ("8 of 12 requests,
unfinished"); the report covers every run that evaluated its base, unfinished ones marked.
"""

from __future__ import annotations

import csv
import io
import itertools
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
from lightning_unlearn.replicates import AGGREGATE_COLUMNS, aggregate_rows, replicate_name, seed_arguments
from lightning_unlearn.run_folder import RunFolder, progress_text
from lightning_unlearn.sweeps import option_label, option_text, sweep_rows, sweep_verdicts, write_sweeps

STUDY_KEYS = {"root", "common", "report", "runs", "replicates", "shuffle_order"}
RUN_KEYS = {"name", "args", "replicates", "shuffle_order", "sweep"}
SEEDED_OPTIONS = ("--seed_everything", "--model.seed", "--data.seed", "--stream.evaluation.seed", "--data.order_seed")
"""Options a replicate sets from its seed: a run with replicates may not set them itself."""
STUDY_RESULTS = "study_results"
"""``root/study_results.{csv,json}``: per run name and request, the mean over replicates."""
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class StudyRunsFailedError(UnlearnError, RuntimeError):
    """One or more runs of a study ended with an error (each printed its own above)."""


class StudyConfigError(UnlearnError, ValueError):
    """A study config that cannot be run (unknown key, bad or duplicate run name, ...)."""


class ReplicateSpecError(StudyConfigError):
    """A ``replicates`` / ``shuffle_order`` entry of a study config that names no valid set of seeds."""


class SweepSpecError(StudyConfigError):
    """A ``sweep`` entry of a study run that names no valid set of settings: not a mapping of
    options to non-empty lists of values, an option ``train.py unlearn`` does not accept, or
    one the run's args or ``common`` already set."""


SWEEP_VALUE = re.compile(r"^[A-Za-z0-9_.+-]+$")
"""A swept value's text becomes part of a folder name."""


def parse_sweep(value: Any, name: str, taken: list[str], where: str) -> list[dict[str, Any]]:
    """The settings of a ``sweep`` entry, ``[{option: value, ...}, ...]`` (the grid of the
    options' values, in the order written), checked for form; ``taken``: the run's args and the
    study's common arguments, which may not set a swept option."""
    if not isinstance(value, dict) or not value:
        raise SweepSpecError(f"{where}: run {name!r}: sweep must map options to lists of values, "
                             f"e.g. {{--trainer.callbacks.init_args.weight: [1, 10, 100]}}, got {value!r}")
    for option, values in value.items():
        if not isinstance(option, str) or not re.match(r"^--[A-Za-z_][A-Za-z0-9_.]*$", option) or option == "--config":
            raise SweepSpecError(f"{where}: run {name!r}: sweep option {option!r} is not a train.py unlearn setting "
                                 "(--section.key, e.g. --trainer.callbacks.init_args.weight; not --config)")
        if option == "--stream.run_dir" or option in SEEDED_OPTIONS:
            raise SweepSpecError(f"{where}: run {name!r}: sweep option {option} is set by the study itself "
                                 "(the run folder, or the seeds: use replicates)")
        if not isinstance(values, list) or not values:
            raise SweepSpecError(f"{where}: run {name!r}: sweep option {option} needs a non-empty list of values, got {values!r}")
        for v in values:
            if isinstance(v, (dict, list)) or v is None or not SWEEP_VALUE.match(option_text(v)):
                raise SweepSpecError(f"{where}: run {name!r}: sweep value {v!r} of {option} must be a number, true/false "
                                     "or a word of letters, digits, _ . + - (it becomes part of the run's folder name)")
        # 1 and 1.0 are one setting; so are two spellings of one text.
        texts = [option_text(v) for v in values]
        repeated = sorted({texts[i] for i, v in enumerate(values)
                           if any(v == w or texts[i] == texts[j] for j, w in enumerate(values[:i]))})
        if repeated:
            raise SweepSpecError(f"{where}: run {name!r}: sweep option {option} lists {repeated} more than once")
        clash = [a for a in taken if a == option or a.startswith(option + "=")]
        if clash:
            raise SweepSpecError(f"{where}: run {name!r}: sweep option {option} is also set by the run's args or "
                                 f"common ({clash}); set it in one place")
    labels = [option_label(o) for o in value]
    if len(set(labels)) != len(labels):
        raise SweepSpecError(f"{where}: run {name!r}: swept options {list(value)} share a short name {labels}; "
                             "sweep them in separate runs")
    return [dict(zip(value, combination)) for combination in itertools.product(*value.values())]


def setting_name(name: str, setting: dict[str, Any]) -> str:
    """``<name>@<label>=<value>...``: the run name of one setting of a sweep."""
    return name + "".join(f"@{option_label(o)}={option_text(v)}" for o, v in setting.items())


def setting_args(setting: dict[str, Any]) -> list[str]:
    """``--option=value`` for each swept option of one setting."""
    return [f"{o}={option_text(v)}" for o, v in setting.items()]


def check_sweep_options(study: Study, where: str) -> None:
    """Parse every swept run's arguments as ``train.py unlearn`` would (nothing is built or
    written); a :class:`SweepSpecError` names a swept option or value the parser refuses."""
    swept = [run for run in study.runs if run.sweep is not None]
    if not swept:
        return
    # Imported here: a study without sweeps starts without torch and Lightning.
    from lightning_unlearn.stream import unlearn_argument_problem

    for run in swept:
        args = [*run.args, *study.common, f"--stream.run_dir={study.run_dir(run)}"]
        problem = unlearn_argument_problem(args)
        if problem is not None:
            plain = run.args[: len(run.args) - len(run.setting)]
            if unlearn_argument_problem([*plain, *study.common, f"--stream.run_dir={study.run_dir(run)}"]) is None:
                raise SweepSpecError(f"{where}: run {run.sweep!r}: train.py unlearn refuses the sweep's setting "
                                     f"{setting_args(run.setting)}: {problem}")


def parse_replicates(value: Any, shuffle_order: Any, where: str) -> tuple[list[int] | None, bool]:
    """``(seeds, shuffle_order)`` of a ``replicates`` entry (a count n: seeds 0..n-1; a list:
    those seeds; absent: ``None``, one run without replicate folders); a :class:`ReplicateSpecError`
    naming what is wrong (``where``: the config and run it comes from)."""
    if shuffle_order is not None and not isinstance(shuffle_order, bool):
        raise ReplicateSpecError(f"{where}: shuffle_order must be true or false, got {shuffle_order!r}")
    if value is None:
        if shuffle_order:
            raise ReplicateSpecError(f"{where}: shuffle_order: true needs replicates (a count or a list of seeds)")
        return None, False
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise ReplicateSpecError(f"{where}: replicates must be a count (e.g. 3) or a list of seeds (e.g. [0, 7]), got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ReplicateSpecError(f"{where}: replicates must be at least 1, got {value}")
        return list(range(value)), bool(shuffle_order)
    if not value:
        raise ReplicateSpecError(f"{where}: replicates is an empty list of seeds")
    for seed in value:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ReplicateSpecError(f"{where}: replicate seeds are integers >= 0, got {seed!r}")
    repeated = sorted({seed for seed in value if value.count(seed) > 1})
    if repeated:
        raise ReplicateSpecError(f"{where}: replicate seed(s) {repeated} appear more than once; each replicate needs its own seed")
    return list(value), bool(shuffle_order)


@dataclass
class StudyRun:
    """One stream of a study (several run folders when it has replicates)."""

    name: str
    args: list[str]
    seeds: list[int] | None = None
    """Its replicates' seeds; ``None``: one run folder ``root/<name>``, seeds from its config."""
    shuffle_order: bool = False
    """Each replicate serves the requests in an order shuffled with its seed."""
    sweep: str | None = None
    """The name of the swept run this run is one setting of (``None``: not swept)."""
    setting: dict[str, Any] = field(default_factory=dict)
    """Its swept options and values (its args end with them)."""

    def jobs(self) -> list[tuple[str, list[str]]]:
        """``(folder name, extra arguments)`` of each run folder: ``(name, [])`` without
        replicates, else ``(name@seedS, the seed's arguments)`` per seed."""
        if self.seeds is None:
            return [(self.name, [])]
        return [(replicate_name(self.name, seed), seed_arguments(seed, self.shuffle_order)) for seed in self.seeds]


@dataclass
class Study:
    """A parsed study config."""

    root: Path
    runs: list[StudyRun]
    common: list[str] = field(default_factory=list)
    report: bool = True

    @classmethod
    def load(cls, path: str | Path, check_options: bool = True) -> Study:
        """Parse and check a study YAML; a StudyConfigError names what is wrong. With
        ``check_options``, every sweep setting's arguments are parsed as ``train.py unlearn``
        parses them (seconds: it imports Lightning; only for studies with a sweep)."""
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
        common = [str(a) for a in raw.get("common") or []]
        study_seeds, study_shuffle = parse_replicates(raw.get("replicates"), raw.get("shuffle_order"), str(path))
        for i, entry in enumerate(raw["runs"]):
            if not isinstance(entry, dict) or set(entry) - RUN_KEYS or "name" not in entry:
                raise StudyConfigError(f"{path}: run {i} must be a mapping with 'name' and 'args', got {entry!r}")
            name = str(entry["name"])
            if not NAME.match(name):
                raise StudyConfigError(f"{path}: run name {name!r} must be a folder name (letters, digits, _ . + -)")
            if any(r.name == name or r.sweep == name for r in runs):
                raise StudyConfigError(f"{path}: run name {name!r} appears twice")
            args = entry.get("args") or []
            if not isinstance(args, list) or any(a.startswith("--stream.run_dir") for a in map(str, args)):
                raise StudyConfigError(f"{path}: run {name!r}: 'args' is a list of train.py unlearn arguments without --stream.run_dir")
            args = [str(a) for a in args]
            seeds, shuffle = study_seeds, study_shuffle
            if "replicates" in entry or "shuffle_order" in entry:
                value = entry.get("replicates", raw.get("replicates"))
                # A run that opts out (replicates: null) does not inherit the study's shuffle_order.
                inherited = raw.get("shuffle_order") if value is not None else None
                seeds, shuffle = parse_replicates(value, entry.get("shuffle_order", inherited), f"{path}: run {name!r}")
            if seeds is not None:
                seeded = [a for a in (*args, *common) if a.split("=", 1)[0] in SEEDED_OPTIONS]
                if seeded:
                    raise ReplicateSpecError(
                        f"{path}: run {name!r} has replicates, which set its seeds, but its args or common set {seeded}"
                    )
            if "sweep" not in entry:
                runs.append(StudyRun(name, args, seeds, shuffle))
                continue
            for setting in parse_sweep(entry["sweep"], name, [*args, *common], str(path)):
                expanded = setting_name(name, setting)
                if any(r.name == expanded for r in runs):
                    raise SweepSpecError(f"{path}: run name {expanded!r} (a setting of the sweep {name!r}) appears twice")
                runs.append(StudyRun(expanded, [*args, *setting_args(setting)], seeds, shuffle, sweep=name, setting=setting))
        root = Path(raw["root"])
        for folder in (root, *root.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise StudyConfigError(f"{path}: root {root} is or is inside the file {folder}, not a folder")
                break
        study = cls(root=Path(raw["root"]), runs=runs, common=common, report=bool(raw.get("report", True)))
        if check_options:
            check_sweep_options(study, str(path))
        return study

    def run_dir(self, run: StudyRun | str) -> Path:
        """The run folder of ``run`` (without replicates) or of a folder name from :meth:`StudyRun.jobs`."""
        return self.root / (run.name if isinstance(run, StudyRun) else run)


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


def study_results(study: Study) -> list[dict[str, Any]]:
    """One row per run name and request over the study's finished run folders: the mean of its
    replicates with a t interval (one folder: its own values and intervals);
    :func:`lightning_unlearn.replicates.aggregate_rows`."""
    rows: list[dict[str, Any]] = []
    for run in study.runs:
        finished = [study.run_dir(folder) for folder, _ in run.jobs() if is_finished(study.run_dir(folder))]
        if finished:
            rows += aggregate_rows(run.name, [RunFolder(folder).read_results() for folder in finished])
    return rows


def write_study_results(study: Study) -> list[dict[str, Any]]:
    """Write ``root/study_results.json`` and ``.csv`` (:func:`study_results`); returns the rows."""
    from lightning_unlearn.atomic_io import write_json, write_text

    rows = study_results(study)
    write_json(rows, study.root / f"{STUDY_RESULTS}.json")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=AGGREGATE_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(buffer.getvalue(), study.root / f"{STUDY_RESULTS}.csv")
    return rows


def write_study_sweeps(study: Study, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For a study with sweeps: write ``root/sweeps.{csv,json}`` (one row per setting at the
    last request, :mod:`lightning_unlearn.sweeps`) and print each sweep's verdict; returns the rows."""
    settings = [(run.sweep, run.name, run.setting) for run in study.runs if run.sweep is not None]
    if not settings:
        return []
    rows = sweep_rows(settings, results)
    write_sweeps(rows, study.root)
    for sweep, verdict in sweep_verdicts(rows).items():
        print(f"[study] sweep {sweep}: {verdict}", flush=True)
    print(f"[study] sweeps: {study.root / 'sweeps.csv'}", flush=True)
    return rows


def run_study(study: Study, python: str = sys.executable) -> dict[str, Any]:
    """Run every unfinished run folder in turn; returns {folder name: status} and writes
    root/study.json and root/study_results.{csv,json}."""
    study.root.mkdir(parents=True, exist_ok=True)
    statuses: dict[str, Any] = {}
    for run in study.runs:
        for folder, seed_args in run.jobs():
            statuses[folder] = run_job(study, folder, [*run.args, *study.common, *seed_args], python)
    from lightning_unlearn.atomic_io import write_json

    write_json({"runs": statuses}, study.root / "study.json")
    results = write_study_results(study)
    sweeps = write_study_sweeps(study, results)
    # Unfinished runs that evaluated their base are in the report too, marked as unfinished there.
    folders = [folder for run in study.runs for folder, _ in run.jobs()]
    reported = [study.run_dir(f) for f in folders if RunFolder(study.run_dir(f)).read_results()]
    unfinished = [f for f in folders if not statuses[f].get("finished")]
    if unfinished:
        print("[study] unfinished: " + ", ".join(f"{f} ({statuses[f]['requests']})" for f in unfinished), flush=True)
    if study.report and reported:
        from lightning_unlearn.report import write_report

        write_report([str(d) for d in reported], study.root / "report", title=f"Study {study.root.name}",
                     sweeps=sweeps or None)
        print(f"[study] report: {study.root / 'report' / 'report.html'}", flush=True)
    return statuses


def run_job(study: Study, folder: str, args: list[str], python: str) -> dict[str, Any]:
    """Run one run folder's stream unless it is finished; its status."""
    run_dir = study.run_dir(folder)
    if is_finished(run_dir):
        status = {"status": "skipped (finished)", **progress(run_dir)}
        print(f"[study] {folder}: finished already, skipped ({status['requests']})", flush=True)
        return status
    # The package's module, not the checkout's train.py: a wheel install has no checkout. It
    # runs in this folder, where the root and the study's paths are; a repository-relative
    # config (configs/tinyworld/...) that is not here resolves to the shipped one. The seed's
    # arguments come last, after the common ones, so a replicate's seed wins.
    command = [python, "-m", "lightning_unlearn", "unlearn", *args, f"--stream.run_dir={run_dir}"]
    print(f"[study] {folder}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    code = subprocess.call(command)
    seconds = round(time.perf_counter() - started, 1)
    status = {"status": "finished" if code == 0 else f"failed (exit {code})", "seconds": seconds, **progress(run_dir)}
    print(f"[study] {folder}: {status['status']} in {seconds:.0f}s ({status['requests']})", flush=True)
    return status


def main(args: list[str]) -> None:
    """``train.py study --config STUDY.yaml``."""
    parser = ArgumentParser(prog="train.py study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True,
                        help="the study YAML (root, common, report, replicates, shuffle_order, runs)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only these run names (a sweep's name: all its settings)")
    parser.add_argument("--extra", action="append", default=[], metavar="ARG",
                        help="one more train.py unlearn argument for every run (after the study's own); "
                             "repeat it for several, e.g. --extra=--stream.evaluate_every=4")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    ns = parser.parse_args(args)
    study = Study.load(resolve_config(ns.config))
    study.common = [*study.common, *ns.extra]
    study.report = study.report and not ns.no_report
    swept = {option for run in study.runs for option in run.setting}
    clash = [a for a in ns.extra if a.split("=", 1)[0] in swept]
    if clash:
        raise SweepSpecError(f"--extra {clash} sets an option a sweep of {ns.config} sets")
    if ns.only is not None:
        # A sweep's name selects all its settings.
        unknown = set(ns.only) - {r.name for r in study.runs} - {r.sweep for r in study.runs}
        if unknown:
            raise StudyConfigError(f"--only names unknown runs {sorted(unknown)}")
        study.runs = [r for r in study.runs if r.name in ns.only or r.sweep in ns.only]
    statuses = run_study(study)
    failed = [n for n, s in statuses.items() if s["status"].startswith("failed")]
    if failed:
        raise StudyRunsFailedError(
            "study runs failed: " + ", ".join(f"{n} ({statuses[n]['status']})" for n in failed)
            + "; their errors are above; re-run the same command to retry them (finished runs are skipped)"
        )
