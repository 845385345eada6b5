"""Text embeddings of concepts: the encoder's token states at the concept's own tokens.

A bare name embeds badly (MiniLM splits "Monet" into "mon ##et"), so each concept is placed
in its short caption ("a painting in Monet style", "a star") and the states of its tokens are
averaged. These vectors span the directions gradient projection protects, and measure the
semantic similarity the paper links to forgetting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_unlearn.backbone import Backbone
from lightning_unlearn.prompts import ConceptKind
from lightning_unlearn.requests import ConceptVocabulary


def concept_token_span(backbone: Backbone, caption: str, concept: str) -> tuple[int, int]:
    """[start, end) token positions of ``concept`` inside ``caption`` (after the leading special token)."""
    at = caption.find(concept)
    if at < 0:
        raise ValueError(f"concept {concept!r} does not occur in caption {caption!r}")
    return text_token_span(backbone, caption, at, at + len(concept))


def text_token_span(backbone: Backbone, caption: str, start: int, end: int) -> tuple[int, int]:
    """[start, end) token positions of the characters ``caption[start:end]`` (whole words), after
    the leading special token: the tokens of the text before them, then their own."""
    before = backbone.count_tokens(caption[:start].strip()) if caption[:start].strip() else 0
    inside = backbone.count_tokens(caption[:end].strip()) - before
    return 1 + before, 1 + before + inside


@torch.no_grad()
def concept_embeddings(
    backbone: Backbone, vocabulary: ConceptVocabulary, concepts: list[tuple[str, ConceptKind]]
) -> torch.Tensor:
    """[N, D] token-state means of each (concept, kind) in its concept-only caption."""
    return phrase_embeddings(backbone, [(vocabulary.templates.concept_prompt(c, k), c) for c, k in concepts])


@torch.no_grad()
def phrase_embeddings(backbone: Backbone, prompts: list[tuple[str, str]]) -> torch.Tensor:
    """[N, D]: for each (caption, phrase), the mean of the encoder's token states at the phrase's
    tokens (its first occurrence) in that caption."""
    if not prompts:
        raise ValueError("phrase_embeddings needs at least one (caption, phrase)")
    captions = [caption for caption, _ in prompts]
    states, _ = backbone.encode_text(captions)
    rows = []
    for i, (caption, phrase) in enumerate(prompts):
        start, end = concept_token_span(backbone, caption, phrase)
        rows.append(states[i, start:end].mean(0))
    return torch.stack(rows)


def cosine_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity of rows."""
    v = F.normalize(vectors.float(), dim=-1)
    return v @ v.T
