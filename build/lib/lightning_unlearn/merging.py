"""Model merging of independently unlearned checkpoints: task vectors, uniform, task arithmetic, TIES.

Each concept is unlearned alone from the base theta_0, giving theta_i; its task vector is
tau_i = theta_i - theta_0 over the trained keys. The merges:

- uniform:          theta_0 + (1/n) sum tau_i  (the average of the checkpoints)
- task arithmetic:  theta_0 + lambda * sum tau_i
- TIES:             theta_0 + lambda * tau_m, where each tau_i is trimmed to its top-k
  magnitude fraction, the sign of every element is elected as the sign of the sum of the
  trimmed tau_i, and tau_m is the mean of the trimmed entries that are non-zero and agree
  with the elected sign (the "disjoint mean").

TIES trims *globally* by default, as the official TIES code does: the top-k fraction is taken
over all of a task vector's tensors flattened together, so a tensor whose changes are small
next to the others' may keep few or none of its entries. ``scope="per_tensor"`` keeps the top-k
fraction of every tensor instead.

Pure functions on ``{key: tensor}`` dicts; arithmetic in float32, results in theta_0's dtype.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch

from lightning_unlearn.topk import count_for_fraction, global_topk_masks

State = dict[str, torch.Tensor]

TrimScope = Literal["global", "per_tensor"]
"""Where TIES ranks magnitudes: over the whole task vector, or within each tensor."""

TRIM_SCOPES = ("global", "per_tensor")


def _keys(base: State, checkpoints: Sequence[State], keys: Iterable[str] | None) -> list[str]:
    if not checkpoints:
        raise ValueError("merging needs at least one checkpoint")
    chosen = list(keys) if keys is not None else sorted(set(checkpoints[0]))
    for i, ckpt in enumerate(checkpoints):
        missing = [k for k in chosen if k not in ckpt]
        if missing:
            raise KeyError(f"checkpoint {i} lacks keys {missing[:3]}")
    missing = [k for k in chosen if k not in base]
    if missing:
        raise KeyError(f"the base lacks keys {missing[:3]}")
    for k in chosen:
        shapes = {tuple(base[k].shape), *(tuple(c[k].shape) for c in checkpoints)}
        if len(shapes) > 1:
            raise ValueError(f"{k} has different shapes across checkpoints: {sorted(shapes)}")
    return chosen


def task_vectors(base: State, checkpoints: Sequence[State], keys: Iterable[str] | None = None) -> list[State]:
    """tau_i = theta_i - theta_0 over ``keys`` (default: the first checkpoint's keys), float32."""
    chosen = _keys(base, checkpoints, keys)
    return [{k: ckpt[k].float() - base[k].float() for k in chosen} for ckpt in checkpoints]


def _apply(base: State, delta: State) -> State:
    return {k: (base[k].float() + d).to(base[k].dtype) for k, d in delta.items()}


def merge_uniform(base: State, checkpoints: Sequence[State], keys: Iterable[str] | None = None) -> State:
    """theta_0 + mean_i tau_i."""
    taus = task_vectors(base, checkpoints, keys)
    return _apply(base, {k: torch.stack([t[k] for t in taus]).mean(0) for k in taus[0]})


def merge_task_arithmetic(
    base: State, checkpoints: Sequence[State], lambda_: float = 1.0, keys: Iterable[str] | None = None
) -> State:
    """theta_0 + lambda * sum_i tau_i."""
    taus = task_vectors(base, checkpoints, keys)
    return _apply(base, {k: lambda_ * torch.stack([t[k] for t in taus]).sum(0) for k in taus[0]})


def trim_top_k(tau: State, top_k: float, scope: TrimScope = "global") -> State:
    """Zero all but the top-k fraction of |tau| (exactly round(top_k * N) entries, ties by position).

    ``global`` ranks over all keys of the task vector together (official TIES; N = all its
    entries); ``per_tensor`` keeps round(top_k * n) entries of each tensor of n entries.
    """
    keys = list(tau)
    if scope == "global":
        total = sum(tau[k].numel() for k in keys)
        masks = global_topk_masks([tau[k].abs() for k in keys], count_for_fraction(top_k, total))
    elif scope == "per_tensor":
        masks = [global_topk_masks([tau[k].abs()], count_for_fraction(top_k, tau[k].numel()))[0] for k in keys]
    else:
        raise ValueError(f"trim scope must be one of {TRIM_SCOPES}, got {scope!r}")
    return {k: torch.where(m, tau[k], torch.zeros_like(tau[k])) for k, m in zip(keys, masks)}


def ties_delta(taus: Sequence[State], top_k: float, scope: TrimScope = "global") -> State:
    """Trim, elect sign, disjoint mean: the merged task vector before scaling."""
    trimmed = [trim_top_k(t, top_k, scope) for t in taus]
    merged: State = {}
    for k in trimmed[0]:
        stacked = torch.stack([t[k] for t in trimmed])
        elected = torch.sign(stacked.sum(0))
        agree = (torch.sign(stacked) == elected) & (stacked != 0)
        count = agree.sum(0)
        total = torch.where(agree, stacked, torch.zeros_like(stacked)).sum(0)
        # Where no task agrees (all trimmed away, or an exact tie of signs) the merge is zero.
        merged[k] = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    return merged


def merge_ties(
    base: State,
    checkpoints: Sequence[State],
    lambda_: float = 1.0,
    top_k: float = 0.2,
    keys: Iterable[str] | None = None,
    scope: TrimScope = "global",
) -> State:
    """TIES merge: theta_0 + lambda * disjoint_mean(elect_sign(trim_top_k(tau_i))).

    Args:
        base: theta_0, the pretrained weights.
        checkpoints: theta_i, each unlearned independently from theta_0.
        lambda_: scale of the merged task vector (reference sweeps 1.25-2.75).
        top_k: fraction of each task vector's entries kept by magnitude (reference 0.2-0.8).
        keys: the trained keys to merge (default: the first checkpoint's keys).
        scope: rank magnitudes over the whole task vector (``global``, the official TIES
            code's trim) or within each tensor (``per_tensor``).
    """
    taus = task_vectors(base, checkpoints, keys)
    delta = ties_delta(taus, top_k, scope)
    return _apply(base, {k: lambda_ * d for k, d in delta.items()})
