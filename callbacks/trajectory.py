"""Trajectory regularizer: an anchor whose per-element pull falls with how far earlier requests
moved the element (from the paper's reference code).

At the end of request k the absolute change of every trainable element, D_k = |theta_end -
theta_start|, is folded into an EMA over requests, D = decay * D_k + (1 - decay) * D_prev
(D = D_1 after the first). In request k+1:

    penalty = weight * (1/N) * sum exp(-z(D)/T) * |theta - theta_prev|      (l1; l2: squared)

z(D) = D standardised over all trainable elements. Weights that barely moved so far are
anchored more; the ones earlier requests already used stay cheap to move, so later requests
keep to the directions the stream has been editing instead of spreading drift over new ones.
Request 1 adds no penalty (no trajectory yet). theta_start is the anchor (the weights the
request started from), so D_k costs no extra copy of the weights.

See :mod:`lightning_unlearn.callbacks.importance_anchor` for the shared penalty, the EMA and
resume behaviour.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch import LightningModule

from lightning_unlearn.callbacks.importance_anchor import ImportanceWeightedAnchor


class TrajectoryRegularizer(ImportanceWeightedAnchor):
    """Anchor re-weighted by exp(-z(D)/T), D an EMA over requests of |theta_end - theta_start|."""

    option_prefix = "lightning_unlearn.callbacks.trajectory.TrajectoryRegularizer"
    record_stem = "trajectory"
    display_name = "trajectory"

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
            kind: ``l1``: weight * mean(exp(-z/T) * |theta - theta_prev|); ``l2``: the same with
                (theta - theta_prev)^2. theta_prev = the weights the request started from.
            weight: penalty weight, mean-reduced over the N trainable elements. Default 100: the
                reference's L2-SP weight for methods other than Concept Ablation on SD 1.5.
                Scale by N_model / N_SD15 on another model
                (configs/tinyworld/callbacks/trajectory_esd.yaml).
            decay: weight of the latest request's |change| in the EMA, D = decay * D_k +
                (1 - decay) * D_prev; 0.7 as the reference code's Inverse-EWC. In [0, 1].
            temperature: T in exp(-z/T) (> 0); 1.0 uses the standardised change as is.
            name: distinguishes two instances of this class in checkpoints and logs.
        """
        super().__init__(kind=kind, weight=weight, decay=decay, temperature=temperature, name=name)

    def request_importance(self, pl_module: LightningModule) -> dict[str, torch.Tensor]:
        params = dict(pl_module.unet.named_parameters())
        with torch.no_grad():
            return {k: (params[k].detach().float() - start.to(params[k].device).float()).abs().cpu()
                    for k, start in zip(self.keys, self.anchor)}
