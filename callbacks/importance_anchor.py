"""Importance-weighted anchor: the shared part of InverseEWC and TrajectoryRegularizer.

An L1/L2 anchor to the weights the request started from, whose per-element pull is set by an
importance I that earlier requests recorded:

    z       = (I - mean(I)) / std(I)           over all trainable elements (population std)
    w       = exp(-z / T)                      T = temperature
    penalty = weight * (1/N) * sum w * |theta - theta_prev|       (l1)
    penalty = weight * (1/N) * sum w * (theta - theta_prev)^2     (l2)

Elements important to earlier requests (high I) are cheap to move; unimportant ones are
anchored. I is an exponential moving average over requests, updated at each request's end:

    I = decay * I_k + (1 - decay) * I_prev      (the first request: I = I_1)

so the first request adds no penalty (there is no I yet). A subclass says what I_k is
(:meth:`request_importance`) and may gather it during training. As in
:class:`~lightning_unlearn.callbacks.anchor.AnchorRegularizer`, the penalty's gradient is added to
``p.grad`` in ``on_before_optimizer_step`` (accumulated, DDP-synced, unscaled gradients: exact
under accumulation, DDP and AMP; no extra backward). If std(I) = 0 every w is 1 (a plain anchor).

The EMA lives on the CPU between requests and is in ``state_dict`` (with the anchor and any
partial accumulation), so a request resumed from a mid-request checkpoint continues
bit-identically; it is also the callback's ``carried_state``, which the stream saves with every
committed request (``requests/NN-*/carried-*.safetensors``, sha256 in the ledger) and restores
when a stream resumes between requests, so request k+1 sees the EMA of requests 1..k either way.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from lightning_unlearn.callbacks.base import RequestCallback
from lightning_unlearn.checks import in_interval, non_negative, positive
from lightning_unlearn.errors import SettingsError


def standardised_weights(importance: dict[str, torch.Tensor], temperature: float) -> dict[str, torch.Tensor]:
    """exp(-z / T) per element, z = importance standardised over *all* elements of all tensors
    (mean and population std in float64); every weight is 1 when the std is 0 or not finite."""
    total = sum(v.numel() for v in importance.values())
    if total == 0:
        return {}
    mean = sum(v.double().sum() for v in importance.values()) / total
    var = sum((v.double() - mean).square().sum() for v in importance.values()) / total
    std = float(var.sqrt())
    if not math.isfinite(std) or std == 0.0:
        return {k: torch.ones_like(v, dtype=torch.float32) for k, v in importance.items()}
    return {k: torch.exp(-((v.double() - mean) / std) / temperature).float() for k, v in importance.items()}


class ImportanceWeightedAnchor(RequestCallback):
    """Anchor to the request's starting weights, re-weighted per element by exp(-z(I)/T)."""

    acts_on_training = "it adds an importance-weighted anchor penalty to the training loss"

    option_prefix = "lightning_unlearn.callbacks.importance_anchor.ImportanceWeightedAnchor"
    record_stem = "importance_anchor"
    display_name = "importance-weighted anchor"
    """What the label calls this regularizer."""

    def __init__(
        self,
        kind: Literal["l1", "l2"] = "l2",
        weight: float = 100.0,
        decay: float = 0.7,
        temperature: float = 1.0,
        name: str | None = None,
    ) -> None:
        """
        Args:
            kind: ``l1`` ((1/N) sum w |d|) or ``l2`` ((1/N) sum w d^2), d = theta - theta_prev.
            weight: penalty weight (mean reduction over the N trainable elements, as L1/L2-SP:
                scale it by N_model / N_SD15 on another model; see configs/tinyworld/callbacks/).
            decay: weight of the latest request in the importance EMA,
                I = decay * I_k + (1 - decay) * I_prev (the reference code's 0.7). In [0, 1].
            temperature: T in w = exp(-z / T); larger T flattens the weights towards a plain
                anchor (1.0: the standardised score as is; the reference code's notes give none).
            name: distinguishes two instances of this class in checkpoints and logs.
        """
        super().__init__(name=name)
        prefix = f"{self.option_prefix} init_args"
        if kind not in ("l1", "l2"):
            raise SettingsError(f"{prefix}.kind must be 'l1' or 'l2', got {kind!r}")
        non_negative(weight, f"{prefix}.weight")
        in_interval(decay, 0, 1, f"{prefix}.decay", low_open=False)
        positive(temperature, f"{prefix}.temperature")
        self.kind = kind
        self.weight = float(weight)
        self.decay = float(decay)
        self.temperature = float(temperature)
        self.keys: list[str] = []
        self.anchor: list[torch.Tensor] = []
        """theta_prev: the trainable weights the request started from."""
        self.ema: dict[str, torch.Tensor] = {}
        """The importance EMA over the requests ended so far (CPU float32; empty before the first)."""
        self.requests_seen = 0
        self.record: dict[str, Any] = {}
        self._params: list[torch.nn.Parameter] = []
        self._weights: list[torch.Tensor] = []  # w per trained tensor, on the training device
        self._numel = 0
        self._penalty_sum: torch.Tensor | None = None
        self._penalty_steps = 0
        self._weight_stats: dict[str, float] = {}
        self.last_penalty: torch.Tensor | None = None
        """The penalty at the last optimizer step (a tensor: reading it would sync the device)."""

    @property
    def state_key(self) -> str:
        if self.name:
            return super().state_key
        return self._generate_state_key(kind=self.kind, weight=self.weight, decay=self.decay,
                                        temperature=self.temperature)

    @property
    def log_prefix(self) -> str:
        return self.name or f"{self.record_stem}_{self.kind}"

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "weight": self.weight, "decay": self.decay, "temperature": self.temperature}

    @classmethod
    def describe(cls, settings: dict[str, Any]) -> str:
        """``inverse-EWC L2, w=1.6, decay 0.7`` (and ``T=...`` when the temperature is not 1)."""
        text = f"{cls.display_name} {str(settings['kind']).upper()}, w={float(settings['weight']):g}, decay {float(settings['decay']):g}"
        return text + (f", T={float(settings['temperature']):g}" if float(settings["temperature"]) != 1.0 else "")

    @property
    def log_key(self) -> str:
        """Where the penalty is logged."""
        return f"{self.log_prefix}/penalty"

    @property
    def penalty_active(self) -> bool:
        """Whether this request is penalised (an importance EMA exists)."""
        return bool(self.ema)

    # -- what a subclass provides ---------------------------------------------------------------
    def start_importance(self, trainer: Trainer | None, pl_module: LightningModule) -> None:
        """Reset what the request's importance is gathered in (request start)."""

    def request_importance(self, pl_module: LightningModule) -> dict[str, torch.Tensor]:
        """I_k for the request just trained, per trainable key (request end)."""
        raise NotImplementedError

    def extra_record(self) -> dict[str, Any]:
        """More fields for the request's record (called after :meth:`request_importance`)."""
        return {}

    def importance_state(self) -> dict[str, Any]:
        """Partial accumulation to checkpoint mid-request (CPU tensors)."""
        return {}

    def load_importance_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`importance_state`."""

    # -- per request ---------------------------------------------------------------------------
    def on_request_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.keys = list(pl_module.trainable_keys)
        params = dict(pl_module.unet.named_parameters())
        self.anchor = [params[k].detach().clone() for k in self.keys]
        self._penalty_sum, self._penalty_steps = None, 0
        self.record = {}
        self.start_importance(trainer, pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Inside fit, after a mid-request checkpoint has restored the EMA: the weights follow here.
        if not self.keys:  # a plain fit outside the stream: anchor to where it starts
            self.on_request_start(trainer, pl_module)
        params = dict(pl_module.unet.named_parameters())
        self._params = [params[k] for k in self.keys]
        self.anchor = [a.to(device=p.device, dtype=p.dtype) for p, a in zip(self._params, self.anchor)]
        self._numel = sum(p.numel() for p in self._params)
        if self._penalty_sum is not None:  # restored from a mid-request checkpoint
            self._penalty_sum = self._penalty_sum.to(self._params[0].device) if self._params else self._penalty_sum
        self._weights = []
        if self.ema:
            missing = [k for k in self.keys if k not in self.ema]
            if missing:
                rank_zero_warn(f"{self.log_prefix}: no importance recorded for {len(missing)} trainable tensors "
                               f"(e.g. {missing[0]}); they get weight 1")
            weights = standardised_weights({k: self.ema[k] for k in self.keys if k in self.ema}, self.temperature)
            self._weights = [weights[k].to(p.device) if k in weights else torch.ones_like(p, dtype=torch.float32)
                             for k, p in zip(self.keys, self._params)]
            flat = torch.cat([w.flatten().cpu() for w in self._weights])
            self._weight_stats = {"min": float(flat.min()), "max": float(flat.max()), "mean": float(flat.mean())}
        self.after_train_start(trainer, pl_module)

    def after_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Hook for a subclass, once the parameters sit on their device."""

    # -- per optimizer step --------------------------------------------------------------------
    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if not self._params or not self._weights:
            return  # no importance yet (the first request): no penalty
        numel = self._numel
        diffs = torch._foreach_sub(self._params, self.anchor)
        diffs = [d.float() for d in diffs]
        scale = self.weight / numel
        if self.kind == "l2":
            squares = torch._foreach_mul(diffs, diffs)
            penalty = sum((w * s).sum() for w, s in zip(self._weights, squares)) * scale
            grads_to_add = torch._foreach_mul(diffs, self._weights)
            torch._foreach_mul_(grads_to_add, 2.0 * scale)
        else:
            absolute = torch._foreach_abs(diffs)
            penalty = sum((w * a).sum() for w, a in zip(self._weights, absolute)) * scale
            torch._foreach_sign_(diffs)
            grads_to_add = torch._foreach_mul(diffs, self._weights)
            torch._foreach_mul_(grads_to_add, scale)
        grads, updates = [], []
        for p, g in zip(self._params, grads_to_add):
            if not p.requires_grad:  # frozen for this request by another callback
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
            updates.append(g.to(p.grad.dtype))
        if grads:
            torch._foreach_add_(grads, updates)
        penalty = penalty.detach()
        self.last_penalty = penalty
        self._penalty_sum = penalty.clone() if self._penalty_sum is None else self._penalty_sum + penalty
        self._penalty_steps += 1
        pl_module.log(self.log_key, penalty, on_step=True, on_epoch=False)

    # -- request end ---------------------------------------------------------------------------
    def on_request_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        current = {k: v.detach().float().cpu() for k, v in self.request_importance(pl_module).items()}
        was_active = self.penalty_active
        if self.ema:
            self.ema = {k: self.decay * v + (1.0 - self.decay) * self.ema[k] if k in self.ema else v.clone()
                        for k, v in current.items()}
        else:
            self.ema = {k: v.clone() for k, v in current.items()}
        self.requests_seen += 1
        flat = torch.cat([v.flatten() for v in current.values()]) if current else torch.zeros(1)
        ema = torch.cat([v.flatten() for v in self.ema.values()]) if self.ema else torch.zeros(1)
        steps = self._penalty_steps
        self.record = {
            "kind": self.kind, "weight": self.weight, "decay": self.decay, "temperature": self.temperature,
            "penalty_active": was_active,
            "penalty_steps": steps,
            "penalty_mean": float(self._penalty_sum) / steps if steps and self._penalty_sum is not None else 0.0,
            "penalty_last": float(self.last_penalty) if steps and self.last_penalty is not None else 0.0,
            "element_weights": dict(self._weight_stats) if was_active else None,
            "importance": {"mean": float(flat.mean()), "max": float(flat.max()), "std": float(flat.std(correction=0))},
            "importance_ema": {"mean": float(ema.mean()), "max": float(ema.max()), "std": float(ema.std(correction=0))},
            "requests_in_ema": self.requests_seen,
            **self.extra_record(),
        }
        # The next request takes a fresh anchor; do not hold copies of the weights meanwhile.
        self.keys, self.anchor, self._params, self._weights = [], [], [], []
        self._penalty_sum, self._penalty_steps, self._weight_stats = None, 0, {}
        self.last_penalty = None

    def request_records(self) -> dict[str, dict[str, Any]]:
        return {self.log_prefix: self.record} if self.record else {}

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "weight": self.weight, "decay": self.decay, "temperature": self.temperature,
            "keys": list(self.keys),
            "anchor": [a.detach().cpu() for a in self.anchor],
            "ema": {k: v.detach().cpu().clone() for k, v in self.ema.items()},
            "requests_seen": self.requests_seen,
            "penalty_sum": None if self._penalty_sum is None else self._penalty_sum.detach().cpu(),
            "penalty_steps": self._penalty_steps,
            "importance_state": self.importance_state(),
        }

    def carried_state(self) -> dict[str, torch.Tensor]:
        # The EMA of importance is what request k+1 needs from requests 1..k: without it a stream
        # resumed between requests would serve the next one with no penalty at all.
        state = {f"ema.{k}": v.detach().cpu().contiguous() for k, v in self.ema.items()}
        state["requests_seen"] = torch.tensor([self.requests_seen], dtype=torch.long)
        return state

    def load_carried_state(self, state: dict[str, torch.Tensor]) -> None:
        self.ema = {k[len("ema."):]: v.clone() for k, v in state.items() if k.startswith("ema.")}
        self.requests_seen = int(state["requests_seen"][0])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.keys = list(state_dict.get("keys", []))
        self.anchor = list(state_dict.get("anchor", []))
        self.ema = {k: v.clone() for k, v in state_dict.get("ema", {}).items()}
        self.requests_seen = int(state_dict.get("requests_seen", 0))
        penalty_sum = state_dict.get("penalty_sum")
        self._penalty_sum = None if penalty_sum is None else penalty_sum.clone()
        self._penalty_steps = int(state_dict.get("penalty_steps", 0))
        self.load_importance_state(state_dict.get("importance_state", {}))
