"""Replay: keep the model's noise predictions on retained prompts equal to the frozen model's
(from the paper's reference code).

Every optimizer step also draws ``batch`` prompts from a replay bank and adds the gradient of

    weight * mean( (eps_theta(x_t, t, c) - eps_ref(x_t, t, c))^2 )

where eps_ref is ``pl_module.reference_unet`` (the copy frozen at the request's start) and the
mean runs over the batch and the prediction's elements.

- The bank: captions of the concepts of the request's vocabulary that are neither being erased
  nor erased already (``pl_module.erasing`` / ``pl_module.already_erased``), written with the
  vocabulary's templates: each retained concept alone (``concepts``), every retained style x
  retained object caption (``pairs``), or both (default). Rebuilt at every request start.
- x_t: a standard-normal latent at a timestep t drawn uniformly from the training schedule's
  range. That is exactly the input at the start of sampling and costs no sampling at all: one
  forward of the frozen model (no grad) and one of the trained model per step. It is off the
  data manifold for small t; drawing x_0 from the frozen model first would fix that at the cost
  of a sampling run per draw (not done here; on CPU it would dominate a step).
- Draws are seeded per sample from the request's seed and the trainer's global step, so a run,
  a resumed run and any DDP split draw the same prompts, noise and timesteps.
- The gradient is taken with ``torch.autograd.grad`` over the trainable parameters in
  ``on_before_optimizer_step`` and added to ``p.grad`` (the loss gradients are already
  accumulated, synced and unscaled there): its own forward/backward, so the unlearning loss's
  backward, the DDP reducer and the AMP scaler are untouched. The forward runs under the
  trainer's precision context (autocast for bf16/fp16 mixed precision).
- DDP: the batch's samples are split over the ranks (sample i on rank i mod world) and the added
  gradient is all-reduced (sum of each rank's share of the mean), so every rank adds the same
  gradient, equal to one process's. Only the 1-process path is tested here.
- Tensors frozen for the request (``requires_grad=False``, SelectiveFineTuning) get nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from lightning_unlearn.callbacks.base import RequestCallback
from lightning_unlearn.checks import at_least, non_negative
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.requests import ConceptVocabulary, Request
from lightning_unlearn.sampling import TextCondition, per_sample_randint, predict_noise, seeded_noise

REPLAY_SEED_OFFSET = 5_555_555
"""Keeps the replay draws' seeds apart from the training samples' and SelFT's."""
TIMESTEP_SEED_OFFSET = 104_729
"""Separates a sample's timestep draw from its prompt draw."""
PROMPTS = ("both", "concepts", "pairs")


def replay_bank(vocabulary: ConceptVocabulary, excluded: list[Request], prompts: str = "both") -> list[str]:
    """Captions of the vocabulary's concepts not in ``excluded``, in vocabulary order:
    each concept alone (``concepts``), each retained style x object caption (``pairs``), or both."""
    gone = {(r.concept, r.kind) for r in excluded}
    styles = [s for s in vocabulary.styles if (s, "style") not in gone]
    objects = [o for o in vocabulary.objects if (o, "object") not in gone]
    templates = vocabulary.templates
    bank: list[str] = []
    if prompts in ("both", "concepts"):
        bank += [templates.concept_prompt(s, "style") for s in styles]
        bank += [templates.concept_prompt(o, "object") for o in objects]
    if prompts in ("both", "pairs"):
        bank += [templates.caption(s, o) for s in styles for o in objects]
    return bank


