"""ESD (Erasing Stable Diffusion): steer eps(x_t, c) towards negatively guided noise.

    L = || eps_theta(x_t, t, c) - sg[ e0 - eta * (ep - e0) ] ||^2,
    e0 = eps_ref(x_t, t, ""),  ep = eps_ref(x_t, t, c),

where x_t lies on a guided DDIM trajectory for c (guidance ``start_guidance``), stopped at a
random step. The target is linear in the network's output, so on a flow-matching backbone the
same loss steers the predicted velocity towards the negatively guided velocity
v0 - eta (vp - v0), and the trajectory is the objective's sampler (flow-matching Euler; "DDIM"
below means that sampler). ``xt_source`` says whose trajectory and which t:

- ``bank`` (default): the frozen model does not change during a request, so its guided
  trajectories are run once, batched, and every visited (x_t, t) is kept together with e0 and
  ep -- which the sampler computes there anyway for guidance. Training then draws from the
  bank: the same distribution over (noise, step) as ``online``, with one UNet call per sample
  instead of about ``ddim_steps`` guided calls plus two.
- ``online`` (frozen-model online sampling): every training step re-runs the *frozen* model
  from fresh noise to one random stop step per batch; t is x_t's own grid timestep.
- ``reference`` (the ESD reference code, ``train-esd.py``): every training step samples x_t
  with the model *being trained* (under no_grad) and makes all three predictions at a DDPM
  timestep drawn from the range of the stop step, not at x_t's own timestep. Per sample
  (batch size 1 in the reference), with N = ``ddim_steps``, T = the schedule's training
  timesteps and tau_0 > tau_1 > ... > tau_{N-1} the N-step DDIM grid:

  * t_enc ~ U{0, ..., N-1};
    t_ddpm ~ U[round(t_enc / N * T), round((t_enc + 1) / N * T))  (DDPM range of t_enc);
  * x_t: guided DDIM from pure noise, which the reference's CompVis sampler places at tau_1
    (it is called with ``t_start=-1``, which drops the grid's noisiest step tau_0), taking
    N - max(t_enc, 1) steps (its loop breaks once the step index reaches t_enc), so x_t sits
    at tau_{N - t_enc + 1} for t_enc >= 2 and is fully denoised for t_enc in {0, 1};
  * e0, ep: the frozen copy at (x_t, t_ddpm); the loss: the trained model at (x_t, t_ddpm, c).

  On Stable Diffusion (N = 50, tau_j = 981 - 20 j) x_t sits at 20 t_enc - 39 while t_ddpm
  lies in [20 t_enc, 20 t_enc + 20): 39-58 timesteps noisier than x_t; on the tiny world's
  default (N = 25, tau_j = 960 - 40 j) at 40 t_enc - 80 against [40 t_enc, 40 t_enc + 40).
  Unlike the reference, each sample of a batch draws its own (noise, t_enc, t_ddpm) from its
  own seed, so how a batch is split across DDP ranks does not change the draws, and a batch
  is sampled together, finished samples leaving it as their stop step is reached.

  ``bank`` and ``online`` are approximations of it: ``benchmarks/esd_bank_vs_reference.py``
  measures the bank against it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from lightning_unlearn.checks import at_least, non_negative
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.methods.base import UnlearningMethod
from lightning_unlearn.methods.context import MethodContext
from lightning_unlearn.sampling import (
    TextCondition, cat_conditions, ddim_sample, noise_pair, per_sample_randint, predict_noise, seeded_noise,
)

XT_SOURCES: tuple[str, ...] = ("bank", "online", "reference")
"""Where ESD's x_t comes from (see the module docstring)."""


def esd_target(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, negative_guidance: float) -> torch.Tensor:
    """e0 - eta * (ep - e0): the frozen model's noise guided *away* from the concept."""
    return eps_uncond - negative_guidance * (eps_cond - eps_uncond)


def ddpm_range_of_stop(t_enc: int, ddim_steps: int, num_train_timesteps: int) -> tuple[int, int]:
    """[low, high) of DDPM timesteps the reference code draws for DDIM stop step ``t_enc``.

    As ``train-esd.py``: ``round(t_enc / N * T)`` to ``round((t_enc + 1) / N * T)`` (Python's
    ``round``); at least one timestep wide.
    """
    low = round(t_enc / ddim_steps * num_train_timesteps)
    high = round((t_enc + 1) / ddim_steps * num_train_timesteps)
    return low, max(high, low + 1)


