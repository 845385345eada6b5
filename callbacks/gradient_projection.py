"""Gradient projection: keep the cross-attention keys and values of protected concepts fixed.

A cross-attention key or value weight W ([out, d_text]) maps a text token state v to W v.
If every change of W is multiplied on the right by

    P = I - C (C^T C + lambda I)^-1 C^T,    C = [d_text x m] protected text directions,

then (W + dW P) v = W v for v in span(C) (up to the small ridge term lambda), so the model
computes the same keys and values for the protected concepts as before the request.

Protected directions, rebuilt per request, by ``basis`` (``lightning_unlearn.projection_bases``):

- ``similar`` (default): the embeddings (text-encoder token states at the concept's tokens in
  its short caption) of concepts whose cosine similarity to the target is at least
  ``similarity_threshold`` and/or that are among the ``top_n`` most similar, drawn from the
  datamodule's vocabulary (both kinds) or an explicit list, plus the concepts unlearned by
  earlier requests (so their erasure is not undone).
- ``reference_bank`` (the paper's reference code): the concepts unlearned by earlier requests,
  then a fixed bank of ``bank_size`` prompts over the vocabulary in both domains, minus the
  prompts that name a current target; one column per prompt, its concept tokens' states averaged.
  The similarity settings are not used.
- ``template``: the ``similar`` columns plus one per word the caption templates share ("a",
  "in", "style"), averaged over the retained concepts' captions, so the template's own keys and
  values stay fixed too.

Near-duplicates (cos > 0.95) are dropped in that order. lambda = max(1e-4, 1e-6 * trace(C^T C) / m).

Modes:
- ``gradient`` (the paper's): G <- G P in ``on_after_backward``. Linear, so exact under
  gradient accumulation, DDP and loss scaling; but Adam's elementwise rescaling and weight
  decay make the *applied* update leave the protected subspace.
- ``update``: remember W before each optimizer step and afterwards set
  W <- W_before + (W - W_before) P, which keeps W v fixed whatever the optimizer does.

LoRA requests (``--model.trainable=lora``): a layer computes (W + s B A) v, so the effective
update s B A leaves W v fixed for v in span(C) exactly when A C = 0 (B is free). The callback
therefore projects the adapter's A factor of every cross-attention key/value layer, never B:
A <- A P once when the request starts (peft draws A at random), then A's gradient (``gradient``)
or A's change per step (``update``) as above. Since A is [r, d_text] like W's input side, the
same X <- X P applies; in ``update`` mode A C stays at its (ridge-sized, ~lambda) start value, so
W_fused v moves by O(lambda) at most, whatever the optimizer does.

Stacked with callbacks that also edit these weights' gradients or values (top-k masks, anchors)
the constraint applied last wins exactly, the others approximately; put this callback last in
``trainer.callbacks`` to make the projection the exact one.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_unlearn.callbacks.base import RequestCallback
from lightning_unlearn.checks import at_least, in_interval
from lightning_unlearn.concept_embeddings import concept_embeddings
from lightning_unlearn.projection_bases import (
    BANK_SIZE, bank_embeddings, check_basis, reference_bank, template_word_embeddings,
)
from lightning_unlearn.requests import ConceptVocabulary, Request

PROJECTED_SUFFIXES = ("attn2.to_k.weight", "attn2.to_v.weight")
"""Parameters whose input is the text encoder's output: cross-attention keys and values."""

PROJECTED_LAYERS = ("attn2.to_k", "attn2.to_v")
"""Their layers: with LoRA, the adapter's A factors of these are projected."""


def projected_keys(pl_module: LightningModule) -> list[str]:
    """The trainable parameters whose right side meets the text states: the key/value weights
    of a full trainable set, or (LoRA) the A factors of the key/value layers' adapters."""
    keys = list(pl_module.trainable_keys)
    if getattr(pl_module, "lora", None) is None:
        return [k for k in keys if k.endswith(PROJECTED_SUFFIXES)]
    return [k for k in keys if ".lora_A." in k and k.split(".lora_A.")[0].endswith(PROJECTED_LAYERS)]

DUPLICATE_COSINE = 0.95
"""Protected directions closer than this to one already kept add nothing but ill-conditioning."""


