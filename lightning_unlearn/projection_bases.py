"""The text directions gradient projection can protect beyond the similar concepts: a reference
bank of prompts, and the shared words of the caption templates.

Gradient projection (``lightning_unlearn.callbacks.gradient_projection``) keeps W v fixed for
the columns v of a basis C. Its ``basis`` option chooses C:

- ``similar`` (default): the concepts most similar to the target (cosine of their embeddings),
  plus the concepts erased before; chosen in the callback.
- ``reference_bank``: as the paper's reference code builds C. A bank of :data:`BANK_SIZE`
  prompts is generated once, deterministically, from the vocabulary (:func:`reference_bank`);
  the prompts that name a current target are dropped, and the concepts erased before are added.
  Each prompt gives one column: the text-encoder states of its concept's tokens, averaged.
- ``template``: the ``similar`` columns plus one column per word the caption templates share
  (:func:`template_word_embeddings`: "a", "in", "style" of "a {object} in {style} style"), so
  the keys and values of the template itself stay fixed too.

In every basis near-duplicate columns (cosine > 0.95) are then dropped in order and the ridge
term is the callback's (lambda = max(1e-4, 1e-6 trace(C^T C) / m)).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from itertools import zip_longest

import torch

from lightning_unlearn.backbone import Backbone
from lightning_unlearn.concept_embeddings import phrase_embeddings, text_token_span
from lightning_unlearn.denoisers import cross_attention_inputs
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.prompts import ConceptKind
from lightning_unlearn.requests import ConceptVocabulary

BASES = ("similar", "reference_bank", "template")
"""The choices of ``GradientProjection(basis=...)``."""

BANK_SIZE = 200
"""Prompts in the reference bank before the targets' are dropped: the reference code's ~200."""

REFERENCE_TEMPLATES: dict[ConceptKind, str] = {
    "style": "An image in the style of {style}",
    "object": "An image of a {object}",
}
"""The reference code's two bank templates (round 0 of the bank)."""

VARIANT_TEMPLATES: dict[ConceptKind, str] = {
    "style": "a picture in the style of {style}",
    "object": "a photo of a {object}",
}
"""One more wording per kind (round 2 of the bank)."""


class ProjectionBasisError(SettingsError):
    """``GradientProjection(basis=...)`` names no basis this project builds."""


def check_basis(basis: str, option: str) -> None:
    """A :class:`ProjectionBasisError` unless ``basis`` is one of :data:`BASES`."""
    if basis not in BASES:
        raise ProjectionBasisError(f"{option} must be one of {list(BASES)}, got {basis!r}")


@dataclass(frozen=True)
class BankPrompt:
    """One prompt of the reference bank: its caption, the concept whose tokens give its column,
    and every concept the caption names (a prompt naming a target is left out)."""

    caption: str
    concept: str
    kind: ConceptKind
    mentions: tuple[str, ...]


def _interleaved(vocabulary: ConceptVocabulary) -> list[tuple[str, ConceptKind, int]]:
    """(concept, kind, index within its kind), styles and objects alternating: both domains
    come early whatever the list lengths."""
    pairs = zip_longest(enumerate(vocabulary.styles), enumerate(vocabulary.objects))
    out: list[tuple[str, ConceptKind, int]] = []
    for style, obj in pairs:
        if style is not None:
            out.append((style[1], "style", style[0]))
        if obj is not None:
            out.append((obj[1], "object", obj[0]))
    return out


