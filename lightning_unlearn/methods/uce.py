"""UCE (Unified Concept Editing, Gandikota et al., WACV 2024): a closed-form, training-free edit.

For every cross-attention key and value projection W (``attn2.to_k``, ``attn2.to_v``; shape
[out, d_text]) the edit solves

    W' = argmin  sum_e |W' c_e - W c_g(e)|^2 + lambda_p sum_p |W' c_p - W c_p|^2 + lambda |W' - W|_F^2
       = (sum_e W c_g(e) c_e^T + lambda_p sum_p W c_p c_p^T + lambda W)
         (sum_e c_e c_e^T + lambda_p sum_p c_p c_p^T + lambda I)^-1

with c = text-encoder token states: c_e of the erased concepts, c_g(e) the guide's state that
c_e is mapped onto, c_p of the preserved concepts. The erased concepts' keys and values become
the guide's, the preserved ones' stay, and the ridge term keeps W' near W. W is the weight the
request starts from, so under ``sequential`` the edits compose request by request.

Which token states (the reference code, ``train-scripts/train_erase.py`` of
rohitgandikota/unified-concept-editing, pairs the states from the concept's *last* token to the
end of the padded sequence with the guide prompt's, aligned from their last tokens, and preserves
every state of each preserved prompt). Here each erased concept is placed in captions
(``prompts``) and its guide caption is the same caption with the guide in its place; the pairs are

- the tokens before the concept with the guide caption's at the same positions (CLIP is causal,
  so these are identical and act as preservation; the tiny world's MiniLM is bidirectional, so
  they carry the concept too and must be mapped as well);
- every token of the concept with the guide's last token (the token just before the guide's
  place when the guide is empty: the start token for a bare concept prompt, as UCE's empty guide);
  for the concept's last token this is UCE's own pairing;
- the tokens after the concept with the guide caption's, aligned from the end of each span (UCE's
  alignment), up to the attended length (the mask's, else the padded length, as UCE).

Preserved captions contribute every attended token state, mapped onto itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from lightning_unlearn.checks import non_negative, positive
from lightning_unlearn.concept_embeddings import concept_token_span
from lightning_unlearn.denoisers import cross_attention_inputs
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.methods.base import UnlearningMethod
from lightning_unlearn.methods.context import MethodContext
from lightning_unlearn.requests import ConceptVocabulary, Request

if TYPE_CHECKING:
    from lightning_unlearn.backbone import Backbone

EDITED_PROJECTIONS: tuple[str, ...] = (".attn2.to_k.weight", ".attn2.to_v.weight")
"""Name endings of the weights UCE edits: every cross-attention key and value projection."""

PRESERVE_CHOICES: tuple[str, ...] = ("retained", "retained+erased", "none")
"""``preserve`` choices: see :class:`UCE`."""

PROMPT_CHOICES: tuple[str, ...] = ("concept", "full")
"""``prompts`` choices: see :class:`UCE`."""


def edited_keys(unet: nn.Module) -> list[str]:
    """Names of the UNet weights UCE edits (every ``attn2.to_k`` / ``attn2.to_v`` weight)."""
    return [name for name, _ in unet.named_parameters() if name.endswith(EDITED_PROJECTIONS)]


def edit_transform(
    erased: torch.Tensor, guide: torch.Tensor, preserved: torch.Tensor, preserve_weight: float, ridge: float,
) -> torch.Tensor:
    """T, [d, d], with W' = W T for *every* weight W of input width d.

    The solve's right-hand side is W (G^T E + lambda_p P^T P + lambda I) and its Gram matrix
    E^T E + lambda_p P^T P + lambda I holds no W, so one d x d solve serves all the
    cross-attention keys and values: T = (G^T E + lambda_p P^T P + lambda I)(E^T E + ...)^-1.

    Args:
        erased: E, [n_e, d]: the erased token states (rows).
        guide: G, [n_e, d]: the guide state each erased row is mapped onto.
        preserved: P, [n_p, d]: the preserved token states (n_p may be 0).
        preserve_weight: lambda_p.
        ridge: lambda (> 0 keeps the system invertible whatever the states).

    Returns:
        T in float64 (the Gram matrices of thousands of states lose digits in float32).
    """
    e, g, p = erased.double(), guide.double(), preserved.double()
    eye = torch.eye(e.shape[1], dtype=e.dtype, device=e.device)
    kept = preserve_weight * (p.T @ p) + ridge * eye
    gram = e.T @ e + kept
    # gram is symmetric: T = A gram^-1 <=> gram T^T = A^T.
    return torch.linalg.solve(gram, (g.T @ e + kept).T).T


def closed_form_edit(
    weight: torch.Tensor, erased: torch.Tensor, guide: torch.Tensor, preserved: torch.Tensor,
    preserve_weight: float, ridge: float,
) -> torch.Tensor:
    """W' = (W G^T E + lambda_p W P^T P + lambda W)(E^T E + lambda_p P^T P + lambda I)^-1 for one
    weight W [out, d] (rows of E, G, P are token states); in ``weight``'s dtype."""
    transform = edit_transform(erased, guide, preserved, preserve_weight, ridge)
    return (weight.double() @ transform).to(weight.dtype)


