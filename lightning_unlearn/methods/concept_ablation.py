"""Concept Ablation (model-based): make the target concept's captions predict what the
anchor concept's captions predict, on images of the anchor.

    L = || eps_theta(x_t, c_target, t) - sg[ eps_theta(x_t, c_anchor, t) ] ||^2,
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,   x_0 an anchor image,

on an epsilon model; on a flow model eps_theta is the predicted velocity and
x_t = (1 - t/T) x_0 + (t/T) eps (the backbone's objective noises; the target is the anchor
branch's output either way).

where ``(c_anchor, c_target)`` is a caption pair that differs only in the concept: for an
object the anchor word is replaced by the target ("a diamond in Monet style" -> "a star in
Monet style"); for a style the style phrase is added to a plain caption ("a star" -> "a star
in Van Gogh style"). The stop-gradient target comes from the *current* model, so the anchor's
own behaviour is what the target is pulled onto.

Anchor images are generated once by the *base* model (the pretrained weights, not the
checkpoint the request starts from) with guided DDIM from the anchor captions, and kept as
latents. They are cached in memory and as safetensors under ``cache_dir`` (default: the
context's ``cache_dir``, which the stream sets to ``<run_dir>/../.anchor_cache``), keyed by everything
that determines them -- the anchor captions, the number of images, the sampler settings, the
seed and a fingerprint of the base weights and text encoder -- so every request that shares an
anchor, and every later run on the same base, reuses them, and a different base never does.

The method trains on its own caption pairs; the stream's training captions (``batch["caption"]``)
are not used, only the batch's seeds, which make every draw (anchor image, timestep, noise)
deterministic. Concept Ablation is usually trained on the cross-attention keys and values:
``--model.trainable=kv-xattn``.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_unlearn.atomic_io import load_weights, save_weights
from lightning_unlearn.checks import at_least, closest_name, did_you_mean, non_negative
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.fingerprint import base_fingerprint
from lightning_unlearn.methods.base import UnlearningMethod
from lightning_unlearn.methods.context import MethodContext
from lightning_unlearn.requests import ConceptVocabulary, Request
from lightning_unlearn.sampling import TextCondition, ddim_sample, predict_noise, seeded_noise

if TYPE_CHECKING:
    from lightning_unlearn.backbone import Backbone

#: Tiny-world anchor of each object: a similar-looking shape, so the erased object turns into a
#: plausible neighbour rather than into noise. Where the default 8-request object stream allows,
#: the anchor is one of the shapes it leaves to retain (square, cross, ring, diamond).
DEFAULT_OBJECT_ANCHORS: dict[str, str] = {
    "circle": "ring",  # round outline
    "ring": "circle",
    "square": "diamond",  # the same quadrilateral, turned
    "diamond": "square",
    "triangle": "diamond",  # pointed convex polygon
    "star": "cross",  # radial arms
    "cross": "star",
    "heart": "circle",  # rounded blob
    "moon": "ring",  # curved band
    "arrow": "triangle",  # its head is a triangle
    "house": "square",  # a square body under a roof
    "tree": "triangle",  # stacked triangular tiers
}

CACHE_FORMAT = 1
"""Bumped whenever the cached content changes meaning, so old files are never misread."""


def concept_ablation_loss(eps_target: torch.Tensor, eps_anchor: torch.Tensor) -> torch.Tensor:
    """mean || eps_target - sg[eps_anchor] ||^2: only the target branch receives gradient."""
    return F.mse_loss(eps_target.float(), eps_anchor.detach().float())


def anchor_concept(request: Request, anchors: Mapping[str, str]) -> str | None:
    """The concept ``request`` is mapped onto; ``None`` means "no style" (a plain caption).

    Objects must have an anchor (``anchors`` or :data:`DEFAULT_OBJECT_ANCHORS`); styles map to
    the plain, style-less caption unless ``anchors`` names another style.
    """
    anchor = anchors.get(request.concept)
    if request.kind == "style":
        anchor = anchor or None
    elif not anchor:
        raise SettingsError(
            f"Concept Ablation has no anchor for the object {request.concept!r}: "
            f"add it to --model.method.init_args.anchors (target: anchor object)"
        )
    if anchor == request.concept:
        raise SettingsError(
            f"--model.method.init_args.anchors: the anchor of {request.concept!r} is the concept itself; choose another one"
        )
    return anchor


def caption_pairs(
    request: Request, vocabulary: ConceptVocabulary, anchors: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """Aligned (anchor captions, target captions) for ``request``, varied over the other kind.

    Style S with anchor A (``None`` = plain): ``caption(A, o)`` -> ``caption(S, o)`` for every
    object o. Object T with anchor A: ``caption(s, A)`` -> ``caption(s, T)`` for every style s
    and for no style ("a diamond" -> "a star"), the caption the object is usually prompted by.
    """
    templates = vocabulary.templates
    anchor = anchor_concept(request, anchors)
    if request.kind == "style":
        pairs = [(templates.caption(anchor, o), templates.caption(request.concept, o)) for o in vocabulary.objects]
    else:
        styles: list[str | None] = [None, *vocabulary.styles]
        pairs = [(templates.caption(s, anchor), templates.caption(s, request.concept)) for s in styles]
    return [a for a, _ in pairs], [t for _, t in pairs]


def anchor_cache_key(
    captions: Sequence[str], num_images: int, sampler: Mapping[str, Any], seed: int, fingerprint: str
) -> str:
    """sha256 naming one anchor set: equal keys mean bit-for-bit the same generation recipe."""
    recipe = {
        "format": CACHE_FORMAT,
        "captions": list(captions),
        "num_images": int(num_images),
        "sampler": dict(sampler),
        "seed": int(seed),
        "base": fingerprint,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-") or "plain"


class ConceptAblation(UnlearningMethod):
    """Concept Ablation: map the target concept onto an anchor concept, on base-model anchor images.

    Anchors are checked when the stream starts, before any work or file (:meth:`check_stream`):

    - every object requested needs an anchor, and no concept may be its own anchor;
    - a target named in ``anchors`` that is a near-miss of a vocabulary concept is refused (a
      misspelt target would silently leave its request on the default anchor); other targets
      outside the vocabulary are allowed, so one anchor map can serve streams over subsets;
    - an anchor that is a concept of the vocabulary must be of the request's kind (a style's
      anchor a style, an object's an object: the captions swap one word for the other);
    - an anchor outside the vocabulary is refused on the tiny world, whose UNet has only ever
      seen its own styles and objects (anchor images of anything else are noise), and allowed
      on a real model, whose text encoder knows far more concepts than the stream scores
      ("horse" for "zebra") -- unless it is a near-miss of a vocabulary concept (equal but for
      case, spaces or hyphens, or, for names of six letters or more, one or two letters off:
      "Van gogh", "Picaso"), which is a typo and is refused with "did you mean ...?".
    """

    def __init__(
        self,
        anchors: dict[str, str] | None = None,
        images_per_anchor: int = 64,
        ddim_steps: int = 25,
        guidance: float = 4.0,
        sample_batch: int = 64,
        cache_dir: str | None = None,
    ) -> None:
        """
        Args:
            anchors: target concept -> anchor concept, over the tiny-world defaults (every object
                to a similar-looking object). Objects need one; a style without one maps to the
                plain, style-less caption.
            images_per_anchor: anchor images generated per anchor caption set (spread evenly
                over its captions; the reference uses about 200).
            ddim_steps: DDIM steps of the base model's anchor generation.
            guidance: classifier-free guidance of the anchor generation.
            sample_batch: anchor images generated together.
            cache_dir: folder of the anchor cache; unset = the request's cache folder
                (``<run_dir>/../.anchor_cache`` in a stream; in memory only when there is none).
        """
        option = "--model.method.init_args."
        at_least(images_per_anchor, 1, option + "images_per_anchor")
        at_least(ddim_steps, 1, option + "ddim_steps")
        non_negative(guidance, option + "guidance")
        at_least(sample_batch, 1, option + "sample_batch")
        self.user_anchors: dict[str, str] = dict(anchors or {})
        """The anchors the user gave (checked against the vocabulary by :meth:`check_stream`)."""
        self.anchors: dict[str, str] = {**DEFAULT_OBJECT_ANCHORS, **self.user_anchors}
        self.images_per_anchor = images_per_anchor
        self.ddim_steps = ddim_steps
        self.guidance = guidance
        self.sample_batch = sample_batch
        self.cache_dir = cache_dir
        self.anchor_captions: list[str] = []
        self.target_captions: list[str] = []
        self.latents: torch.Tensor | None = None
        """Anchor latents x_0 of the current request, [N, C, H, W] on the CPU."""
        self.caption_index: torch.Tensor | None = None
        """Which caption pair each anchor latent belongs to, [N]."""
        self.anchor_source: Literal["memory", "disk", "generated"] | None = None
        """Where the current request's anchors came from (for logs and tests)."""
        # Anchor sets by cache key: requests sharing an anchor skip even the disk read.
        self._memory: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # Base fingerprints by trained UNet, one per module (weak: a dead UNet's entry must not
        # outlive it). Keyed by the UNet, not by the context: a context lives one request.
        self._fingerprints: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()

    def check_stream(self, backbone: Backbone, requests: Sequence[Request], vocabulary: ConceptVocabulary) -> None:
        """Refuse, naming it, an anchor this stream cannot use (the rules in the class docstring)."""
        option = "--model.method.init_args.anchors"
        known = [*vocabulary.styles, *vocabulary.objects]
        for target in self.user_anchors:
            # A shared anchor map (a config's) may name more concepts than one stream's vocabulary
            # holds; a near-miss of a known concept, though, is a typo that leaves it unanchored.
            hint = did_you_mean(target, known)
            if target not in known and hint:
                raise SettingsError(
                    f"{option} names {target!r}, which is not a concept of the vocabulary{hint}: "
                    f"its anchor would never be used (styles {vocabulary.styles}, objects {vocabulary.objects})"
                )
        closed = backbone.closed_vocabulary()
        tiny = closed is not None
        # What the model knows by kind: the tiny world's UNet knows all of its concepts, even
        # those a stream's vocabulary leaves out.
        kinds = closed if closed is not None else {"style": vocabulary.styles, "object": vocabulary.objects}
        for request in requests:
            anchor = anchor_concept(request, self.anchors)
            if anchor is None or anchor in kinds[request.kind]:
                continue
            other = "object" if request.kind == "style" else "style"
            if anchor in kinds[other]:
                raise SettingsError(
                    f"{option}: the anchor of the {request.kind} {request.concept!r} is the {other} {anchor!r}; "
                    f"a {request.kind}'s anchor must be a {request.kind} (one of {kinds[request.kind]})"
                )
            if tiny:
                raise SettingsError(
                    f"{option}: the anchor {anchor!r} of {request.concept!r} is not a tiny-world "
                    f"{request.kind}{did_you_mean(anchor, kinds[request.kind])}; the tiny UNet knows only "
                    f"{kinds[request.kind]}"
                )
            letters = sum(ch.isalnum() for ch in anchor)
            near = closest_name(anchor, [*vocabulary.styles, *vocabulary.objects], max_edits=2 if letters >= 6 else 0)
            if near is not None:
                raise SettingsError(
                    f"{option}: the anchor {anchor!r} of {request.concept!r} is not in the vocabulary but almost "
                    f"the concept {near!r}: did you mean {near!r}? (an anchor outside the vocabulary is allowed "
                    "on a real model, but not a near-miss of a known concept)"
                )
            rank_zero_info(
                f"Concept Ablation: the anchor {anchor!r} of {request.concept!r} is not in the vocabulary; "
                "it is used as given (the model's text encoder names it)"
            )

    # -- per request ---------------------------------------------------------------------------
    def prepare_request(self, context: MethodContext) -> None:
        vocabulary = context.vocabulary
        anchor_captions: list[str] = []
        target_captions: list[str] = []
        latents, index = [], []
        for request in context.erasing:
            anchors, targets = caption_pairs(request, vocabulary, self.anchors)
            label = anchor_concept(request, self.anchors) or "plain"
            request_latents, request_index = self.anchor_images(context, anchors, label=label)
            latents.append(request_latents)
            index.append(request_index + len(anchor_captions))
            anchor_captions += anchors
            target_captions += targets
        self.anchor_captions, self.target_captions = anchor_captions, target_captions
        self.latents, self.caption_index = torch.cat(latents), torch.cat(index)

    def sampler_settings(self, context: MethodContext) -> dict[str, Any]:
        """Everything about the sampler that changes the anchor images."""
        settings = {"ddim_steps": self.ddim_steps, "guidance": float(self.guidance),
                    "latent_shape": list(context.backbone.latent_shape)}
        dtype = context.reference_dtype
        if dtype != "float32":  # a lower-precision base samples (slightly) different images
            settings["dtype"] = dtype
        return settings

    def cache_key(self, context: MethodContext, captions: Sequence[str]) -> str:
        """Cache key of the anchor set for ``captions`` on the context's base model."""
        fingerprint = self._fingerprints.get(context.unet)
        if fingerprint is None:
            # Hashing the whole base is a one-off per module: the base never changes.
            fingerprint = self._fingerprints[context.unet] = base_fingerprint(context.backbone, context.base_state)
        return anchor_cache_key(captions, self.images_per_anchor, self.sampler_settings(context),
                                context.run_seed, fingerprint)

    def cache_folder(self, context: MethodContext) -> Path | None:
        """Where anchor files live: ``cache_dir``, else the context's cache folder, else nowhere."""
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        return context.cache_dir

    def anchor_images(self, context: MethodContext, captions: list[str], label: str = "anchor"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents [N, C, H, W], caption index [N]) for ``captions``: from memory, disk, or the base model."""
        key = self.cache_key(context, captions)
        if key in self._memory:
            self.anchor_source = "memory"
            return self._memory[key]
        folder = self.cache_folder(context)
        path = None if folder is None else folder / f"{_slug(label)}-{key[:24]}.safetensors"
        loaded = self._load(path, context) if path is not None else None
        if loaded is not None:
            self.anchor_source = "disk"
            rank_zero_info(f"Concept Ablation: {len(loaded[0])} anchor images for {label!r} from {path}")
        else:
            loaded = self._generate(context, captions)
            self.anchor_source = "generated"
            if path is not None:
                meta = {"captions": json.dumps(captions), "key": key, "format": str(CACHE_FORMAT),
                        "sampler": json.dumps(self.sampler_settings(context)), "seed": str(context.run_seed)}
                save_weights({"latents": loaded[0], "caption_index": loaded[1]}, path, metadata=meta)
            rank_zero_info(f"Concept Ablation: generated {len(loaded[0])} anchor images for {label!r}"
                           + (f" into {path}" if path is not None else ""))
        self._memory[key] = loaded
        return loaded

    def _load(self, path: Path, context: MethodContext) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not path.is_file():
            return None
        try:
            tensors = load_weights(path)
        except Exception as err:  # an unreadable file is regenerated, not fatal
            rank_zero_info(f"Concept Ablation: ignoring unreadable anchor cache {path}: {err}")
            return None
        latents, index = tensors.get("latents"), tensors.get("caption_index")
        expected = (self.images_per_anchor, *context.backbone.latent_shape)
        if latents is None or index is None or tuple(latents.shape) != expected or index.shape != (expected[0],):
            rank_zero_info(f"Concept Ablation: ignoring anchor cache {path} of unexpected shape")
            return None
        return latents.float(), index.long()

    @torch.no_grad()
    def _generate(self, context: MethodContext, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Guided samples of the base model (DDIM; flow-matching Euler on a flow model):
        ``images_per_anchor`` latents cycling over ``captions``."""
        backbone = context.backbone
        # A frozen copy in the reference dtype (bf16 halves an SD UNet's copy).
        base = context.base_unet()
        uncond = TextCondition.from_captions(backbone, [""])
        seed = int(context.run_seed)
        latents = []
        index = torch.arange(self.images_per_anchor) % len(captions)
        for start in range(0, self.images_per_anchor, self.sample_batch):
            idx = list(range(start, min(start + self.sample_batch, self.images_per_anchor)))
            cond = TextCondition.from_captions(backbone, [captions[int(index[i])] for i in idx])
            # Image i's noise depends only on (seed, i): the batch size never changes the images.
            noise = seeded_noise(torch.tensor([seed * 100_019 + i for i in idx]), backbone.latent_shape)
            x0, _ = ddim_sample(backbone, base, noise.to(context.device), cond, uncond, self.ddim_steps, self.guidance)
            latents.append(x0.float().cpu())
        del base
        return torch.cat(latents), index

    # -- per step ------------------------------------------------------------------------------
    def loss(self, context: MethodContext, batch: dict[str, Any]) -> torch.Tensor:
        assert self.latents is not None and self.caption_index is not None, "prepare_request runs before training"
        seeds: torch.Tensor = batch["seed"]
        batch_size = len(seeds)
        backbone = context.backbone
        objective = backbone.objective
        # Sample i's draws (anchor image, timestep, noise) depend only on seeds[i], so how a
        # global batch is split (DDP ranks, batch size) never changes what it trains on.
        pick, t, noise = torch.empty(batch_size, dtype=torch.long), torch.empty(batch_size, dtype=torch.long), []
        for i, seed in enumerate(seeds.tolist()):
            gen = torch.Generator().manual_seed(int(seed))
            pick[i] = torch.randint(0, self.latents.shape[0], (1,), generator=gen)
            t[i] = torch.randint(0, objective.num_train_timesteps, (1,), generator=gen)
            noise.append(torch.randn(self.latents.shape[1:], generator=gen))
        noise = torch.stack(noise)
        x_t = objective.add_noise(self.latents[pick], noise, t).to(context.device)
        t = t.to(context.device)
        pairs = self.caption_index[pick].tolist()
        anchor_cond = TextCondition.from_captions(backbone, [self.anchor_captions[i] for i in pairs])
        target_cond = TextCondition.from_captions(backbone, [self.target_captions[i] for i in pairs])
        with torch.no_grad():
            eps_anchor = predict_noise(context.unet, x_t, t, anchor_cond)
        eps_target = predict_noise(context.unet, x_t, t, target_cond)
        return concept_ablation_loss(eps_target, eps_anchor)