def reference_bank(vocabulary: ConceptVocabulary, size: int = BANK_SIZE) -> list[BankPrompt]:
    """The first ``size`` prompts of the bank, in rounds over every concept (styles and objects
    alternating, vocabulary order):

    - round 0: the reference's templates ("An image in the style of {style}", "An image of a
      {object}");
    - round 1: the vocabulary's own one-concept captions ("a painting in {style} style", "a {object}");
    - round 2: "a picture in the style of {style}", "a photo of a {object}";
    - round 3 + j: the full caption with a partner of the other kind: the i-th style with
      object (i + j) mod n_objects, the i-th object with style (i + j) mod n_styles, or the next
      partner after it whose (style, object) pair no earlier prompt used (no caption repeats).

    On the tiny world (16 styles, 12 objects: 28 concepts a round) that is 7 full rounds and the
    first 4 concepts of round 7. A vocabulary of 200 or more concepts gives one reference-template
    prompt per concept, as the reference does. The bank is the same for every request; the
    caller drops the prompts that name a target.
    """
    concepts = _interleaved(vocabulary)
    templates = vocabulary.templates
    rounds = 3 + max(len(vocabulary.styles), len(vocabulary.objects))
    bank: list[BankPrompt] = []
    used: set[tuple[str, str]] = set()
    for round_ in range(rounds):
        for concept, kind, index in concepts:
            if len(bank) >= size:
                return bank
            others = vocabulary.objects if kind == "style" else vocabulary.styles
            mentions: tuple[str, ...] = (concept,)
            if round_ == 0:
                caption = REFERENCE_TEMPLATES[kind].format(**{kind: concept})
            elif round_ == 1:
                caption = templates.concept_prompt(concept, kind)
            elif round_ == 2:
                caption = VARIANT_TEMPLATES[kind].format(**{kind: concept})
            elif round_ - 3 < len(others):
                # The next partner whose pair no earlier prompt used: every caption is new.
                shifts = ((index + round_ - 3 + t) % len(others) for t in range(len(others)))
                pairs = ((concept, others[i]) if kind == "style" else (others[i], concept) for i in shifts)
                pair = next((pair for pair in pairs if pair not in used), None)
                if pair is None:
                    continue
                used.add(pair)
                mentions = pair if kind == "style" else pair[::-1]
                caption = templates.caption(*pair)
            else:
                continue
            bank.append(BankPrompt(caption, concept, kind, mentions))
    return bank


def bank_embeddings(backbone: Backbone, bank: list[BankPrompt]) -> torch.Tensor:
    """[len(bank), D]: each prompt's concept-token states, averaged, as cross-attention reads them
    (a DiT's projected captions; a UNet's text states)."""
    return phrase_embeddings(backbone, [(p.caption, p.concept) for p in bank], attention_inputs=True)


def template_words(template: str, values: dict[str, str]) -> tuple[str, list[tuple[str, int, int]]]:
    """The caption ``template`` gives with ``values``, and (word, start, end) of each word of the
    template's own text (not of the substituted concepts), by character position."""
    caption = ""
    words: list[tuple[str, int, int]] = []
    for literal, field, _, _ in string.Formatter().parse(template):
        for match in re.finditer(r"\S+", literal):
            words.append((match.group(), len(caption) + match.start(), len(caption) + match.end()))
        caption += literal
        if field is not None:
            caption += values[field]
    return caption, words


@torch.no_grad()
def template_word_embeddings(
    backbone: Backbone, vocabulary: ConceptVocabulary, excluded: set[str]
) -> tuple[list[str], torch.Tensor]:
    """Labels and [m, D] embeddings of the caption templates' own words.

    For each template of the vocabulary (the full caption, the style-only and the object-only
    one) and each word it writes itself ("a", "in", "style" of "a {object} in {style} style"),
    one column: that word's token states averaged over its tokens and over every caption the
    template makes from concepts not in ``excluded`` (the full caption: every retained style x
    object pair). Labels read ``'in' of 'a {object} in {style} style'``.
    """
    styles = [s for s in vocabulary.styles if s not in excluded]
    objects = [o for o in vocabulary.objects if o not in excluded]
    templates = vocabulary.templates
    fillings = {
        templates.full: [{"style": s, "object": o} for s in styles for o in objects],
        templates.style_only: [{"style": s} for s in styles],
        templates.object_only: [{"object": o} for o in objects],
    }
    labels: list[str] = []
    rows: list[torch.Tensor] = []
    for template, values in fillings.items():
        if not values:
            continue
        filled = [template_words(template, v) for v in values]
        if not filled[0][1]:
            continue  # a template that is only a placeholder shares no word
        states, _ = backbone.encode_text([caption for caption, _ in filled])
        # In the space attn2's keys and values read (a DiT's projected captions; a UNet's text states).
        states = cross_attention_inputs(backbone.unet, states)
        for w, (word, _, _) in enumerate(filled[0][1]):
            means = []
            for i, (caption, words) in enumerate(filled):
                start, end = text_token_span(backbone, caption, words[w][1], words[w][2])
                means.append(states[i, start:end].mean(0))
            labels.append(f"{word!r} of {template!r}")
            rows.append(torch.stack(means).mean(0))
    if not rows:
        return [], torch.zeros(0, 0)
    return labels, torch.stack(rows)
