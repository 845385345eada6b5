"""An endless stream of freshly rendered tiny-world images, for pretraining the UNet and classifier."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset

from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES
from lightning_unlearn.tinyworld.renderer import render_batch

# Held-out images use seeds from a range training never draws from.
HELDOUT_SEED_OFFSET = 1_000_000_007


def rendered_batch(batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """One batch of uniformly drawn (style, object) images in [-1, 1], [B, 3, 32, 32]."""
    rng = np.random.default_rng(seed)
    styles = rng.integers(0, len(STYLES), size=batch_size)
    objects = rng.integers(0, len(OBJECTS), size=batch_size)
    pixels = render_batch(styles, objects, seed=int(rng.integers(2**31)))
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return {"image": images, "style": torch.from_numpy(styles), "object": torch.from_numpy(objects)}


class RenderedImageStream(IterableDataset):
    """Endless batches; batch ``k`` is a pure function of ``(seed, k)``."""

    def __init__(self, batch_size: int, seed: int, start: int = 0) -> None:
        self.batch_size = batch_size
        self.seed = seed
        self.position = start

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            batch = rendered_batch(self.batch_size, seed=self.seed * 1_000_003 + self.position)
            self.position += 1
            yield batch


class HeldOutImages(IterableDataset):
    """A fixed number of held-out batches (seeds training never sees)."""

    def __init__(self, batch_size: int, num_batches: int, seed: int) -> None:
        self.batch_size, self.num_batches, self.seed = batch_size, num_batches, seed

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for k in range(self.num_batches):
            yield rendered_batch(self.batch_size, seed=HELDOUT_SEED_OFFSET + self.seed * 1_000_003 + k)


class TinyWorldImageDataModule(LightningDataModule):
    """Rendered tiny-world images: an endless training stream and a held-out validation set."""

    def __init__(self, batch_size: int = 64, seed: int = 0, val_batches: int = 4) -> None:
        """
        Args:
            batch_size: images per training batch.
            seed: data seed; batch k of the stream depends only on (seed, k).
            val_batches: held-out batches per validation (the UNet recipe samples its own).
        """
        super().__init__()
        self.batch_size = batch_size
        self.seed = seed
        self.val_batches = val_batches
        self.train_stream = RenderedImageStream(batch_size, seed)

    def train_dataloader(self) -> DataLoader:
        # Rendering a batch takes ~10 ms: worker processes would only fight the model for 2 cores.
        return DataLoader(self.train_stream, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(HeldOutImages(self.batch_size, self.val_batches, self.seed), batch_size=None)

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.train_stream.position}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_stream.position = int(state_dict["position"])
