"""Protocols: what request k trains on, and from which weights.

- ``sequential``: from the previous request's weights, erasing request k alone. The deployed
  setting the paper studies; retention collapses as drift accumulates.
- ``simultaneous``: from the base weights, erasing requests 1..k together, until UA over all
  k reaches a target (checked every n steps, with a step cap). Retains better; the cumulative
  cost grows superlinearly.
- ``independent``: from the base weights, erasing request k alone. The baseline, and the input
  of model merging: with ``merge`` set, the model evaluated after request k is the merge of the
  task vectors of requests 1..k.

All three share one training path (:func:`lightning_unlearn.serving.serve_request`); a protocol
only decides the plan below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from lightning_unlearn.checks import at_least, in_interval, positive
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.merging import TRIM_SCOPES, TrimScope, merge_task_arithmetic, merge_ties, merge_uniform
from lightning_unlearn.requests import Request

ProtocolName = Literal["sequential", "simultaneous", "independent"]
PROTOCOLS: tuple[str, ...] = ("sequential", "simultaneous", "independent")


@dataclass
class SimultaneousSettings:
    """When a simultaneous request stops training."""

    ua_target: float = 99.0
    """Stop once UA over every concept erased so far reaches this (percent, 0-100; 0 stops at the
    first check)."""
    check_every_n_steps: int = 50
    """Check UA every this many optimizer steps (on the evaluation prompts of the erased concepts)."""
    max_steps: int = 1000
    """Step cap per request, whether or not the target is reached."""
    check_seeds: int = 1
    """Evaluation seeds per prompt used by the check (the full evaluation uses its own)."""

    def __post_init__(self) -> None:
        in_interval(self.ua_target, 0, 100, "--stream.simultaneous.ua_target", low_open=False)
        at_least(self.check_every_n_steps, 1, "--stream.simultaneous.check_every_n_steps")
        at_least(self.max_steps, 1, "--stream.simultaneous.max_steps")
        at_least(self.check_seeds, 1, "--stream.simultaneous.check_seeds")

    @property
    def label(self) -> str:
        """``until UA ≥ 99 (checked every 50 steps, at most 1000)``."""
        return (f"until UA ≥ {self.ua_target:g} (checked every {self.check_every_n_steps} steps, "
                f"at most {self.max_steps})")


@dataclass
class MergeSettings:
    """Merging of independent task vectors; TIES keeps the top_k over all tensors (official TIES) or per_tensor.

    TIES trims each task vector to its ``top_k`` largest magnitudes globally, over all of its
    tensors together, as the official TIES code does: a tensor whose changes are small next to
    the others' may keep none. ``trim_scope=per_tensor`` keeps the top_k fraction of every
    tensor instead. See ``lightning_unlearn.merging``.
    """

    method: Literal["uniform", "task_arithmetic", "ties"] = "ties"
    """``uniform`` (mean of checkpoints), ``task_arithmetic`` (lambda * sum) or ``ties``."""
    lambda_: float = 1.0
    """Scale of the summed (task arithmetic) or merged (TIES) task vector."""
    top_k: float = 0.2
    """TIES: fraction of each task vector kept by magnitude (see ``trim_scope``)."""
    trim_scope: TrimScope = "global"
    """TIES: where the top-k is taken. ``global`` (as the official TIES code): over all of a
    task vector's tensors together, so a tensor with small changes may keep few or none;
    ``per_tensor``: the top-k fraction of every tensor."""

    def __post_init__(self) -> None:
        # The command line checks the choices itself; this catches settings built in Python,
        # which would otherwise fail only at the first merge, after training.
        if self.method not in ("uniform", "task_arithmetic", "ties"):
            raise SettingsError(f"--stream.merge.method must be uniform, task_arithmetic or ties, got {self.method!r}")
        if self.trim_scope not in TRIM_SCOPES:
            raise SettingsError(f"merge trim_scope must be one of {', '.join(TRIM_SCOPES)}, got {self.trim_scope!r}")
        # A negative or zero scale would undo or drop the unlearning the task vectors hold.
        positive(self.lambda_, "--stream.merge.lambda_")
        in_interval(self.top_k, 0, 1, "--stream.merge.top_k")

    @property
    def label(self) -> str:
        """``TIES λ=1.0, top 20%``, ``task arithmetic λ=0.5`` or ``uniform average``."""
        if self.method == "uniform":
            return "uniform average"
        if self.method == "task_arithmetic":
            return f"task arithmetic λ={_scale(self.lambda_)}"
        scope = "" if self.trim_scope == "global" else ", top-k per tensor"
        return f"TIES λ={_scale(self.lambda_)}, top {100 * self.top_k:g}%{scope}"

    def merge(self, base: dict[str, torch.Tensor], checkpoints: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """theta_0 + the merged task vectors of ``checkpoints`` (each trained from ``base``)."""
        if self.method == "uniform":
            return merge_uniform(base, checkpoints)
        if self.method == "task_arithmetic":
            return merge_task_arithmetic(base, checkpoints, lambda_=self.lambda_)
        if self.method == "ties":
            return merge_ties(base, checkpoints, lambda_=self.lambda_, top_k=self.top_k, scope=self.trim_scope)
        raise ValueError(f"merge method must be uniform, task_arithmetic or ties, got {self.method!r}")


def _scale(value: float) -> str:
    """A merge scale as labels print it: ``1.0``, ``0.25``."""
    return f"{value:.1f}" if float(value).is_integer() else f"{value:g}"


def protocol_label(protocol: str, merge: MergeSettings | None = None,
                   simultaneous: SimultaneousSettings | None = None) -> str:
    """A protocol in words, as reports and ``run.json`` show it: ``sequential``, ``simultaneous,
    until UA ≥ 99 (...)``, ``independent``, ``independent, merged: TIES λ=1.0, top 20%``."""
    if protocol == "simultaneous" and simultaneous is not None:
        return f"simultaneous, {simultaneous.label}"
    if protocol == "independent" and merge is not None:
        return f"independent, merged: {merge.label}"
    return protocol


def recorded_protocol_label(info: dict) -> str | None:
    """The protocol label of a ``run.json``: the one recorded at the run's start, else (older run
    folders) made from the protocol and the merge / simultaneous settings it records; ``None``
    when it records no protocol."""
    if info.get("protocol_label"):
        return str(info["protocol_label"])
    protocol = info.get("protocol")
    if not protocol:
        return None
    try:
        merge = MergeSettings(**info["merge"]) if isinstance(info.get("merge"), dict) else None
        simultaneous = SimultaneousSettings(**info["simultaneous"]) if isinstance(info.get("simultaneous"), dict) else None
    except (TypeError, ValueError, SettingsError):  # settings this version no longer takes: the bare name
        return str(protocol)
    return protocol_label(str(protocol), merge, simultaneous)


@dataclass(frozen=True)
class RequestPlan:
    """What the ``index``-th request trains and how its result is scored."""

    index: int
    request: Request
    erasing: tuple[Request, ...]
    """Concepts the training erases (the request is the last)."""
    already_erased: tuple[Request, ...]
    """Concepts erased in the weights the training starts from."""
    from_base: bool
    """Start from the pretrained weights (else from the previous request's)."""
    scored_erased: tuple[Request, ...]
    """Concepts the evaluated model should have forgotten (UA is over these)."""


def plan_request(requests: Sequence[Request], index: int, protocol: str, merging: bool = False,
                 erased_before: Sequence[Request] = ()) -> RequestPlan:
    """The plan of request ``index`` of ``requests`` under ``protocol``.

    ``erased_before``: concepts the starting model had already had erased before this stream
    (``--data.unlearned``, e.g. a deployed model exported from an earlier run). Every protocol's
    "base" is that model, so they are already erased in every plan's start weights (callbacks
    that protect earlier erasures see them), and UA is also read over them wherever the evaluated
    model carries earlier requests (all but independent without merging).
    """
    if protocol not in PROTOCOLS:
        raise SettingsError(f"--stream.protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if merging and protocol != "independent":
        raise SettingsError(
            "--stream.merge combines independently unlearned checkpoints: it needs protocol 'independent' "
            f"(--stream.protocol=independent), not {protocol!r}"
        )
    request = requests[index]
    before = tuple(erased_before)
    so_far = tuple(requests[: index + 1])
    if protocol == "sequential":
        return RequestPlan(index, request, (request,), before + so_far[:-1], False, before + so_far)
    if protocol == "simultaneous":
        return RequestPlan(index, request, so_far, before, True, before + so_far)
    return RequestPlan(index, request, (request,), before, True, before + so_far if merging else (request,))
