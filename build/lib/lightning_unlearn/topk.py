"""Exact global top-k selection over a list of tensors, with deterministic tie-breaking.

Selective fine-tuning keeps the top-k fraction of importance scores across all trainable
tensors; TIES merging trims each task vector to its top-k magnitudes. Both need *exactly*
k elements even when many scores tie (zero gradients, equal magnitudes), and the same
selection on every run and every rank, which ``torch.topk`` does not promise for ties.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def count_for_fraction(fraction: float, total: int) -> int:
    """k = round(fraction * total), clamped to [0, total]."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"a top-k fraction must lie in [0, 1], got {fraction}")
    return max(0, min(total, int(round(fraction * total))))


@torch.no_grad()
def global_topk_masks(scores: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Boolean masks (shaped like ``scores``) marking the k largest scores over all tensors.

    Ties at the threshold are broken by position: the tensor that comes first in ``scores``,
    then the lower flat index, wins. NaN scores count as the lowest.
    """
    sizes = [s.numel() for s in scores]
    total = sum(sizes)
    if not 0 <= k <= total:
        raise ValueError(f"cannot select {k} of {total} elements")
    if total == 0:
        return [torch.zeros_like(s, dtype=torch.bool) for s in scores]
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores])
    flat = torch.nan_to_num(flat, nan=-float("inf"))
    if k == 0:
        selected = torch.zeros_like(flat, dtype=torch.bool)
    elif k == total:
        selected = torch.ones_like(flat, dtype=torch.bool)
    else:
        # k-th largest = (total - k + 1)-th smallest; everything above it is in, and the
        # first few entries equal to it fill the remaining places.
        threshold = torch.kthvalue(flat, total - k + 1).values
        selected = flat > threshold
        missing = k - int(selected.sum())
        if missing > 0:
            ties = torch.nonzero(flat == threshold).flatten()[:missing]
            selected[ties] = True
    return [m.view_as(s) for m, s in zip(selected.split(sizes), scores)]
