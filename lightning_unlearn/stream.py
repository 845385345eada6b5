"""The stream: serve unlearning requests one after another, evaluating after each.

``python train.py unlearn --config configs/tinyworld/esd_styles_sequential.yaml``

For request k the runner moves the datamodule to k, lets the module freeze its reference and
prepare the method, trains ``steps_per_request`` optimizer steps on the one Trainer (so the
user's callbacks and logger persist across requests), then writes into the run folder::

    requests/00-base/{metrics.json, grid.png}
    requests/NN-<concept>/{weights.safetensors, metrics.json, grid.png}
    ledger.json  results.csv  results.json  tensorboard/

Every file is written atomically; ``ledger.json`` says which requests are complete (with the
weights' sha256), and re-running the same command continues after the last complete one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from callbacks.base import request_callbacks
from datamodules.concept_stream import ConceptStreamDataModule
from lightning_unlearn.atomic_io import file_sha256, load_weights, save_weights, write_json, write_png, write_text
from lightning_unlearn.backbone import TinyWorldBackbone
from lightning_unlearn.evaluation import ClipZeroShotClassifier, EvaluationSettings, Evaluator, VocabularySubset, score
from lightning_unlearn.requests import Request
from lightning_unlearn.unlearning_module import UnlearningModule

RESULT_COLUMNS = (
    "request", "concept", "kind", "UA", "UA_latest", "IRA", "CRA", "style_acc", "object_acc",
    "train_steps", "cumulative_steps", "train_seconds", "eval_seconds",
)


class LedgerMismatchError(RuntimeError):
    """A run folder's files do not match its ledger (edited, truncated, or another run's)."""


@dataclass
class StreamSettings:
    """Where a stream writes and how it evaluates."""

    run_dir: str = "runs/stream"
    """Run folder (created; re-running on it resumes)."""
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    """How every checkpoint is evaluated."""


class StreamRunner:
    """Drives one Trainer through every request of a ConceptStreamDataModule."""

    def __init__(self, trainer: Trainer, module: UnlearningModule, data: ConceptStreamDataModule, settings: StreamSettings) -> None:
        self.trainer, self.module, self.data, self.settings = trainer, module, data, settings
        self.run_dir = Path(settings.run_dir)
        self.ledger_path = self.run_dir / "ledger.json"
        self.domains = {r.kind for r in data.requests}

    # -- files ---------------------------------------------------------------------------------
    def request_dir(self, index: int, request: Request | None) -> Path:
        """``requests/00-base`` for the base model, ``requests/NN-<concept>`` for request NN."""
        name = "00-base" if request is None else f"{index + 1:02d}-{request.slug}"
        return self.run_dir / "requests" / name

    def load_ledger(self) -> dict[str, Any]:
        if not self.ledger_path.exists():
            return {"stream": [vars(r) for r in self.data.requests], "completed": []}
        ledger = json.loads(self.ledger_path.read_text())
        configured = [vars(r) for r in self.data.requests]
        done = [dict(concept=e["concept"], kind=e["kind"]) for e in ledger["completed"]]
        if configured[: len(done)] != done:
            raise LedgerMismatchError(
                f"{self.run_dir} was run with the requests {[d['concept'] for d in done]} first; "
                f"this config asks for {[c['concept'] for c in configured]}: use another run_dir"
            )
        return ledger

    def results(self) -> list[dict[str, Any]]:
        path = self.run_dir / "results.json"
        return json.loads(path.read_text()) if path.exists() else []

    def write_results(self, rows: list[dict[str, Any]]) -> None:
        write_json(rows, self.run_dir / "results.json")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in row.items()})
        write_text(buf.getvalue(), self.run_dir / "results.csv")

    # -- evaluation ----------------------------------------------------------------------------
    def build_evaluator(self) -> Evaluator:
        settings = self.settings.evaluation
        vocabulary = self.data.vocabulary
        if settings.classifier:
            classifier = ClipZeroShotClassifier(settings.classifier, vocabulary)
        elif isinstance(self.module.backbone, TinyWorldBackbone):
            from lightning_unlearn.tinyworld.classifier import TinyWorldClassifier
            from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES

            classifier = VocabularySubset(TinyWorldClassifier.load(), list(STYLES), list(OBJECTS), vocabulary)
        else:
            raise ValueError(
                "a real model needs a classifier to score its images: set "
                "--stream.evaluation.classifier=PATH to a local CLIP folder"
            )
        return Evaluator(self.module.backbone, classifier.to(self.module.device), vocabulary, settings)

    def evaluate(self, evaluator: Evaluator, erased: list[Request], out_dir: Path, step: int) -> tuple[dict, float]:
        started = time.perf_counter()
        # Sample under the trainer's precision (autocast for bf16-mixed), as training runs.
        with self.trainer.precision_plugin.forward_context():
            images = evaluator.sample(self.module.unet)
        metrics = score(evaluator.counts(images), self.data.vocabulary, erased, self.domains)
        seconds = time.perf_counter() - started
        grid = evaluator.grid(images)
        write_png(grid, out_dir / "grid.png")
        write_json(metrics, out_dir / "metrics.json")
        logger = self.trainer.logger
        if logger is not None and hasattr(logger, "experiment") and hasattr(logger.experiment, "add_scalar"):
            for key in ("UA", "UA_latest", "IRA", "CRA", "style_acc", "object_acc"):
                if not math.isnan(metrics[key]):
                    logger.experiment.add_scalar(f"stream/{key}", metrics[key], step)
            logger.experiment.add_image("stream/grid", grid, step, dataformats="HWC")
            logger.experiment.flush()
        return metrics, seconds

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        """Serve every request not yet complete; returns the results table."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.module.run_dir = self.run_dir
        # Work outside fit (base evaluation, x_t banks) runs where training will run.
        self.module.to(self.trainer.strategy.root_device)
        self.module.vocabulary = self.data.vocabulary
        ledger = self.load_ledger()
        rows = self.results()
        completed = len(ledger["completed"])
        if completed == len(self.data.requests):
            rank_zero_info(f"{self.run_dir}: all {completed} requests are already complete; nothing to do")
            return rows
        if completed:
            last = ledger["completed"][-1]
            weights = self.run_dir / last["weights"]
            if file_sha256(weights) != last["sha256"]:
                raise LedgerMismatchError(f"{weights} does not match the sha256 in {self.ledger_path}")
            self.module.load_trainable_state(load_weights(weights), source=weights)
            rank_zero_info(f"resuming {self.run_dir} after request {completed}: {last['concept']}")

        # Request callbacks read the vocabulary and the served requests from trainer.datamodule in
        # on_request_start, which for the first request comes before trainer.fit attaches it.
        self.trainer.datamodule = self.data
        evaluator = self.build_evaluator() if self.trainer.is_global_zero else None
        if "base" not in ledger and evaluator is not None:
            metrics, seconds = self.evaluate(evaluator, [], self.request_dir(0, None), step=0)
            rows = [self._row(0, None, metrics, 0, 0, 0.0, seconds)]
            ledger["base"] = {"metrics": str((self.request_dir(0, None) / "metrics.json").relative_to(self.run_dir))}
            self.write_results(rows)
            write_json(ledger, self.ledger_path)

        for index in range(completed, len(self.data.requests)):
            request = self.data.requests[index]
            rank_zero_info(f"request {index + 1}/{len(self.data.requests)}: unlearn {request.kind} {request.concept!r}")
            seed_everything(self.module.hparams.seed + index, workers=True, verbose=False)
            self.data.set_position(index)
            started = time.perf_counter()
            # Lightning's teardown moves the module to the CPU after every fit: bring it back
            # before the reference copy and the method's per-request data are built.
            self.module.to(self.trainer.strategy.root_device)
            with self.trainer.precision_plugin.forward_context():
                self.module.begin_request(index, request, self.data.erase_captions(request))
            for callback in request_callbacks(self.trainer):
                callback.on_request_start(self.trainer, self.module)
            steps_before = self.trainer.global_step
            self.trainer.fit_loop.epoch_loop.max_steps = steps_before + self.data.steps_per_request
            self.trainer.fit(self.module, datamodule=self.data)
            if self.trainer.interrupted:
                rank_zero_info("interrupted: the request was not committed; re-run the command to resume")
                return rows
            for callback in request_callbacks(self.trainer):
                callback.on_request_end(self.trainer, self.module)
            steps = self.trainer.global_step - steps_before
            train_seconds = time.perf_counter() - started
            if evaluator is not None:
                self.module.to(self.trainer.strategy.root_device)
                out = self.request_dir(index, request)
                sha = save_weights(self.module.trainable_state(), out / "weights.safetensors")
                write_json(
                    {"request": vars(request), "index": index + 1, "trainable": self.module.trainable,
                     "keys": len(self.module.trainable_keys), "sha256": sha},
                    out / "manifest.json",
                )
                metrics, eval_seconds = self.evaluate(evaluator, self.data.requests[: index + 1], out, step=index + 1)
                cumulative = (rows[-1]["cumulative_steps"] if rows else 0) + steps
                rows.append(self._row(index + 1, request, metrics, steps, cumulative, train_seconds, eval_seconds))
                self.write_results(rows)
                ledger["completed"].append(
                    {**vars(request), "index": index + 1, "weights": str((out / "weights.safetensors").relative_to(self.run_dir)),
                     "sha256": sha, "metrics": str((out / "metrics.json").relative_to(self.run_dir))}
                )
                write_json(ledger, self.ledger_path)
                rank_zero_info(
                    "  UA {UA:.1f}  UA_latest {UA_latest:.1f}  IRA {IRA:.1f}  CRA {CRA:.1f}  "
                    "({train_steps} steps, {train_seconds:.0f}s train, {eval_seconds:.0f}s eval)".format(**rows[-1])
                )
            self.trainer.strategy.barrier()
        return rows

    @staticmethod
    def _row(index: int, request: Request | None, metrics: dict, steps: int, cumulative: int,
             train_seconds: float, eval_seconds: float) -> dict[str, Any]:
        return {
            "request": index,
            "concept": "base" if request is None else request.concept,
            "kind": "" if request is None else request.kind,
            **{k: metrics[k] for k in ("UA", "UA_latest", "IRA", "CRA", "style_acc", "object_acc")},
            "train_steps": steps,
            "cumulative_steps": cumulative,
            "train_seconds": round(train_seconds, 2),
            "eval_seconds": round(eval_seconds, 2),
        }


