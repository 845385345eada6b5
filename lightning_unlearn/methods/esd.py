"""ESD (Erasing Stable Diffusion): steer eps(x_t, c) towards negatively guided noise.

    L = || eps_theta(x_t, t, c) - sg[ e0 - eta * (ep - e0) ] ||^2,
    e0 = eps_ref(x_t, t, ""),  ep = eps_ref(x_t, t, c),

where x_t lies on the frozen model's guided DDIM trajectory for c, stopped at a random step.

``xt_source``:
- ``online`` (the reference algorithm): every training step re-runs the frozen model from
  fresh noise to a random step.
- ``bank`` (default): the frozen model does not change during a request, so its guided
  trajectories are run once, batched, and every visited (x_t, t) is kept together with e0 and
  ep -- which the sampler computes there anyway for guidance. Training then draws from the
  bank: the same distribution over (noise, step), with one UNet call per sample instead of
  about ``ddim_steps`` guided calls plus two.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from lightning_unlearn.checks import at_least, non_negative
from lightning_unlearn.methods.base import UnlearningMethod
from lightning_unlearn.sampling import TextCondition, ddim_sample, noise_pair, predict_noise

if TYPE_CHECKING:
    from lightning_unlearn.unlearning_module import UnlearningModule


def esd_target(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, negative_guidance: float) -> torch.Tensor:
    """e0 - eta * (ep - e0): the frozen model's noise guided *away* from the concept."""
    return eps_uncond - negative_guidance * (eps_cond - eps_uncond)


