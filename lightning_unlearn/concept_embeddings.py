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
from lightning_unlearn.denoisers import cross_attention_inputs
from lightning_unlearn.prompts import ConceptKind
from lightning_unlearn.requests import ConceptVocabulary


def concept_token_span(backbone: Backbone, caption: str, concept: str) -> tuple[int, int]:
    """[start, end) token positions of ``concept`` inside ``caption`` (after the leading special
    tokens, if the tokenizer puts any)."""
    at = caption.find(concept)
    if at < 0:
        raise ValueError(f"concept {concept!r} does not occur in caption {caption!r}")
    return text_token_span(backbone, caption, at, at + len(concept))


def text_token_span(backbone: Backbone, caption: str, start: int, end: int) -> tuple[int, int]:
    """[start, end) token positions of the characters ``caption[start:end]`` (whole words), after
    the leading special tokens (if the tokenizer puts any): the tokens of the text before them,
    then their own."""
    before = backbone.count_tokens(caption[:start].strip()) if caption[:start].strip() else 0
    inside = backbone.count_tokens(caption[:end].strip()) - before
    lead = backbone.leading_special_tokens
    return lead + before, lead + before + inside


@torch.no_grad()
def concept_embeddings(
    backbone: Backbone, vocabulary: ConceptVocabulary, concepts: list[tuple[str, ConceptKind]],
    attention_inputs: bool = False,
) -> torch.Tensor:
    """[N, D] token-state means of each (concept, kind) in its concept-only caption
    (``attention_inputs``: see :func:`phrase_embeddings`)."""
    return phrase_embeddings(backbone, [(vocabulary.templates.concept_prompt(c, k), c) for c, k in concepts],
                             attention_inputs)


@torch.no_grad()
def phrase_embeddings(backbone: Backbone, prompts: list[tuple[str, str]], attention_inputs: bool = False
                      ) -> torch.Tensor:
    """[N, D]: for each (caption, phrase), the mean of the encoder's token states at the phrase's
    tokens (its first occurrence) in that caption.

    ``attention_inputs``: the states as the denoiser's cross-attention keys and values take them
    (after a DiT's caption projection; the text encoder's states themselves on a UNet), so that
    a direction here is one ``attn2.to_k`` / ``to_v`` multiplies.
    """
    if not prompts:
        raise ValueError("phrase_embeddings needs at least one (caption, phrase)")
    captions = [caption for caption, _ in prompts]
    states, _ = backbone.encode_text(captions)
    if attention_inputs:
        states = cross_attention_inputs(backbone.unet, states)
    rows = []
    for i, (caption, phrase) in enumerate(prompts):
        start, end = concept_token_span(backbone, caption, phrase)
        rows.append(states[i, start:end].mean(0))
    return torch.stack(rows)


def cosine_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity of rows."""
    v = F.normalize(vectors.float(), dim=-1)
    return v @ v.T
