"""The tiny world's judge: a small CNN with a style head and an object head.

Trained on rendered images (with noise and blur so it also reads imperfect generated ones)
by ``python train.py pretrain --config configs/tinyworld/pretrain_classifier.yaml`` (the recipe
is ``lightning_unlearn.pretraining.classifier``); shipped as safetensors and used to score
every generated image.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lightning_unlearn.atomic_io import load_weights
from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES

DEFAULT_CLASSIFIER_PATH = Path(__file__).resolve().parents[1] / "weights" / "tiny_classifier.safetensors"


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class TinyWorldClassifier(nn.Module):
    """Images in [-1, 1], [B, 3, 32, 32] -> (style logits [B, 16], object logits [B, 12])."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(3, w, 1), _block(w, w, 1), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 1),
        )
        self.style_head = nn.Linear(8 * w, len(STYLES))
        self.object_head = nn.Linear(8 * w, len(OBJECTS))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(images)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.style_head(pooled), self.object_head(pooled)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_CLASSIFIER_PATH) -> TinyWorldClassifier:
        """The shipped (or given) classifier, in eval mode and frozen."""
        model = cls()
        model.load_state_dict(load_weights(path))
        return model.eval().requires_grad_(False)