class UnlearnCLI(LightningCLI):
    """LightningCLI for streams: ``--model`` (UnlearningModule), ``--data``
    (ConceptStreamDataModule), ``--trainer`` (callbacks stack with ``--trainer.callbacks+=``),
    and ``--stream`` (run folder, evaluation)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(StreamSettings, "stream")

    def before_instantiate_classes(self) -> None:
        cfg = self.config
        run_dir = cfg.stream.run_dir
        if cfg.trainer.get("default_root_dir") is None:
            cfg.trainer.default_root_dir = run_dir
        if cfg.trainer.get("logger") in (None, True):
            cfg.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=run_dir, name="tensorboard", version=""),
            )


def unlearn(args: list[str]) -> list[dict[str, Any]]:
    """Parse ``args`` as the ``unlearn`` subcommand and run the stream."""
    cli = UnlearnCLI(
        UnlearningModule,
        ConceptStreamDataModule,
        run=False,
        args=args,
        trainer_defaults={
            "enable_checkpointing": False, "num_sanity_val_steps": 0, "limit_val_batches": 0,
            "enable_model_summary": False,
        },
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
    )
    settings = StreamSettings(
        run_dir=cli.config.stream.run_dir,
        evaluation=EvaluationSettings(**vars(cli.config.stream.evaluation)),
    )
    Path(settings.run_dir).mkdir(parents=True, exist_ok=True)
    write_json(asdict(settings), Path(settings.run_dir) / "stream_settings.json")
    return StreamRunner(cli.trainer, cli.model, cli.datamodule, settings).run()
