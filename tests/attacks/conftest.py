"""A small tiny-world evaluator for the attack tests: 4 styles x 3 objects, 2 seeds, 6 DPM++ steps."""

from __future__ import annotations

import pytest

from lightning_unlearn.evaluation import EvaluationSettings, Evaluator, VocabularySubset
from lightning_unlearn.requests import ConceptVocabulary
from lightning_unlearn.tinyworld.backbone import TinyWorldBackbone
from lightning_unlearn.tinyworld.classifier import TinyWorldClassifier
from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES

STYLES_USED = ["Van Gogh", "Cartoon", "Monet", "Pop Art"]
OBJECTS_USED = ["circle", "star", "house"]


@pytest.fixture(scope="module")
def tiny_evaluator() -> Evaluator:
    """The shipped tiny UNet and classifier behind a small evaluation grid."""
    backbone = TinyWorldBackbone()
    vocabulary = ConceptVocabulary(STYLES_USED, OBJECTS_USED)
    classifier = VocabularySubset(TinyWorldClassifier.load(), list(STYLES), list(OBJECTS), vocabulary)
    settings = EvaluationSettings(steps=6, seeds_per_prompt=2, sampler="dpm++", reuse_base=False)
    return Evaluator(backbone, classifier, vocabulary, settings)