def attended_length(mask: torch.Tensor | None, row: int, padded: int) -> int:
    """Tokens of caption ``row`` the cross-attention sees: the mask's, else all (CLIP: padded)."""
    return padded if mask is None else int(mask[row].sum())


def caption_with(vocabulary: ConceptVocabulary, request: Request, text: str, other: str | None) -> str:
    """The caption naming ``text`` where ``request``'s concept goes (with ``other``, a concept of
    the other kind, for a full caption; ``None`` for the concept-only caption)."""
    templates = vocabulary.templates
    if other is None:
        return templates.concept_prompt(text, request.kind)
    return templates.caption(text, other) if request.kind == "style" else templates.caption(other, text)


def _span(backbone: Backbone, caption: str, text: str, placeholder: str) -> tuple[int, int]:
    """[start, end) tokens of ``text`` in ``caption``; for an empty ``text``, the empty span at the
    place ``placeholder`` (a caption with a marker instead) shows."""
    if text:
        return concept_token_span(backbone, caption, text)
    at = placeholder.find("\0")
    before = placeholder[:at].strip()
    start = 1 + (backbone.count_tokens(before) if before else 0)
    return start, start


class UCE(UnlearningMethod):
    """Unified Concept Editing: a closed-form edit of every cross-attention key/value; no training."""

    training_free = True

    def __init__(
        self,
        style_guide: str = "",
        object_guide: str = "",
        preserve: Literal["retained", "retained+erased", "none"] = "retained",
        preserve_weight: float = 0.1,
        ridge: float = 0.5,
        prompts: Literal["concept", "full"] = "full",
    ) -> None:
        """
        Args:
            style_guide: what an erased style's keys/values become: ``""`` (UCE's default guide:
                the empty text, i.e. the style-less caption) or another style of the vocabulary.
            object_guide: the same for an erased object: ``""`` or another object.
            preserve: concepts whose token states keep their keys/values: ``retained`` (every
                concept of the vocabulary, both kinds, not erased in the edited weights nor by this
                request), ``retained+erased`` (also the concepts erased by earlier requests: their
                current, erased outputs are held), ``none``.
            preserve_weight: lambda_p, the weight of each preserved state (UCE: 0.1).
            ridge: lambda, the pull of W' towards W (UCE's script: 0.5); must be > 0.
            prompts: captions the concepts are placed in: ``concept`` (the caption naming the
                concept alone, "a painting in Van Gogh style") or ``full`` (that one and every
                caption pairing it with each concept of the other kind, "a star in Van Gogh
                style", ...: the prompts users write).
        """
        if preserve not in PRESERVE_CHOICES:
            raise SettingsError(
                f"--model.method.init_args.preserve must be one of {', '.join(PRESERVE_CHOICES)}, got {preserve!r}")
        if prompts not in PROMPT_CHOICES:
            raise SettingsError(
                f"--model.method.init_args.prompts must be one of {', '.join(PROMPT_CHOICES)}, got {prompts!r}")
        non_negative(preserve_weight, "--model.method.init_args.preserve_weight")
        positive(ridge, "--model.method.init_args.ridge")
        self.style_guide, self.object_guide = style_guide, object_guide
        self.preserve, self.preserve_weight, self.ridge, self.prompts = preserve, preserve_weight, ridge, prompts

    # -- settings ------------------------------------------------------------------------------
    def guide_of(self, request: Request) -> str:
        """The guide text of ``request``'s kind (``""``: the empty guide)."""
        return self.style_guide if request.kind == "style" else self.object_guide

    def check_stream(self, backbone: Backbone, requests: Sequence[Request], vocabulary: ConceptVocabulary) -> None:
        """A guide must be empty or a concept of its kind in the vocabulary, and never erased."""
        guides = (("style", self.style_guide, "style_guide"), ("object", self.object_guide, "object_guide"))
        for kind, guide, option in guides:
            if not guide:
                continue
            known = vocabulary.concepts(kind)  # type: ignore[arg-type]
            if guide not in known:
                raise SettingsError(
                    f"--model.method.init_args.{option}: unknown guide {guide!r}: it must be empty (UCE's default) "
                    f"or one of the stream's {kind}s {known}"
                )
            if any(r.concept == guide for r in requests):
                raise SettingsError(
                    f"--model.method.init_args.{option}: the guide {guide!r} is itself erased by this stream; "
                    "pick a concept that stays, or the empty guide"
                )

    def edited_keys(self, unet: nn.Module) -> list[str]:
        """The UNet weights :meth:`edit` returns."""
        return edited_keys(unet)

    # -- the edit ------------------------------------------------------------------------------
    def loss(self, context: MethodContext, batch: dict[str, Any]) -> torch.Tensor:
        raise RuntimeError("UCE is training-free: the stream applies its edit() instead of training on a loss")

    def preserved_concepts(self, context: MethodContext) -> list[Request]:
        """The concepts whose states the edit keeps (see ``preserve``)."""
        if self.preserve == "none":
            return []
        vocabulary = context.vocabulary
        erasing = {(r.concept, r.kind) for r in context.erasing}
        erased = {(r.concept, r.kind) for r in context.already_erased}
        keep_erased = self.preserve == "retained+erased"
        return [
            Request(c, kind)  # type: ignore[arg-type]
            for kind in ("style", "object") for c in vocabulary.concepts(kind)  # type: ignore[arg-type]
            if (c, kind) not in erasing and (keep_erased or (c, kind) not in erased)
        ]

    def _others(self, vocabulary: ConceptVocabulary, request: Request) -> list[str | None]:
        other_kind = "object" if request.kind == "style" else "style"
        return [None, *(vocabulary.concepts(other_kind) if self.prompts == "full" else [])]  # type: ignore[arg-type]

    def erased_pairs(self, context: MethodContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(E, G): each erased token state and the guide state it is mapped onto, [n_e, d] each."""
        backbone, vocabulary = context.backbone, context.vocabulary
        erased_rows, guide_rows = [], []
        for request in context.erasing:
            guide = self.guide_of(request)
            others = self._others(vocabulary, request)
            captions = [caption_with(vocabulary, request, request.concept, o) for o in others]
            guides = [caption_with(vocabulary, request, guide, o) for o in others]
            markers = [caption_with(vocabulary, request, "\0", o) for o in others]
            states, mask = backbone.encode_text(captions)
            g_states, g_mask = backbone.encode_text(guides)
            # The rows W multiplies: a DiT's projected captions, a UNet's text states.
            states = cross_attention_inputs(context.unet, states)
            g_states = cross_attention_inputs(context.unet, g_states)
            padded = states.shape[1]
            for i, (caption, guide_caption, marker) in enumerate(zip(captions, guides, markers)):
                s_e, e_e = concept_token_span(backbone, caption, request.concept)
                s_g, e_g = _span(backbone, guide_caption, guide, marker)
                length_e = attended_length(mask, i, padded)
                length_g = attended_length(g_mask, i, padded)
                pairs = [(j, j) for j in range(s_e)]  # the prefix (same text)
                pairs += [(j, e_g - 1) for j in range(s_e, e_e)]  # the concept -> the guide's last token
                after = min(length_e - e_e, length_g - e_g)
                pairs += [(e_e + j, e_g + j) for j in range(after)]  # the suffix, aligned from the span's end
                erased_rows.append(states[i, [a for a, _ in pairs]])
                guide_rows.append(g_states[i, [b for _, b in pairs]])
        return torch.cat(erased_rows), torch.cat(guide_rows)

    def preserved_states(self, context: MethodContext) -> torch.Tensor:
        """P: every attended token state of the preserved concepts' captions, [n_p, d]."""
        backbone, vocabulary = context.backbone, context.vocabulary
        concepts = self.preserved_concepts(context)
        captions = list(dict.fromkeys(
            caption_with(vocabulary, r, r.concept, o) for r in concepts for o in self._others(vocabulary, r)
        ))
        width = cross_attention_inputs(context.unet, backbone.encode_text([""])[0]).shape[-1]
        if not captions:
            return torch.zeros(0, width)
        states, mask = backbone.encode_text(captions)
        states = cross_attention_inputs(context.unet, states)
        rows = [states[i, : attended_length(mask, i, states.shape[1])] for i in range(len(captions))]
        return torch.cat(rows)

    @torch.no_grad()
    def edit(self, context: MethodContext) -> dict[str, torch.Tensor]:
        """New values of every cross-attention key/value weight (the closed-form solve, per weight)."""
        erased, guide = self.erased_pairs(context)
        preserved = self.preserved_states(context)
        params = dict(context.unet.named_parameters())
        device = params[edited_keys(context.unet)[0]].device
        transform = edit_transform(erased.to(device), guide.to(device), preserved.to(device),
                                   self.preserve_weight, self.ridge)
        return {name: (params[name].detach().double() @ transform).to(params[name].dtype)
                for name in edited_keys(context.unet)}
