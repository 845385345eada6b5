"""Recipe of the tiny world's classifier (``TinyWorldClassifier``): cross-entropy on both heads.

``python train.py pretrain --config configs/tinyworld/pretrain_classifier.yaml``. Each
validation exports the weights and a JSON card (hyperparameters, data seed, steps, held-out
accuracy) to ``export_path``, atomically.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from lightning_unlearn.atomic_io import save_weights, write_json
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.pretraining.model_card import card_hyperparameters
from lightning_unlearn.tinyworld.classifier import DEFAULT_CLASSIFIER_PATH, TinyWorldClassifier
from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES


def degrade(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random noise and blur, so the classifier tolerates a generator's imperfections."""
    b = images.shape[0]
    sigma = torch.rand(b, 1, 1, 1, generator=generator) * 0.15
    noisy = images + sigma * torch.randn(images.shape, generator=generator)
    blur = F.avg_pool2d(F.pad(noisy, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    use_blur = (torch.rand(b, 1, 1, 1, generator=generator) < 0.3).float()
    return (use_blur * blur + (1 - use_blur) * noisy).clamp(-1, 1)


class ClassifierPretraining(LightningModule):
    """Recipe for the tiny-world classifier: cross-entropy on both heads, AdamW, cosine decay."""

    def __init__(self, lr: float = 2e-3, weight_decay: float = 1e-4, export_path: str = str(DEFAULT_CLASSIFIER_PATH)) -> None:
        """
        Args:
            lr: peak learning rate.
            weight_decay: AdamW weight decay.
            export_path: where the trained weights (safetensors) and card (.json) are written
                (not recorded in the card: it is a path on the training machine).
        """
        super().__init__()
        self.save_hyperparameters()
        self.classifier = TinyWorldClassifier()
        self._started = time.time()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        style_logits, object_logits = self.classifier(degrade(batch["image"]))
        loss = F.cross_entropy(style_logits, batch["style"]) + F.cross_entropy(object_logits, batch["object"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        style_logits, object_logits = self.classifier(batch["image"])
        self.log("val/style_acc", (style_logits.argmax(1) == batch["style"]).float().mean(), prog_bar=True)
        self.log("val/object_acc", (object_logits.argmax(1) == batch["object"]).float().mean(), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        path = Path(self.hparams.export_path)
        save_weights(self.classifier.state_dict(), path)
        write_json(
            {
                "model": "TinyWorldClassifier",
                "styles": list(STYLES),
                "objects": list(OBJECTS),
                "recipe": "python train.py pretrain --config configs/tinyworld/pretrain_classifier.yaml",
                "hyperparameters": card_hyperparameters(self.hparams),
                "data_seed": self.trainer.datamodule.seed,
                "batch_size": self.trainer.datamodule.batch_size,
                "steps": self.global_step,
                "train_minutes": round((time.time() - self._started) / 60, 1),
                "heldout_accuracy": metrics,
            },
            path.with_suffix(".json"),
        )

    def on_train_start(self) -> None:
        # A one-cycle schedule's length and peak are fixed when it is built, and a resume restores
        # them (and the weight decay) from the checkpoint: a resume that asks for others would
        # silently train with the checkpoint's, so it is refused before its first step.
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            group = scheduler.optimizer.param_groups[0]
            saved = {"--trainer.max_steps": scheduler.total_steps, "--model.init_args.lr": group["max_lr"],
                     "--model.init_args.weight_decay": group["weight_decay"]}
            asked = {"--trainer.max_steps": max(1, self.trainer.max_steps), "--model.init_args.lr": self.hparams.lr,
                     "--model.init_args.weight_decay": self.hparams.weight_decay}
            differing = [f"{k} {saved[k]} (asked {asked[k]})" for k in saved if saved[k] != asked[k]]
            if differing:
                raise SettingsError(
                    f"the classifier's checkpoint was trained on a one-cycle schedule with {', '.join(differing)}, "
                    "which a resume cannot change: resume with the checkpoint's settings, or train from the start"
                )

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, self.trainer.max_steps)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=total, pct_start=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