class Replay(RequestCallback):
    """Retention loss: MSE between the trained and the frozen model's predictions on retained prompts."""

    # Its retention loss is on the model's predictions; with LoRA its gradient reaches the factors.
    supports_lora = True
    acts_on_training = "it adds a retention loss on replayed prompts to the training steps"

    def __init__(
        self,
        weight: float = 1.0,
        batch: int = 2,
        prompts: Literal["both", "concepts", "pairs"] = "both",
        name: str | None = None,
    ) -> None:
        """
        Args:
            weight: multiplies the replay MSE. Default 1.0: the MSE is on the scale of the ESD and
                Concept Ablation losses (both MSEs of noise predictions), so 1 weighs retention
                like erasure (the reference notes give no value). It is a mean over prediction
                elements, not over parameters: it needs no scaling with the model's size.
            batch: retained prompts replayed per optimizer step (default 2: one extra forward of
                each UNet on two latents, cheap on CPU).
            prompts: the bank: ``concepts`` (each retained concept alone), ``pairs`` (every
                retained style x retained object caption) or ``both``.
            name: distinguishes two instances of this class in checkpoints and logs.
        """
        super().__init__(name=name)
        prefix = "lightning_unlearn.callbacks.replay.Replay init_args"
        non_negative(weight, f"{prefix}.weight")
        at_least(batch, 1, f"{prefix}.batch")
        if prompts not in PROMPTS:
            raise SettingsError(f"{prefix}.prompts must be one of {list(PROMPTS)}, got {prompts!r}")
        self.weight = float(weight)
        self.batch = int(batch)
        self.prompts = prompts
        self.bank: list[str] = []
        self.record: dict[str, Any] = {}
        self._retained: dict[str, int] = {}
        self._params: list[torch.nn.Parameter] = []
        self._loss_sum: torch.Tensor | None = None
        self._first: torch.Tensor | None = None
        self._steps = 0
        self.last_loss: torch.Tensor | None = None
        """The unweighted replay MSE at the last optimizer step (a tensor)."""

    @property
    def state_key(self) -> str:
        if self.name:
            return super().state_key
        return self._generate_state_key(weight=self.weight, batch=self.batch, prompts=self.prompts)

    @property
    def log_prefix(self) -> str:
        return self.name or "replay"

    def settings(self) -> dict[str, Any]:
        return {"weight": self.weight, "batch": self.batch, "prompts": self.prompts}

    @classmethod
    def describe(cls, settings: dict[str, Any]) -> str:
        """``replay w=1, 2 prompts/step (concepts and pairs)``."""
        bank = {"both": "concepts and pairs", "concepts": "concepts", "pairs": "style-object pairs"}
        return (f"replay w={float(settings['weight']):g}, {int(settings['batch'])} prompts/step "
                f"({bank.get(settings['prompts'], settings['prompts'])})")

    # -- per request ---------------------------------------------------------------------------
    def on_request_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        vocabulary = getattr(pl_module, "vocabulary", None)
        if vocabulary is None and trainer is not None:
            vocabulary = getattr(getattr(trainer, "datamodule", None), "vocabulary", None)
        if vocabulary is None:
            raise SettingsError("Replay needs the stream's concept vocabulary (pl_module.vocabulary or trainer.datamodule.vocabulary)")
        excluded = [*pl_module.erasing, *pl_module.already_erased]
        self.bank = replay_bank(vocabulary, excluded, self.prompts)
        gone = {(r.concept, r.kind) for r in excluded}
        self._retained = {
            "styles": sum((s, "style") not in gone for s in vocabulary.styles),
            "objects": sum((o, "object") not in gone for o in vocabulary.objects),
        }
        if not self.bank:
            rank_zero_warn("Replay: every concept of the vocabulary is erased; nothing to replay this request")
        self._loss_sum, self._first, self._steps, self.record = None, None, 0, {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.bank and pl_module.plan is not None and not self.record:
            self.on_request_start(trainer, pl_module)
        params = dict(pl_module.unet.named_parameters())
        self._params = [params[k] for k in pl_module.trainable_keys]
        device = self._params[0].device if self._params else torch.device("cpu")
        if self._loss_sum is not None:  # restored from a mid-request checkpoint
            self._loss_sum = self._loss_sum.to(device)
            self._first = None if self._first is None else self._first.to(device)

    # -- per optimizer step --------------------------------------------------------------------
    def replay_draw(self, pl_module: LightningModule, step: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """(captions, x_t [B, C, H, W] on the CPU, t [B]) of one step's draw; depends only on the
        request's seed and ``step``."""
        base = REPLAY_SEED_OFFSET + pl_module.request_seed * 1_000_003 + step * self.batch
        seeds = torch.arange(base, base + self.batch)
        index = per_sample_randint(seeds, len(self.bank))
        timesteps = pl_module.backbone.objective.num_train_timesteps
        t = per_sample_randint(seeds + TIMESTEP_SEED_OFFSET, timesteps)
        noise = seeded_noise(seeds, pl_module.backbone.latent_shape)
        return [self.bank[int(i)] for i in index], noise, t

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if not self.bank or not self._params or pl_module.plan is None:
            return
        params = [p for p in self._params if p.requires_grad]
        if not params:
            return
        world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_available() and dist.is_initialized() else (1, 0)
        captions, noise, t = self.replay_draw(pl_module, int(trainer.global_step))
        mine = [i for i in range(self.batch) if i % world == rank]
        device = params[0].device
        precision = trainer.precision_plugin.forward_context() if trainer is not None else contextlib.nullcontext()
        if mine:
            x_t, t_mine = noise[mine].to(device), t[mine].to(device)
            with precision:
                cond = TextCondition.from_captions(pl_module.backbone, [captions[i] for i in mine])
                with torch.no_grad():
                    target = predict_noise(pl_module.reference_unet, x_t, t_mine, cond).float()
                with torch.enable_grad():
                    pred = predict_noise(pl_module.unet, x_t, t_mine, cond).float()
                    # This rank's share of the mean over the *whole* batch: the all-reduce sums shares.
                    share = (pred - target).square().sum() / (self.batch * pred[0].numel())
                    grads = torch.autograd.grad(share * self.weight, params, allow_unused=True)
            loss = share.detach()
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        else:
            loss = torch.zeros((), device=device)
            grads = [torch.zeros_like(p) for p in params]
        with torch.no_grad():
            if world > 1:
                flat = torch.cat([g.flatten().float() for g in grads] + [loss.float().reshape(1)])
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                loss = flat[-1]
                grads = [chunk.view_as(p).to(p.dtype) for chunk, p in zip(flat[:-1].split([p.numel() for p in params]), params)]
            for p, g in zip(params, grads):
                if p.grad is None:
                    p.grad = g.to(p.dtype).clone()
                else:
                    p.grad.add_(g.to(p.grad.dtype))
        self.last_loss = loss
        self._first = loss.clone() if self._first is None else self._first
        self._loss_sum = loss.clone() if self._loss_sum is None else self._loss_sum + loss
        self._steps += 1
        pl_module.log(f"{self.log_prefix}/mse", loss, on_step=True, on_epoch=False)

    # -- request end ---------------------------------------------------------------------------
    def on_request_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        steps = self._steps
        self.record = {
            "weight": self.weight, "batch": self.batch, "prompts": self.prompts,
            "bank_size": len(self.bank), "retained": dict(self._retained),
            "steps": steps,
            "replay_mse_mean": float(self._loss_sum) / steps if steps and self._loss_sum is not None else None,
            "replay_mse_first": float(self._first) if self._first is not None else None,
            "replay_mse_last": float(self.last_loss) if steps and self.last_loss is not None else None,
            "x_t": "standard-normal latents at uniform timesteps",
        }
        self.bank, self._params = [], []
        self._loss_sum, self._first, self._steps, self.last_loss = None, None, 0, None

    def request_records(self) -> dict[str, dict[str, Any]]:
        return {self.log_prefix: self.record} if self.record else {}

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # The bank is rebuilt from the request at its start; the draws from the global step.
        return {"weight": self.weight, "batch": self.batch, "prompts": self.prompts, "steps": self._steps,
                "loss_sum": None if self._loss_sum is None else self._loss_sum.detach().cpu(),
                "first": None if self._first is None else self._first.detach().cpu()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._steps = int(state_dict.get("steps", 0))
        self._loss_sum = state_dict.get("loss_sum")
        self._first = state_dict.get("first")
