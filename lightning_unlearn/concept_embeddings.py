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
    before = backbone.count_tokens(caption[:at].strip()) if caption[:at].strip() else 0
    inside = backbone.count_tokens((caption[:at] + concept).strip()) - before
    return 1 + before, 1 + before + inside


@torch.no_grad()
def concept_embeddings(
    backbone: Backbone, vocabulary: ConceptVocabulary, concepts: list[tuple[str, ConceptKind]]
) -> torch.Tensor:
    """[N, D] token-state means of each (concept, kind) in its concept-only caption."""
    captions = [vocabulary.templates.concept_prompt(c, k) for c, k in concepts]
    states, _ = backbone.encode_text(captions)
    rows = []
    for i, (caption, (concept, _)) in enumerate(zip(captions, concepts)):
        start, end = concept_token_span(backbone, caption, concept)
        rows.append(states[i, start:end].mean(0))
    return torch.stack(rows)


def cosine_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity of rows."""
    v = F.normalize(vectors.float(), dim=-1)
    return v @ v.T
