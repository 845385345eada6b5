"""Command line: LightningCLI subclasses behind one ``train.py`` with subcommands.

The same command line is the ``lightning-unlearn`` console script and ``python -m
lightning_unlearn`` (any install, any folder). ``--config`` and ``--trainer.callbacks+=`` take a
file or the name of a shipped config (``tinyworld/esd_styles_sequential``; see
``lightning_unlearn.config_names``).

- ``pretrain``: fit any LightningModule + DataModule from a config (the tiny world's UNet and
  classifier recipes); Lightning's own ``fit`` options apply (``--ckpt_path last`` resumes).
- ``unlearn``: serve a stream of unlearning requests (see ``lightning_unlearn.stream``).
- ``attack``: attack the committed requests of a run folder that have no ``attacks.json`` yet
  (relearning, learned embedding, prompt search; see ``lightning_unlearn.attacks``).
- ``study``: run several streams in turn, each in its own folder, then report on them all
  (see ``lightning_unlearn.study``).
- ``findings``: run what the paper's five findings need (a quick or full profile, resumable) and
  judge each, with intervals: ``findings.md`` and a report (see ``lightning_unlearn.findings``).
- ``report``: compare run folders in one self-contained HTML page and Markdown (see
  ``lightning_unlearn.report``; plain argparse, ``train.py report --help``).
- ``verify``: audit a run folder against its ledger: every recorded file's sha256, the
  ledger's structure, unexpected files (see ``lightning_unlearn.verify``; ``train.py verify --help``).
- ``export``: write a committed request's model as a deployable folder (a diffusers pipeline, or
  the tiny world's UNet folder) with a model card (see ``lightning_unlearn.export``).
- ``score``: a tiny-world UNet's or DiT's validation grid under several noise seeds, pooled with
  Wilson intervals (see ``lightning_unlearn.pretraining.grid_score``; ``train.py score --help``).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from lightning_unlearn.config_names import resolve_config_args
from lightning_unlearn.errors import UnlearnError

SUBCOMMANDS = ("pretrain", "unlearn", "attack", "report", "study", "findings", "verify", "export", "score")


def _quiet() -> None:
    # Nothing in this project may reach for a hub at run time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # jsonargparse >= 4.49 warns about its own deprecations under LightningCLI: noise to users.
    warnings.filterwarnings("ignore", module="jsonargparse")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # We pass the subcommand's args explicitly but keep sys.argv intact: Lightning's DDP
    # launcher re-runs the script from sys.argv in every process (``python <argv[0]> ...``: the
    # console script's wrapper is a Python file; under ``python -m`` it re-runs the module), and
    # each process resolves the config names again, to the same files.
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*IterableDataset.*__len__.*")


def pretrain(args: list[str]) -> None:
    """Fit a pretraining recipe (``--model`` and ``--data`` take class paths)."""
    # Imported here, not at the top: the usage line and the plain subcommands (report, verify)
    # answer without the seconds Lightning (and torch) take to import.
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    class PretrainCLI(LightningCLI):
        """LightningCLI whose config files and command line win over a checkpoint's hparams."""

        def _parse_ckpt_path(self) -> None:
            # Lightning >= 2.5 re-applies the hparams stored in a checkpoint *file* given as
            # --ckpt_path on top of the parsed config, so `--model.init_args.export_dir` or
            # `--model.init_args.lr` on a resume from a path were silently replaced by the old
            # run's values (and with `--ckpt_path last` they were not: two behaviours for one
            # resume). Here the checkpoint restores state (weights, optimizer, step, data
            # position) and the config says what the run is, whichever way it names the file.
            return

    PretrainCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=["fit", *args],
        save_config_kwargs={"overwrite": True},
    )


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``train.py SUBCOMMAND ...`` (``argv``, else ``sys.argv[1:]``: the console script
    calls it without arguments); a named error (:class:`UnlearnError`) becomes one
    ``error: ...`` line and exit status 2 (``LIGHTNING_UNLEARN_DEBUG=1`` keeps the traceback)."""
    try:
        _dispatch(argv)
    except Exception as exc:
        named = named_cause(exc)
        if named is None or os.environ.get("LIGHTNING_UNLEARN_DEBUG"):
            raise
        print(f"error: {named}", file=sys.stderr)
        raise SystemExit(2) from None


def named_cause(exc: BaseException) -> UnlearnError | None:
    """``exc`` if it is a named error, else the named error it was raised from, if any.

    jsonargparse instantiates an ``Optional[...]`` setting (``--model.method``,
    ``--stream.merge``) by trying each type of the union and re-raises a failure as a
    ``ValueError`` listing every attempt, ``from`` the original error: the named error a
    class's ``__init__`` raised is that error's ``__cause__``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, UnlearnError):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def program_name() -> str:
    """How the user started us, for the usage line: the console script, ``-m``, or ``train.py``."""
    started = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if started == "__main__.py":
        return "python -m lightning_unlearn"
    return started if started.startswith("lightning-unlearn") else "train.py"


def _dispatch(argv: list[str] | None) -> None:
    _quiet()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        print(f"usage: {program_name()} {{{','.join(SUBCOMMANDS)}}} --config CONFIG [options]"
              "  (add --help for options)\n"
              "  CONFIG: a YAML file, or a shipped config's name such as tinyworld/esd_styles_sequential")
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, rest = argv[0], argv[1:]
    if command in ("pretrain", "unlearn"):
        # Before LightningCLI sees them: jsonargparse opens --config values as paths.
        rest = resolve_config_args(rest)
    if command == "pretrain":
        pretrain(rest)
    elif command == "study":
        from lightning_unlearn.study import main as study

        study(rest)
    elif command == "findings":
        from lightning_unlearn.findings.cli import main as findings

        findings(rest)
    elif command == "report":
        from lightning_unlearn.report import main as report

        report(rest)
    elif command == "export":
        from lightning_unlearn.export import main as export

        export(rest)
    elif command == "attack":
        from lightning_unlearn.stream import attack

        attack(rest)
    elif command == "verify":
        from lightning_unlearn.verify import main as verify

        verify(rest)
    elif command == "score":
        from lightning_unlearn.pretraining.grid_score import main as score

        score(rest)
    else:
        from lightning_unlearn.stream import unlearn

        unlearn(rest)
