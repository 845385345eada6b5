"""Semantic analysis of one request: does forgetting follow text-embedding similarity?

After a request erases its target, for every retained concept this measures

- its text-embedding cosine similarity to the target (the closest one, if several are erased),
- its accuracy drop: its own classifier's accuracy on all its prompts, before - after,
- the relative change of the cross-attention key and value outputs for its short prompt,
  ||(W_after - W_before) H|| / ||W_before H|| pooled over every ``attn2.to_k`` (resp. ``to_v``),
  with H the prompt's token states,

and the Pearson correlations of similarity with drop and with the K/V change over the retained
concepts of the target's own kind (the paper reports r ~ -0.63 between similarity and retained
accuracy, i.e. a positive link between similarity and drop; cross-kind drops are near zero
and would only dilute it). "Before" is the model the request started from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_unlearn.backbone import Backbone
from lightning_unlearn.concept_embeddings import concept_embeddings, cosine_matrix
from lightning_unlearn.denoisers import cross_attention_inputs
from lightning_unlearn.requests import ConceptVocabulary, Request


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson r of two equally long sequences; ``None`` with < 3 points or a constant side."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


@torch.no_grad()
def kv_output_change(
    backbone: Backbone, before: nn.Module, after: nn.Module, captions: list[str]
) -> tuple[list[float], list[float]]:
    """Relative change of the cross-attention K and V outputs for each caption (pooled over layers)."""
    states, mask = backbone.encode_text(captions)
    # What the key/value weights multiply: a DiT's projected captions (the model before the request's).
    states = cross_attention_inputs(before, states).float()
    valid = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device) if mask is None else mask.bool()
    old = dict(before.named_parameters())
    num = {"to_k": torch.zeros(len(captions), dtype=torch.float64), "to_v": torch.zeros(len(captions), dtype=torch.float64)}
    den = {k: torch.zeros_like(v) for k, v in num.items()}
    for name, new_w in after.named_parameters():
        for which in ("to_k", "to_v"):
            if name.endswith(f"attn2.{which}.weight"):
                w0 = old[name].detach().float().to(states.device)
                delta = new_w.detach().float().to(states.device) - w0
                # [N, T, out]; padded positions contribute nothing.
                change = (states @ delta.T) * valid[..., None]
                base = (states @ w0.T) * valid[..., None]
                num[which] += change.pow(2).sum((1, 2)).double().cpu()
                den[which] += base.pow(2).sum((1, 2)).double().cpu()
    ratio = {k: (num[k] / den[k].clamp_min(1e-30)).sqrt().tolist() for k in num}
    return ratio["to_k"], ratio["to_v"]


def concept_accuracy(metrics: dict[str, Any], concept: str, kind: str) -> float:
    """A concept's own classifier accuracy over all its prompts, from a metrics.json record."""
    table = metrics["per_style"] if kind == "style" else metrics["per_object"]
    value = table.get(concept)
    return float("nan") if value is None else float(value)


def analyse_request(
    backbone: Backbone,
    vocabulary: ConceptVocabulary,
    before_unet: nn.Module,
    after_unet: nn.Module,
    erasing: Sequence[Request],
    erased_in_model: Sequence[Request],
    metrics_before: dict[str, Any],
    metrics_after: dict[str, Any],
) -> dict[str, Any]:
    """The record written to ``requests/NN-<concept>/semantic.json`` (see the module docstring)."""
    target = erasing[-1]
    gone = {r.concept for r in erased_in_model} | {r.concept for r in erasing}
    retained = [(c, "style") for c in vocabulary.styles if c not in gone]
    retained += [(c, "object") for c in vocabulary.objects if c not in gone]
    targets = [(r.concept, r.kind) for r in erasing]
    embeddings = concept_embeddings(backbone, vocabulary, [*targets, *retained])
    cos = cosine_matrix(embeddings)[len(targets) :, : len(targets)].max(dim=1).values.tolist()
    prompts = [vocabulary.templates.concept_prompt(c, k) for c, k in retained]
    k_change, v_change = kv_output_change(backbone, before_unet, after_unet, prompts)
    rows = []
    for (concept, kind), sim, dk, dv in zip(retained, cos, k_change, v_change):
        acc_before = concept_accuracy(metrics_before, concept, kind)
        acc_after = concept_accuracy(metrics_after, concept, kind)
        rows.append({
            "concept": concept, "kind": kind, "similarity": round(float(sim), 6),
            "accuracy_before": acc_before, "accuracy_after": acc_after,
            "drop": acc_before - acc_after if not (math.isnan(acc_before) or math.isnan(acc_after)) else float("nan"),
            "k_change": float(dk), "v_change": float(dv),
        })
    in_domain = [r for r in rows if r["kind"] == target.kind]
    return {
        "target": target.concept,
        "kind": target.kind,
        "erasing": [r.concept for r in erasing],
        "pearson_similarity_drop": pearson([r["similarity"] for r in in_domain], [r["drop"] for r in in_domain]),
        "pearson_similarity_kv": pearson(
            [r["similarity"] for r in in_domain], [(r["k_change"] + r["v_change"]) / 2 for r in in_domain]
        ),
        "correlation_over": f"retained {target.kind}s",
        "concepts": rows,
    }