def seeded_noise(seeds: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """One standard-normal latent per seed; sample i depends only on seeds[i]."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def per_sample_randint(seeds: torch.Tensor, high: int) -> torch.Tensor:
    """One integer in [0, high) per seed; entry i depends only on seeds[i]."""
    return torch.cat([torch.randint(0, high, (1,), generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def check_esd_settings(negative_guidance: float, ddim_steps: int, start_guidance: float,
                       bank_trajectories: int, bank_batch: int) -> None:
    """A :class:`SettingsError` for an ESD option that cannot be served (eta < 0 would
    strengthen the concept instead of erasing it)."""
    option = "--model.method.init_args."
    non_negative(negative_guidance, option + "negative_guidance")
    at_least(ddim_steps, 1, option + "ddim_steps")
    non_negative(start_guidance, option + "start_guidance")
    at_least(bank_trajectories, 1, option + "bank_trajectories")
    at_least(bank_batch, 1, option + "bank_batch")


class ESD(UnlearningMethod):
    """ESD loss with negative guidance ``eta`` on x_t from the frozen model's trajectories."""

    def __init__(
        self,
        negative_guidance: float = 1.0,
        ddim_steps: int = 50,
        start_guidance: float = 3.0,
        xt_source: Literal["online", "bank"] = "bank",
        bank_trajectories: int = 64,
        bank_batch: int = 64,
    ) -> None:
        """
        Args:
            negative_guidance: eta, how far the target is pushed away from the concept (1-2).
            ddim_steps: DDIM steps of the frozen model's trajectory x_t is drawn from.
            start_guidance: classifier-free guidance of that trajectory.
            xt_source: ``bank`` (trajectories run once per request) or ``online`` (per step).
            bank_trajectories: trajectories in the bank (each contributes ``ddim_steps`` x_t).
            bank_batch: trajectories sampled together while building the bank.
        """
        if xt_source not in ("online", "bank"):
            raise ValueError(f"xt_source must be 'online' or 'bank', got {xt_source!r}")
        check_esd_settings(negative_guidance, ddim_steps, start_guidance, bank_trajectories, bank_batch)
        self.negative_guidance = negative_guidance
        self.ddim_steps = ddim_steps
        self.start_guidance = start_guidance
        self.xt_source = xt_source
        self.bank_trajectories = bank_trajectories
        self.bank_batch = bank_batch
        self.bank: dict[str, torch.Tensor] | None = None
        self.bank_captions: list[str] = []

    # -- per request ---------------------------------------------------------------------------
    def prepare_request(self, module: UnlearningModule, captions: list[str]) -> None:
        self.bank = None
        if self.xt_source == "bank":
            self.bank = self.build_bank(module, captions, seed=module.request_seed)

    @torch.no_grad()
    def build_bank(self, module: UnlearningModule, captions: list[str], seed: int) -> dict[str, torch.Tensor]:
        """Run the frozen model's guided trajectories once; keep every (x_t, t, target)."""
        backbone, ref = module.backbone, module.reference_unet
        self.bank_captions = list(captions)
        uncond = TextCondition.from_captions(backbone, [""])
        xs, ts, targets, which = [], [], [], []
        for start in range(0, self.bank_trajectories, self.bank_batch):
            idx = list(range(start, min(start + self.bank_batch, self.bank_trajectories)))
            chunk_captions = [captions[i % len(captions)] for i in idx]
            cond = TextCondition.from_captions(backbone, chunk_captions)
            noise = seeded_noise(torch.tensor([seed * 100_003 + i for i in idx]), backbone.latent_shape)
            caption_idx = torch.tensor([i % len(captions) for i in idx])

            def record(step: int, latents, t, eps_uncond, eps_cond) -> None:
                xs.append(latents.cpu())
                ts.append(torch.full((len(idx),), int(t)))
                targets.append(esd_target(eps_uncond, eps_cond, self.negative_guidance).cpu())
                which.append(caption_idx)

            ddim_sample(backbone, ref, noise.to(module.device), cond, uncond, self.ddim_steps, self.start_guidance,
                        record=record)
        return {"x": torch.cat(xs), "t": torch.cat(ts), "target": torch.cat(targets), "caption": torch.cat(which)}

    # -- per step ------------------------------------------------------------------------------
    def loss(self, module: UnlearningModule, batch: dict[str, Any]) -> torch.Tensor:
        if self.xt_source == "bank":
            x_t, t, target, captions = self._draw_from_bank(batch["seed"], module.device)
        else:
            x_t, t, target, captions = self._run_online(module, batch)
        cond = TextCondition.from_captions(module.backbone, captions)
        pred = predict_noise(module.unet, x_t, t, cond)
        return F.mse_loss(pred.float(), target.float())

    def _draw_from_bank(self, seeds: torch.Tensor, device: torch.device):
        assert self.bank is not None, "prepare_request builds the bank before training"
        # Draw i depends only on seeds[i], so how a global batch is split (DDP ranks, batch
        # size) never changes which bank entries it trains on.
        idx = per_sample_randint(seeds, self.bank["x"].shape[0])
        captions = [self.bank_captions[int(i)] for i in self.bank["caption"][idx]]
        return self.bank["x"][idx].to(device), self.bank["t"][idx].to(device), self.bank["target"][idx].to(device), captions

    @torch.no_grad()
    def _run_online(self, module: UnlearningModule, batch: dict[str, Any]):
        backbone, ref = module.backbone, module.reference_unet
        seeds: torch.Tensor = batch["seed"]
        captions: list[str] = batch["caption"]
        gen = torch.Generator().manual_seed(int(seeds[0]))
        stop = int(torch.randint(0, self.ddim_steps, (1,), generator=gen))
        cond = TextCondition.from_captions(backbone, captions)
        uncond = TextCondition.from_captions(backbone, [""])
        noise = seeded_noise(seeds, backbone.latent_shape).to(module.device)
        x_t, t = ddim_sample(backbone, ref, noise, cond, uncond, self.ddim_steps, self.start_guidance, stop_after=stop)
        eps_uncond, eps_cond = noise_pair(ref, x_t, t, cond, uncond)
        return x_t, t.expand(len(seeds)), esd_target(eps_uncond, eps_cond, self.negative_guidance), captions
