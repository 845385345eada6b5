import numpy as np
import pytest

from lightning_unlearn.prompts import PromptTemplates
from lightning_unlearn.datamodules.concept_stream import ConceptStreamDataModule
from lightning_unlearn.requests import ConceptVocabulary
from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES, concept_kind, tiny_vocabulary
from lightning_unlearn.tinyworld.renderer import render, render_batch


def test_same_seed_same_pixels_other_seed_other_pose():
    a = render("Van Gogh", "star", seed=7)
    b = render("Van Gogh", "star", seed=7)
    c = render("Van Gogh", "star", seed=8)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_world_size_and_every_pair_renders():
    assert len(STYLES) >= 16 and len(OBJECTS) >= 12
    s = np.repeat(np.arange(len(STYLES)), len(OBJECTS))
    o = np.tile(np.arange(len(OBJECTS)), len(STYLES))
    images = render_batch(s, o, seed=0)
    assert images.shape == (len(s), 32, 32, 3)
    assert np.array_equal(images, render_batch(s, o, seed=0))


def test_styles_differ_in_colour_and_objects_in_shape():
    n = 24
    means = []
    for i in range(len(STYLES)):
        imgs = render_batch([i] * n, list(np.arange(n) % len(OBJECTS)), seed=1).astype(np.float32)
        means.append(imgs.reshape(-1, 3).mean(0))
    means = np.stack(means)
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1) + np.eye(len(STYLES)) * 1e9
    assert dist.min() > 8.0, "two styles share a palette"
    # The same style and pose seed, different objects: the silhouettes differ.
    shapes = render_batch([8] * len(OBJECTS), list(range(len(OBJECTS))), seed=3)
    for i in range(len(OBJECTS)):
        for j in range(i + 1, len(OBJECTS)):
            assert np.abs(shapes[i].astype(int) - shapes[j].astype(int)).mean() > 3


def test_captions_and_kinds():
    t = PromptTemplates()
    assert t.caption("Van Gogh", "star") == "a star in Van Gogh style"
    assert t.concept_prompt("Van Gogh", "style") == "a painting in Van Gogh style"
    assert t.concept_prompt("star", "object") == "a star"
    assert t.caption(None, None) == ""
    assert concept_kind("Monet") == "style" and concept_kind("moon") == "object"
    with pytest.raises(ValueError, match="unknown tiny-world concept 'Rembrandt'"):
        concept_kind("Rembrandt")


def test_the_tiny_world_supplies_the_vocabulary_generic_code_no_longer_defaults_to():
    vocab = tiny_vocabulary()
    assert (vocab.styles, vocab.objects, vocab.templates) == (list(STYLES), list(OBJECTS), PromptTemplates())
    vocab.styles.append("Extra")  # each call is a fresh object: no caller can edit another's
    assert tiny_vocabulary().styles == list(STYLES)
    # The stream's default vocabulary (what the CLI serves without --data.styles) is unchanged.
    assert ConceptStreamDataModule().vocabulary == tiny_vocabulary()
    with pytest.raises(TypeError):  # generic: a vocabulary names its world's concepts explicitly
        ConceptVocabulary()  # type: ignore[call-arg]