def reference_draws(
    seed: int, shape: tuple[int, ...], ddim_steps: int, num_train_timesteps: int
) -> tuple[torch.Tensor, int, int]:
    """(x_T noise, stop step t_enc, DDPM timestep t_ddpm) of one sample, from its seed alone.

    The noise is the generator's first draw, so it equals :func:`seeded_noise` of the seed.
    """
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(shape, generator=gen)
    t_enc = int(torch.randint(0, ddim_steps, (1,), generator=gen))
    low, high = ddpm_range_of_stop(t_enc, ddim_steps, num_train_timesteps)
    t_ddpm = int(torch.randint(low, high, (1,), generator=gen))
    return noise, t_enc, t_ddpm


def reference_steps_taken(t_enc: torch.Tensor, ddim_steps: int) -> torch.Tensor:
    """DDIM steps the reference sampler takes for stop step ``t_enc`` (from tau_1): N - max(t_enc, 1)."""
    return ddim_steps - t_enc.clamp(min=1)


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
    """ESD loss with negative guidance ``eta``; x_t from a bank, online or as the reference code (``xt_source``)."""

    def __init__(
        self,
        negative_guidance: float = 1.0,
        ddim_steps: int = 50,
        start_guidance: float = 3.0,
        xt_source: Literal["bank", "online", "reference"] = "bank",
        bank_trajectories: int = 64,
        bank_batch: int = 64,
    ) -> None:
        """
        Args:
            negative_guidance: eta, how far the target is pushed away from the concept (1-2).
            ddim_steps: DDIM steps of the frozen model's trajectory x_t is drawn from.
            start_guidance: classifier-free guidance of that trajectory.
            xt_source: ``bank`` (the frozen model's trajectories run once per request),
                ``online`` (the frozen model sampled every step) or ``reference`` (the ESD
                reference code: the model being trained sampled every step, the UNets called
                at a DDPM timestep drawn from the stop step's range; about as slow as online).
            bank_trajectories: trajectories in the bank (each contributes ``ddim_steps`` x_t).
            bank_batch: trajectories sampled together while building the bank.
        """
        if xt_source not in XT_SOURCES:
            raise SettingsError(f"xt_source must be one of {', '.join(XT_SOURCES)}; got {xt_source!r}")
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
    def prepare_request(self, context: MethodContext) -> None:
        self.bank = None
        if self.xt_source == "bank":
            self.bank = self.build_bank(context, list(context.captions), seed=context.seed)

    @torch.no_grad()
    def build_bank(self, context: MethodContext, captions: list[str], seed: int) -> dict[str, torch.Tensor]:
        """Run the frozen model's guided trajectories once; keep every (x_t, t, target)."""
        backbone, ref = context.backbone, context.reference_unet
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
                # t keeps the sampler's dtype: DDIM's integer grid, flow-matching's float one.
                ts.append(t.expand(len(idx)).cpu().clone())
                targets.append(esd_target(eps_uncond, eps_cond, self.negative_guidance).cpu())
                which.append(caption_idx)

            ddim_sample(backbone, ref, noise.to(context.device), cond, uncond, self.ddim_steps, self.start_guidance,
                        record=record)
        return {"x": torch.cat(xs), "t": torch.cat(ts), "target": torch.cat(targets), "caption": torch.cat(which)}

    # -- per step ------------------------------------------------------------------------------
    def loss(self, context: MethodContext, batch: dict[str, Any]) -> torch.Tensor:
        if self.xt_source == "bank":
            x_t, t, target, captions = self._draw_from_bank(batch["seed"], context.device)
        elif self.xt_source == "reference":
            draw = self.reference_xt(context, batch["seed"], batch["caption"])
            x_t, t, target, captions = draw["x"], draw["t"], draw["target"], batch["caption"]
        else:
            x_t, t, target, captions = self._run_online(context, batch)
        cond = TextCondition.from_captions(context.backbone, captions)
        pred = predict_noise(context.unet, x_t, t, cond)
        return F.mse_loss(pred.float(), target.float())

    def _draw_from_bank(self, seeds: torch.Tensor, device: torch.device):
        assert self.bank is not None, "prepare_request builds the bank before training"
        # Draw i depends only on seeds[i], so how a global batch is split (DDP ranks, batch
        # size) never changes which bank entries it trains on.
        idx = per_sample_randint(seeds, self.bank["x"].shape[0])
        captions = [self.bank_captions[int(i)] for i in self.bank["caption"][idx]]
        return self.bank["x"][idx].to(device), self.bank["t"][idx].to(device), self.bank["target"][idx].to(device), captions

    @torch.no_grad()
    def _run_online(self, context: MethodContext, batch: dict[str, Any]):
        backbone, ref = context.backbone, context.reference_unet
        seeds: torch.Tensor = batch["seed"]
        captions: list[str] = batch["caption"]
        gen = torch.Generator().manual_seed(int(seeds[0]))
        stop = int(torch.randint(0, self.ddim_steps, (1,), generator=gen))
        cond = TextCondition.from_captions(backbone, captions)
        uncond = TextCondition.from_captions(backbone, [""])
        noise = seeded_noise(seeds, backbone.latent_shape).to(context.device)
        x_t, t = ddim_sample(backbone, ref, noise, cond, uncond, self.ddim_steps, self.start_guidance, stop_after=stop)
        eps_uncond, eps_cond = noise_pair(ref, x_t, t, cond, uncond)
        return x_t, t.expand(len(seeds)), esd_target(eps_uncond, eps_cond, self.negative_guidance), captions

    @torch.no_grad()
    def reference_xt(self, context: MethodContext, seeds: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
        """x_t, the UNet timestep and the target as the ESD reference code draws them.

        Returns ``x`` [B, C, H, W] (sampled with ``context.unet``, the model being trained),
        ``t`` [B] (t_ddpm, what every UNet is called with), ``target`` [B, C, H, W] (from the
        frozen copy at (x, t)), ``t_enc`` [B] (stop steps) and ``t_own`` [B] (the grid
        timestep x sits at; -1 when fully denoised). See the module docstring.
        """
        backbone, device = context.backbone, context.device
        scheduler = backbone.sampling_scheduler()
        scheduler.set_timesteps(self.ddim_steps, device=device)
        grid = scheduler.timesteps
        num_train = int(scheduler.config.num_train_timesteps)
        draws = [reference_draws(int(s), backbone.latent_shape, self.ddim_steps, num_train) for s in seeds]
        x = torch.stack([d[0] for d in draws]).to(device)
        t_enc = torch.tensor([d[1] for d in draws])
        t_ddpm = torch.tensor([d[2] for d in draws], device=device)
        steps = reference_steps_taken(t_enc, self.ddim_steps)
        cond = TextCondition.from_captions(backbone, captions)
        uncond = TextCondition.from_captions(backbone, [""])
        # Guided DDIM with the trained UNet from tau_1 (the reference drops tau_0); a sample
        # leaves the batch once it has taken its steps. DDIM's step depends on t alone, so
        # stepping a subset is the same step.
        for i in range(1, int(steps.max()) + 1):
            active = (steps >= i).nonzero().squeeze(1).to(device)
            sub = TextCondition(cond.states[active], None if cond.mask is None else cond.mask[active])
            eps_uncond, eps_cond = noise_pair(context.unet, x[active], grid[i], sub, uncond)
            eps = eps_uncond + self.start_guidance * (eps_cond - eps_uncond)
            x[active] = scheduler.step(eps, grid[i], x[active]).prev_sample
        # The frozen copy's two predictions at (x, t_ddpm), one call; each sample its own t.
        both = cat_conditions(uncond.expand(len(x)), cond)
        eps = predict_noise(context.reference_unet, torch.cat([x, x]), torch.cat([t_ddpm, t_ddpm]), both)
        eps_uncond, eps_cond = eps.chunk(2)
        own = [int(grid[n + 1]) if n + 1 < self.ddim_steps else -1 for n in steps.tolist()]
        return {
            "x": x, "t": t_ddpm, "target": esd_target(eps_uncond, eps_cond, self.negative_guidance),
            "t_enc": t_enc, "t_own": torch.tensor(own),
        }
