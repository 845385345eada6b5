"""The pretraining image stream: uniform by default (what the shipped recipes trained on), and an
object mix that can be re-weighted without touching validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_unlearn.datamodules.tinyworld_images import (
    HeldOutImages,
    RenderedImageStream,
    TinyWorldImageDataModule,
    object_probabilities,
    rendered_batch,
)
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES


def test_the_default_stream_is_the_uniform_draw_the_shipped_recipes_trained_on():
    # Batch k of the default stream must not change: the shipped weights' recipes resume from
    # checkpoints that record only the stream position.
    rng = np.random.default_rng(2 * 1_000_003 + 5)  # the stream's seed for (seed 2, position 5)
    rng.integers(0, len(STYLES), size=64)
    expected_objects = rng.integers(0, len(OBJECTS), size=64)
    batch = next(iter(RenderedImageStream(64, seed=2, start=5)))
    assert torch.equal(batch["object"], torch.from_numpy(expected_objects))
    default = TinyWorldImageDataModule(batch_size=64, seed=2)
    default.load_state_dict({"position": 5})
    assert torch.equal(next(iter(default.train_dataloader()))["object"], batch["object"])


def test_object_weights_shift_the_training_mix_and_leave_validation_uniform():
    dm = TinyWorldImageDataModule(batch_size=256, seed=3, val_batches=1, object_weights={"star": 4, "tree": 4})
    stream = iter(dm.train_dataloader())
    objects = torch.cat([next(stream)["object"] for _ in range(8)])
    share = {name: (objects == OBJECTS.index(name)).float().mean().item() for name in ("star", "tree", "circle")}
    # Expected shares: 4/18 = 0.222 for star and tree, 1/18 = 0.056 for circle (2048 draws: sd ~0.009).
    assert 0.19 < share["star"] < 0.26 and 0.19 < share["tree"] < 0.26
    assert 0.03 < share["circle"] < 0.08
    held_out = next(iter(dm.val_dataloader()))
    uniform = next(iter(HeldOutImages(256, 1, 3)))
    assert torch.equal(held_out["object"], uniform["object"])


def test_weighted_batches_are_a_pure_function_of_seed_and_position():
    probs = object_probabilities({"star": 2.0})
    a = rendered_batch(16, seed=11, object_probs=probs)
    b = rendered_batch(16, seed=11, object_probs=probs)
    assert torch.equal(a["object"], b["object"]) and torch.equal(a["image"], b["image"])


def test_object_probabilities_are_normalised_with_unnamed_objects_at_weight_one():
    probs = object_probabilities({"tree": 3.0})
    assert probs is not None and probs.sum() == pytest.approx(1.0)
    assert probs[OBJECTS.index("tree")] == pytest.approx(3.0 / 14.0)
    assert probs[OBJECTS.index("moon")] == pytest.approx(1.0 / 14.0)
    assert object_probabilities(None) is None and object_probabilities({}) is None


@pytest.mark.parametrize(
    ("weights", "named"),
    [({"Star": 2.0}, "unknown objects ['Star']"), ({"star": 0.0}, "positive finite"), ({"tree": float("nan")}, "positive finite")],
)
def test_bad_object_weights_are_refused_with_the_name(weights, named):
    with pytest.raises(SettingsError, match=named.replace("[", r"\[").replace("]", r"\]")):
        TinyWorldImageDataModule(object_weights=weights)