def ridge_factors(directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, M) with P = I - C M for the columns of ``directions`` ([d_text, m]).

    M = (C^T C + lambda I)^-1 C^T, lambda = max(1e-4, 1e-6 * trace(C^T C) / m); solved in
    float64 because C^T C of nearby concepts is poorly conditioned.
    """
    c = directions.double()
    m = c.shape[1]
    gram = c.T @ c
    lam = max(1e-4, 1e-6 * float(torch.trace(gram)) / m)
    solve = torch.linalg.solve(gram + lam * torch.eye(m, dtype=gram.dtype, device=gram.device), c.T)
    return c.float(), solve.float()


def drop_near_duplicates(vectors: torch.Tensor, threshold: float = DUPLICATE_COSINE) -> list[int]:
    """Indices of rows kept greedily in order, skipping any with cosine > ``threshold`` to a kept one."""
    unit = F.normalize(vectors.float(), dim=-1)
    kept: list[int] = []
    for i in range(unit.shape[0]):
        if not kept or float((unit[kept] @ unit[i]).max()) <= threshold:
            kept.append(i)
    return kept


class GradientProjection(RequestCallback):
    """Project cross-attention K/V changes off the text directions of protected concepts."""

    # With LoRA it constrains A so that the effective update s B A is zero on the protected directions.
    supports_lora = True
    acts_on_training = "it projects the gradients (or updates) of the optimizer steps"

    def __init__(
        self,
        mode: Literal["gradient", "update"] = "gradient",
        similarity_threshold: float | None = 0.3,
        top_n: int | None = None,
        vocabulary: list[str] | None = None,
        protect_unlearned: bool = True,
        basis: str = "similar",
        bank_size: int = BANK_SIZE,
        name: str | None = None,
    ) -> None:
        """
        Args:
            mode: ``gradient`` projects G after backward (the paper); ``update`` projects the
                applied change after each optimizer step (exact under Adam and weight decay).
            similarity_threshold: protect concepts whose text-embedding cosine to the target is
                at least this; unset = no threshold.
            top_n: also protect the n concepts most similar to the target; unset = none.
            vocabulary: concepts to choose from (for a real model, its concept list); unset =
                the datamodule's styles and objects. A name the datamodule does not know is
                embedded in the caption template of the target's kind.
            protect_unlearned: also protect the concepts unlearned by earlier requests.
            basis: which directions to protect: ``similar`` (the concepts chosen by the settings
                above), ``reference_bank`` (a fixed bank of prompts over the vocabulary, as the
                paper's reference code; the similarity settings are unused) or ``template``
                (``similar`` plus the caption templates' shared words). See
                ``lightning_unlearn.projection_bases``.
            bank_size: prompts in the ``reference_bank`` before the targets' are dropped.
            name: distinguishes two instances of this class in checkpoints and logs.
        """
        super().__init__(name=name)
        if mode not in ("gradient", "update"):
            raise ValueError(f"mode must be 'gradient' or 'update', got {mode!r}")
        if top_n is not None:
            at_least(top_n, 0, "lightning_unlearn.callbacks.gradient_projection.GradientProjection init_args.top_n")
        if similarity_threshold is not None:
            # A cosine similarity: a threshold outside [-1, 1] protects everything or nothing.
            in_interval(similarity_threshold, -1, 1, "lightning_unlearn.callbacks.gradient_projection.GradientProjection "
                        "init_args.similarity_threshold", low_open=False)
        check_basis(basis, "lightning_unlearn.callbacks.gradient_projection.GradientProjection init_args.basis")
        at_least(bank_size, 1, "lightning_unlearn.callbacks.gradient_projection.GradientProjection init_args.bank_size")
        self.basis_name = basis
        self.bank_size = bank_size
        self.mode = mode
        self.similarity_threshold = similarity_threshold
        self.top_n = top_n
        self.vocabulary = list(vocabulary) if vocabulary is not None else None
        self.protect_unlearned = protect_unlearned
        self.protected: list[str] = []
        """What the current request protects, one label a column: a concept's name, a bank
        prompt's caption, or a template word (``'in' of 'a {object} in {style} style'``)."""
        self.basis: torch.Tensor | None = None
        """C, [d_text, m]."""
        self.solve: torch.Tensor | None = None
        """M = (C^T C + lambda I)^-1 C^T, [m, d_text]; P = I - C M."""
        self.keys: list[str] = []
        self._params: list[torch.nn.Parameter] = []
        self._before: list[torch.Tensor] = []
        self._stepped = False

    @property
    def state_key(self) -> str:
        if self.name:
            return super().state_key
        # The default basis adds nothing, so checkpoints written before the option still resume.
        other_basis = {} if self.basis_name == "similar" else {"basis": self.basis_name, "bank_size": self.bank_size}
        return self._generate_state_key(
            mode=self.mode, similarity_threshold=self.similarity_threshold, top_n=self.top_n,
            vocabulary=self.vocabulary, protect_unlearned=self.protect_unlearned, **other_basis,
        )

    @property
    def log_prefix(self) -> str:
        return self.name or f"projection_{self.mode}"

    def settings(self) -> dict[str, Any]:
        return {"mode": self.mode, "similarity_threshold": self.similarity_threshold, "top_n": self.top_n,
                "vocabulary": self.vocabulary, "protect_unlearned": self.protect_unlearned,
                "basis": self.basis_name, "bank_size": self.bank_size}

    @classmethod
    def describe(cls, settings: dict[str, Any]) -> str:
        """``projection (update, cos ≥ 0.3)``; the other choices only when they are set;
        ``projection (update, reference bank of 200)`` for the reference bank."""
        parts = [str(settings["mode"])]
        basis = settings.get("basis", "similar")
        if basis == "reference_bank":
            parts.append(f"reference bank of {int(settings.get('bank_size', BANK_SIZE))}")
            if not settings.get("protect_unlearned", True):
                parts.append("unlearned concepts not protected")
            return f"projection ({', '.join(parts)})"
        if settings.get("similarity_threshold") is not None:
            parts.append(f"cos ≥ {float(settings['similarity_threshold']):g}")
        if settings.get("top_n"):
            parts.append(f"{int(settings['top_n'])} most similar")
        if settings.get("vocabulary"):
            parts.append(f"from {len(settings['vocabulary'])} listed concepts")
        if not settings.get("protect_unlearned", True):
            parts.append("unlearned concepts not protected")
        if basis == "template":
            parts.append("+ template words")
        return f"projection ({', '.join(parts)})"

    def projector(self) -> torch.Tensor | None:
        """P = I - C M ([d_text, d_text]), or ``None`` when nothing is protected."""
        if self.basis is None or self.solve is None:
            return None
        eye = torch.eye(self.basis.shape[0], dtype=self.basis.dtype, device=self.basis.device)
        return eye - self.basis @ self.solve

    # -- choosing the protected directions -----------------------------------------------------
    def _request_concepts(self, trainer: Trainer, pl_module: LightningModule) -> tuple[
            ConceptVocabulary, Request, list[tuple[str, str]], list[tuple[str, str]]]:
        """The vocabulary, the current request, what this training erases and (with
        ``protect_unlearned``) the earlier erasures, as (concept, kind) pairs."""
        datamodule = getattr(trainer, "datamodule", None)
        # The stream's datamodule owns the vocabulary; a module used without one carries its own.
        vocab: ConceptVocabulary | None = (
            getattr(datamodule, "vocabulary", None) or getattr(pl_module, "vocabulary", None)
        )
        if vocab is None:
            raise ValueError(
                "GradientProjection needs the concept vocabulary: from trainer.datamodule or module.vocabulary"
            )
        target: Request = pl_module.current_request
        if target is None:
            raise ValueError("GradientProjection needs the current request: call module.begin_request first")
        # Everything this training erases is a target (several under the simultaneous protocol).
        targets = [(r.concept, r.kind) for r in (getattr(pl_module, "erasing", None) or [target])]
        target_names = {c for c, _ in targets}
        unlearned: list[tuple[str, str]] = []
        if self.protect_unlearned:
            # Erasures the starting weights carry (sequential: the earlier requests).
            unlearned = [(r.concept, r.kind) for r in getattr(pl_module, "already_erased", [])
                         if r.concept not in target_names]
        return vocab, target, targets, unlearned

    def protected_directions(self, trainer: Trainer, pl_module: LightningModule) -> tuple[list[str], torch.Tensor]:
        """Labels and embeddings [m, d_text] of the directions the current request protects,
        by ``basis``, near-duplicates dropped."""
        if self.basis_name == "reference_bank":
            return self._reference_bank_directions(trainer, pl_module)
        concepts, embeddings = self.protected_concepts(trainer, pl_module)
        labels = [c for c, _ in concepts]
        if self.basis_name == "template":
            vocab, _, targets, _ = self._request_concepts(trainer, pl_module)
            words, word_embeddings = template_word_embeddings(pl_module.backbone, vocab, {c for c, _ in targets})
            if words:
                labels += words
                embeddings = torch.cat([embeddings, word_embeddings.float().cpu()])
                kept = drop_near_duplicates(embeddings)
                labels, embeddings = [labels[i] for i in kept], embeddings[kept]
        return labels, embeddings

    def _reference_bank_directions(self, trainer: Trainer, pl_module: LightningModule) -> tuple[list[str], torch.Tensor]:
        """The earlier erasures, then the bank's prompts that name no current target."""
        vocab, _, targets, unlearned = self._request_concepts(trainer, pl_module)
        target_names = {c for c, _ in targets}
        if self.vocabulary is not None:
            # A listed vocabulary replaces the world's concepts in the bank (kinds from the world).
            listed = [c for c in dict.fromkeys(self.vocabulary)]
            vocab = ConceptVocabulary(
                styles=[c for c in listed if c in vocab.styles or (c not in vocab.objects and targets[0][1] == "style")],
                objects=[c for c in listed if c in vocab.objects or (c not in vocab.styles and targets[0][1] == "object")],
                templates=vocab.templates,
            )
        bank = [p for p in reference_bank(vocab, self.bank_size) if not target_names & set(p.mentions)]
        labels = [c for c, _ in unlearned] + [p.caption for p in bank]
        parts = []
        if unlearned:
            parts.append(concept_embeddings(pl_module.backbone, vocab, unlearned, attention_inputs=True).float().cpu())
        if bank:
            parts.append(bank_embeddings(pl_module.backbone, bank).float().cpu())
        if not parts:
            return [], torch.zeros(0, 0)
        embeddings = torch.cat(parts)
        kept = drop_near_duplicates(embeddings)
        return [labels[i] for i in kept], embeddings[kept]

    def protected_concepts(self, trainer: Trainer, pl_module: LightningModule) -> tuple[list[tuple[str, str]], torch.Tensor]:
        """(concept, kind) pairs the ``similar`` basis protects for the current request, and
        their embeddings [m, d_text]."""
        vocab, target, targets, unlearned = self._request_concepts(trainer, pl_module)
        target_names = {c for c, _ in targets}

        def kind_of(concept: str) -> str:
            if concept in vocab.styles or concept in vocab.objects:
                return vocab.kind_of(concept)
            return target.kind

        names = self.vocabulary if self.vocabulary is not None else [*vocab.styles, *vocab.objects]
        candidates = [(c, kind_of(c)) for c in dict.fromkeys(names) if c not in target_names]
        everything = [*targets, *candidates, *unlearned]
        # In the space attn2's keys and values read (a DiT's projected captions; a UNet's text states).
        embeddings = concept_embeddings(pl_module.backbone, vocab, everything, attention_inputs=True).float().cpu()
        unit = F.normalize(embeddings, dim=-1)
        nt = len(targets)
        # A candidate's similarity to the erased set is its similarity to the closest target.
        similarity = (unit[nt : nt + len(candidates)] @ unit[:nt].T).max(dim=1).values

        chosen: set[int] = set()
        if self.similarity_threshold is not None:
            chosen |= {i for i in range(len(candidates)) if float(similarity[i]) >= self.similarity_threshold}
        if self.top_n:
            chosen |= {int(i) for i in torch.argsort(similarity, descending=True, stable=True)[: self.top_n]}
        # Earlier erasures first: if one of them and a similar concept coincide, the erasure stays.
        ranked = [nt + len(candidates) + j for j in range(len(unlearned))]
        ranked += [nt + i for i in sorted(chosen, key=lambda i: (-float(similarity[i]), i))]
        order: list[int] = []
        for i in ranked:  # a concept both unlearned and similar is one direction
            if all(everything[j][0] != everything[i][0] for j in order):
                order.append(i)
        if not order:
            return [], embeddings[:0]
        kept = [order[j] for j in drop_near_duplicates(embeddings[order])]
        return [everything[i] for i in kept], embeddings[kept]

    # -- per request ---------------------------------------------------------------------------
    def on_request_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        params = dict(pl_module.unet.named_parameters())
        self.keys = projected_keys(pl_module)
        if not self.keys:
            rank_zero_warn(
                f"{self.log_prefix}: the trainable set {getattr(pl_module, 'trainable', '?')!r} holds no cross-attention "
                "key/value weight (attn2.to_k / attn2.to_v); nothing is projected"
            )
        self.protected, embeddings = self.protected_directions(trainer, pl_module)
        if not self.protected:
            self.basis = self.solve = None
        else:
            d_text = embeddings.shape[1]
            wrong = [k for k in self.keys if params[k].shape[-1] != d_text]
            if wrong:
                raise ValueError(
                    f"text embeddings have {d_text} dimensions but {wrong[0]} takes inputs of "
                    f"{params[wrong[0]].shape[-1]}: the text encoder does not match this UNet"
                )
            self.basis, self.solve = ridge_factors(embeddings.T)
            if getattr(pl_module, "lora", None) is not None:
                # The fresh adapter's A starts in the complement of span(C): A C = 0 from step 0.
                with torch.no_grad():
                    for key in self.keys:
                        a = params[key]
                        a.sub_((a @ self.basis.to(a.device, a.dtype)) @ self.solve.to(a.device, a.dtype))
        # A bank protects ~200 prompts: name the first few.
        shown = self.protected if len(self.protected) <= 12 else [*self.protected[:8], f"... {len(self.protected) - 8} more"]
        rank_zero_info(
            f"{self.log_prefix}: request {pl_module.current_request.concept!r} protects {len(self.protected)} "
            f"directions {shown} on {len(self.keys)} key/value weights"
        )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Inside fit the parameters sit on their device: bind them and move the factors there.
        params = dict(pl_module.unet.named_parameters())
        self._params = [params[k] for k in self.keys if params[k].requires_grad]
        if self.basis is not None and self._params:
            device = self._params[0].device
            self.basis, self.solve = self.basis.to(device), self.solve.to(device)
        self._before = [torch.empty_like(p) for p in self._params] if self.mode == "update" and self.basis is not None else []
        self._stepped = False

    def _project_(self, tensors: list[torch.Tensor]) -> None:
        """X <- X P = X - (X C) M in place, for each [out, d_text] tensor (two thin matmuls)."""
        for x in tensors:
            x.sub_((x @ self.basis.to(x.dtype)) @ self.solve.to(x.dtype))

    # -- per step ------------------------------------------------------------------------------
    @torch.no_grad()
    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.mode != "gradient" or self.basis is None:
            return
        self._project_([p.grad for p in self._params if p.grad is not None])

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if self.mode == "update" and self._before:
            torch._foreach_copy_(self._before, [p.detach() for p in self._params])
            self._stepped = True
        pl_module.log(f"{self.log_prefix}/protected_directions", float(len(self.protected)), on_step=True, on_epoch=False)

    @torch.no_grad()
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._stepped:  # gradient accumulation: no optimizer step in this batch
            return
        self._stepped = False
        # W_before + (W - W_before) P = W - ((W - W_before) C) M
        change = torch._foreach_sub([p.detach() for p in self._params], self._before)
        for p, d in zip(self._params, change):
            p.sub_((d @ self.basis.to(d.dtype)) @ self.solve.to(d.dtype))

    def on_request_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._params, self._before = [], []

    # -- checkpoints ---------------------------------------------------------------------------
    def request_records(self) -> dict[str, dict[str, Any]]:
        """``projection_<mode>.json``: the directions whose cross-attention keys and values the
        request kept fixed, one label each (by ``basis``: the similarity-selected concepts, the
        bank's prompts or the template's words and, with ``protect_unlearned``, the concepts
        erased before it, including those the starting model had erased)."""
        return {f"projection_{self.mode}": {"mode": self.mode, "basis": self.basis_name,
                                            "protected": list(self.protected)}}

    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "keys": list(self.keys), "protected": list(self.protected),
            "basis": None if self.basis is None else self.basis.cpu(),
            "solve": None if self.solve is None else self.solve.cpu(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.keys = list(state_dict["keys"])
        self.protected = list(state_dict["protected"])
        self.basis, self.solve = state_dict["basis"], state_dict["solve"]
