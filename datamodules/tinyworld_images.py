"""An endless stream of freshly rendered tiny-world images, for pretraining the UNet and classifier."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset

from lightning_unlearn.errors import SettingsError
from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES
from lightning_unlearn.tinyworld.renderer import render_batch

# Held-out images use seeds from a range training never draws from.
HELDOUT_SEED_OFFSET = 1_000_000_007


def object_probabilities(object_weights: dict[str, float] | None) -> np.ndarray | None:
    """Sampling probabilities over ``OBJECTS`` from relative weights (an object not named weighs 1).

    ``None`` or an empty mapping means uniform (``None`` is returned so the uniform draw stays the
    one the shipped recipes were trained on). Raises :class:`SettingsError` for an unknown object
    or a weight that is not a positive finite number.
    """
    if not object_weights:
        return None
    unknown = sorted(set(object_weights) - set(OBJECTS))
    if unknown:
        raise SettingsError(f"object_weights names unknown objects {unknown}; the tiny world's objects are {list(OBJECTS)}")
    bad = {name: w for name, w in object_weights.items() if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0)}
    if bad:
        raise SettingsError(f"object_weights must be positive finite numbers; got {bad}")
    weights = np.array([float(object_weights.get(name, 1.0)) for name in OBJECTS])
    return weights / weights.sum()


def rendered_batch(batch_size: int, seed: int, object_probs: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """One batch of (style, object) images in [-1, 1], [B, 3, 32, 32]: styles uniform, objects
    uniform or drawn with ``object_probs`` (see :func:`object_probabilities`)."""
    rng = np.random.default_rng(seed)
    styles = rng.integers(0, len(STYLES), size=batch_size)
    if object_probs is None:
        objects = rng.integers(0, len(OBJECTS), size=batch_size)
    else:
        objects = rng.choice(len(OBJECTS), size=batch_size, p=object_probs)
    pixels = render_batch(styles, objects, seed=int(rng.integers(2**31)))
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return {"image": images, "style": torch.from_numpy(styles), "object": torch.from_numpy(objects)}


class RenderedImageStream(IterableDataset):
    """Endless batches; batch ``k`` is a pure function of ``(seed, k)``."""

    def __init__(self, batch_size: int, seed: int, start: int = 0, object_probs: np.ndarray | None = None) -> None:
        self.batch_size = batch_size
        self.seed = seed
        self.position = start
        self.object_probs = object_probs

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            batch = rendered_batch(self.batch_size, seed=self.seed * 1_000_003 + self.position,
                                   object_probs=self.object_probs)
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

    def __init__(
        self, batch_size: int = 64, seed: int = 0, val_batches: int = 4, object_weights: dict[str, float] | None = None
    ) -> None:
        """
        Args:
            batch_size: images per training batch.
            seed: data seed; batch k of the stream depends only on (seed, k).
            val_batches: held-out batches per validation (the UNet recipe samples its own).
            object_weights: relative sampling weights of objects in the training stream, e.g.
                ``{star: 3, tree: 3}`` (objects not named weigh 1; default: uniform). Held-out
                batches stay uniform, so validation measures the same world either way.
        """
        super().__init__()
        self.batch_size = batch_size
        self.seed = seed
        self.val_batches = val_batches
        self.train_stream = RenderedImageStream(batch_size, seed, object_probs=object_probabilities(object_weights))

    def train_dataloader(self) -> DataLoader:
        # Rendering a batch takes ~10 ms: worker processes would only fight the model for 2 cores.
        return DataLoader(self.train_stream, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(HeldOutImages(self.batch_size, self.val_batches, self.seed), batch_size=None)

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.train_stream.position}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_stream.position = int(state_dict["position"])
