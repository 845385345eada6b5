"""ConceptStreamDataModule: unlearning requests, in order, one at a time.

The stream runner moves it from request to request (``set_position``); Lightning then asks it
for the current request's training data. A training sample is a caption naming the concept
and a seed (the method turns the seed into noise, a timestep, a bank draw...). Its position in
the stream and the requests already served are in its ``state_dict``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from lightning_unlearn.requests import ConceptVocabulary, Request, RequestError
from lightning_unlearn.tinyworld.concepts import DEFAULT_STYLE_STREAM, PromptTemplates


class RequestSamples(Dataset):
    """``num_samples`` (caption, seed) pairs for one request; item i depends only on (seed, i)."""

    def __init__(self, captions: list[str], num_samples: int, seed: int) -> None:
        self.captions, self.num_samples, self.seed = captions, num_samples, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"caption": self.captions[index % len(self.captions)], "seed": self.seed * 1_000_003 + index}


def collate_samples(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"caption": [it["caption"] for it in items], "seed": torch.tensor([it["seed"] for it in items])}


class ConceptStreamDataModule(LightningDataModule):
    """Hands out the unlearning requests in sequence, and the current one's training samples."""

    def __init__(
        self,
        requests: list[str | dict] = list(DEFAULT_STYLE_STREAM),
        styles: list[str] | None = None,
        objects: list[str] | None = None,
        templates: PromptTemplates = PromptTemplates(),
        erase_prompt: Literal["concept", "full"] = "concept",
        batch_size: int = 8,
        steps_per_request: int = 100,
        seed: int = 0,
    ) -> None:
        """
        Args:
            requests: concepts to unlearn, in order: names, or ``{concept: NAME, kind: style|object}``.
            styles: the style vocabulary (default: the tiny world's 16 styles).
            objects: the object vocabulary (default: the tiny world's 12 objects).
            templates: caption templates (full, style-only, object-only).
            erase_prompt: ``concept`` trains on the caption naming the concept alone ("a painting
                in Van Gogh style"); ``full`` on every full caption that contains it.
            batch_size: samples per training step (per process under DDP).
            steps_per_request: optimizer steps each request trains for.
            seed: data seed; request k's samples depend only on (seed, k).
        """
        super().__init__()
        self.vocabulary = ConceptVocabulary(
            styles=list(styles) if styles is not None else ConceptVocabulary().styles,
            objects=list(objects) if objects is not None else ConceptVocabulary().objects,
            templates=templates,
        )
        self.requests: list[Request] = self.vocabulary.parse(list(requests))
        if erase_prompt not in ("concept", "full"):
            raise RequestError(f"erase_prompt must be 'concept' or 'full', got {erase_prompt!r}")
        self.erase_prompt = erase_prompt
        self.batch_size = batch_size
        self.steps_per_request = steps_per_request
        self.seed = seed
        self.position = 0

    # -- the stream --------------------------------------------------------------------------
    @property
    def current_request(self) -> Request:
        """The request being served."""
        return self.requests[self.position]

    def set_position(self, index: int) -> None:
        """Move to request ``index`` (0-based)."""
        if not 0 <= index < len(self.requests):
            raise IndexError(f"request index {index} outside the stream of {len(self.requests)}")
        self.position = index

    def served(self) -> list[Request]:
        """Requests before the current one."""
        return self.requests[: self.position]

    def erase_captions(self, request: Request) -> list[str]:
        """Captions the method erases ``request`` with."""
        templates = self.vocabulary.templates
        if self.erase_prompt == "concept":
            return [templates.concept_prompt(request.concept, request.kind)]
        other = self.vocabulary.objects if request.kind == "style" else self.vocabulary.styles
        if request.kind == "style":
            return [templates.caption(request.concept, o) for o in other]
        return [templates.caption(s, request.concept) for s in other]

    # -- Lightning -----------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        # Under DDP Lightning shards this across ranks; every rank serves the same request.
        dataset = RequestSamples(
            self.erase_captions(self.current_request),
            num_samples=self.steps_per_request * self.batch_size * max(1, self._world_size()),
            seed=self.seed * 10_007 + self.position,
        )
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, collate_fn=collate_samples)

    def _world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.world_size) if trainer is not None else 1

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "requests": [vars(r) for r in self.requests]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = [Request(**r) for r in state_dict["requests"]]
        if saved != self.requests:
            raise RequestError(
                "the saved stream differs from the configured one: saved "
                f"{[r.concept for r in saved]}, configured {[r.concept for r in self.requests]}"
            )
        self.set_position(int(state_dict["position"]))
