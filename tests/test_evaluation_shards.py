"""Distributed evaluation, in one process: shards of the evaluation summed equal the whole.

Process ``rank`` of ``world_size`` samples batches ``rank, rank + world_size, ...`` of one fixed
cut of the items; here each shard runs in turn (its ``sum`` is the identity) and the test adds
their counts and grid tiles itself, as the all-reduce does. Images are sampled in the same
batches as one process, so the sum equals the one-process evaluation bit for bit.
The real 2-process run (gloo, ``train.py``): ``tests/test_stream_ddp.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_unlearn.evaluation import EvaluationSettings, EvaluationShard, Evaluator, VocabularySubset, add_counts
from lightning_unlearn.requests import ConceptVocabulary, Request
from lightning_unlearn.tinyworld.backbone import TinyWorldBackbone
from lightning_unlearn.tinyworld.classifier import TinyWorldClassifier
from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES

VOCAB = ConceptVocabulary(styles=["Van Gogh", "Cartoon", "Monet"], objects=["circle", "star"])


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    backbone = TinyWorldBackbone()
    classifier = VocabularySubset(TinyWorldClassifier.load(), list(STYLES), list(OBJECTS), VOCAB)
    # 12 items (2 seeds x 6 prompts) in batches of 5: 3 batches, uneven across 2 ranks; 4 ranks leave one idle.
    return Evaluator(backbone, classifier, VOCAB, EvaluationSettings(steps=2, sampler="dpm++", batch_size=5,
                                                                     seeds_per_prompt=2))


class GridTiles:
    """A shard's ``sum``: records the uint8 grid tiles it is handed (the counts pass through)."""

    def __init__(self) -> None:
        self.tiles: list[torch.Tensor] = []

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dtype == torch.uint8:
            self.tiles.append(tensor.clone())
        return tensor


@pytest.mark.parametrize("world_size", [2, 4])
def test_shards_summed_equal_one_process_bit_for_bit(evaluator, world_size):
    unet = evaluator.backbone.unet
    whole, whole_grid = evaluator.evaluate(unet)
    total, tiles = None, []
    for rank in range(world_size):
        recorder = GridTiles()
        counts, _ = evaluator.evaluate(unet, shard=EvaluationShard(rank, world_size, sum=recorder))
        total = add_counts(total, counts)
        tiles += recorder.tiles
    assert set(total) == set(whole)
    for key in whole:
        assert torch.equal(total[key], whole[key]), key
    assert int(whole["count"].sum()) == 12
    # Each grid tile comes from one shard; the others contribute zeros.
    assert np.array_equal(evaluator.tile_grid(torch.stack(tiles).sum(0, dtype=torch.uint8)), whole_grid)
    # The one-process evaluation is the one the stream always made (sample, then count and draw).
    images = evaluator.sample(unet)
    assert np.array_equal(evaluator.grid(images), whole_grid)


def test_a_ua_check_shards_its_items_too(evaluator):
    unet = evaluator.backbone.unet
    items = evaluator.items_naming([Request("Cartoon", "style")], seeds=1)
    whole, grid = evaluator.evaluate(unet, items, grid=False)
    assert grid is None and int(whole["count"].sum()) == 2
    parts = [evaluator.evaluate(unet, items, EvaluationShard(rank, 2), grid=False)[0] for rank in range(2)]
    summed = add_counts(parts[0], parts[1])
    for key in whole:
        assert torch.equal(summed[key], whole[key]), key
    assert int(parts[0]["count"].sum()) == 2 and int(parts[1]["count"].sum()) == 0  # one batch: rank 1 adds zeros


def test_a_shard_outside_its_world_is_refused():
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2"):
        EvaluationShard(2, 2)
