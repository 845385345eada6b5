"""Training objectives of a backbone: how x_t is made from x_0, what the network regresses, and
how it is sampled.

The objective belongs to the backbone (its weights were trained with it), never to an
unlearning method. Methods only ever see the network's *output* at (x_t, t, c), and the ones
this project runs are objective-agnostic given that output:

- ESD's target e0 - eta (ep - e0) is linear in the output, so it is the negatively guided
  epsilon for an epsilon model and the negatively guided velocity for a flow model;
- Concept Ablation's target is the output of the anchor caption at the same (x_t, t).

What differs is :meth:`DiffusionObjective.add_noise` (CA's noising, replay, attacks),
:meth:`DiffusionObjective.target` (pretraining, attacks) and the samplers (ESD's x_t
trajectories, anchor images, evaluation). Two objectives:

- :class:`EpsilonObjective`: DDPM noising x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with an
  epsilon (or v) target, sampled with DDIM / DPM-Solver++ (the tiny UNet, Stable Diffusion,
  PixArt);
- :class:`FlowMatchingObjective`: rectified flow, x_t = (1 - s) x_0 + s eps with s = t / T,
  velocity target v = eps - x_0, sampled with diffusers' ``FlowMatchEulerDiscreteScheduler``
  (the tiny DiT).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from diffusers import (
    DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler,
)

from lightning_unlearn.errors import SettingsError

SAMPLERS: tuple[str, ...] = ("ddim", "dpm++")
"""Solvers every objective serves: ``ddim`` the first-order deterministic one (DDIM; on a
rectified flow DDIM is the Euler step of the flow ODE), ``dpm++`` DPM-Solver++ 2M."""

DPM_MIN_HALF_LOG_SNR = -2.57
"""log(alpha_t / sigma_t) where DPM-Solver++ grids start on an epsilon schedule: alpha_bar =
0.0058, the noise level of t = 950 of the tiny world's schedule (the first step of 20-step DDIM).
On Stable Diffusion's scaled-linear schedule the grid starts at t = 980 instead of 999 (50-step
DDIM starts at 981)."""

Scheduler = DDIMScheduler | DPMSolverMultistepScheduler | FlowMatchEulerDiscreteScheduler


class DiffusionObjective:
    """What a backbone's network was trained to do; see the module docstring."""

    name: str
    """``epsilon`` or ``flow-matching`` (cards, logs, errors)."""
    num_train_timesteps: int
    """Timesteps are drawn from [0, T) for training (and every method's noising)."""

    @property
    def config(self) -> dict[str, Any]:
        """Everything that defines the objective (fingerprints, model cards)."""
        raise NotImplementedError

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t for clean latents ``x0``, standard-normal ``noise`` and timesteps ``t`` [B]."""
        raise NotImplementedError

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network regresses at x_t = ``add_noise(x0, noise, t)``."""
        raise NotImplementedError

    def training_timesteps(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """Timesteps of one pretraining batch, drawn from the global generator."""
        raise NotImplementedError

    def sampling_scheduler(self) -> Scheduler:
        """A fresh first-order deterministic sampler (stateful: one per sampling loop)."""
        raise NotImplementedError

    def solver_scheduler(self, sampler: str) -> Scheduler:
        """A fresh scheduler of the named solver (one of :data:`SAMPLERS`)."""
        raise NotImplementedError


class EpsilonObjective(DiffusionObjective):
    """DDPM noise prediction over a diffusers beta schedule (``scheduler_config``)."""

    name = "epsilon"

    def __init__(self, scheduler_config: dict[str, Any]) -> None:
        self.scheduler_config = dict(scheduler_config)
        self._ddpm = DDPMScheduler.from_config(self.scheduler_config)
        self.num_train_timesteps = int(self._ddpm.config.num_train_timesteps)

    @property
    def config(self) -> dict[str, Any]:
        # The bare scheduler config, as fingerprints and cards recorded it before objectives existed.
        return self.scheduler_config

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t for every training timestep [T]."""
        return self._ddpm.alphas_cumprod

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._ddpm.add_noise(x0, noise, t)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self._ddpm.config.prediction_type == "v_prediction":
            return self._ddpm.get_velocity(x0, noise, t)
        return noise

    def training_timesteps(self, batch: int, device: torch.device | str) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (batch,), device=device)

    def sampling_scheduler(self) -> DDIMScheduler:
        return DDIMScheduler.from_config(self.scheduler_config)

    def solver_scheduler(self, sampler: str) -> Scheduler:
        """``ddim``; ``dpm++``: DPM-Solver++ (data prediction) of order 2, multistep, without
        noise, the last steps in lower order, its grid starting at the last timestep whose half
        log-SNR is at least :data:`DPM_MIN_HALF_LOG_SNR` (t = 949 on the tiny world, where 20-step
        DDIM starts). Unclipped it would start at t = T - 1, where the tiny world's capped cosine
        schedule has alpha_bar ~ 2e-9: samples from there were classified 60% / 20% (style /
        object); from DDIM's ``leading`` grid (t = 888 at 8 steps) the base scored 100% / 97% but
        an unlearned checkpoint's IRA / CRA 6 points above DDIM 20's; from t = 949 within 2 points."""
        if sampler == "ddim":
            return self.sampling_scheduler()
        if sampler == "dpm++":
            return DPMSolverMultistepScheduler.from_config(
                self.scheduler_config, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True,
                lambda_min_clipped=DPM_MIN_HALF_LOG_SNR,
            )
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")


TimestepSampling = Literal["logit-normal", "uniform"]


class FlowMatchingObjective(DiffusionObjective):
    """Rectified flow with velocity prediction: x_t = (1 - s) x_0 + s eps, v = eps - x_0, s = t / T.

    The network is called with t = s T in [0, T] (continuous, like SD3's), so its timestep
    embedding sees the same range as an epsilon model's. ``shift`` warps the sampler's sigma grid
    as SD3's (1 = evenly spaced).
    """

    name = "flow-matching"

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0,
                 timestep_sampling: TimestepSampling = "logit-normal") -> None:
        if timestep_sampling not in ("logit-normal", "uniform"):
            raise SettingsError(f"timestep_sampling must be logit-normal or uniform, got {timestep_sampling!r}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.shift = float(shift)
        self.timestep_sampling = timestep_sampling

    @property
    def config(self) -> dict[str, Any]:
        return {"objective": self.name, "prediction_type": "velocity", "num_train_timesteps": self.num_train_timesteps,
                "shift": self.shift, "timestep_sampling": self.timestep_sampling}

    def sigma(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """s = t / T, shaped to broadcast over ``like`` ([B, 1, 1, 1])."""
        s = t.to(like.device, torch.float32) / self.num_train_timesteps
        return s.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.sigma(t, x0)
        return (1 - s) * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def training_timesteps(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """s ~ sigmoid(N(0, 1)) (logit-normal, SD3's default: most weight on mid noise levels) or
        U(0, 1); returned as t = s T."""
        if self.timestep_sampling == "logit-normal":
            s = torch.sigmoid(torch.randn(batch, device=device))
        else:
            s = torch.rand(batch, device=device)
        return s * self.num_train_timesteps

    def sampling_scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.num_train_timesteps, shift=self.shift)

    def solver_scheduler(self, sampler: str) -> Scheduler:
        """``ddim``: flow-matching Euler (DDIM of a rectified flow); ``dpm++``: DPM-Solver++ 2M
        on the flow's sigmas (diffusers' ``use_flow_sigmas``, ``flow_prediction``)."""
        if sampler == "ddim":
            return self.sampling_scheduler()
        if sampler == "dpm++":
            return DPMSolverMultistepScheduler(
                num_train_timesteps=self.num_train_timesteps, use_flow_sigmas=True, prediction_type="flow_prediction",
                flow_shift=self.shift, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True,
            )
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
