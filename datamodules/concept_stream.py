"""ConceptStreamDataModule: unlearning requests, in order, one at a time.

The serve function (:func:`lightning_unlearn.serving.serve_request`) hands it each request's
plan (``begin_request``): the plan is the one record of the current request's state, shared by
reference with the module (``UnlearningModule.begin_request``); Lightning then asks the
datamodule for that request's training data. A training sample is a caption naming the concept
and a seed (the method turns the seed into noise, a timestep, a bank draw...). Its position in
the stream and the requests already served are in its ``state_dict``.
"""

from __future__ import annotations

import random

from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_unlearn.checks import at_least
from lightning_unlearn.prompts import PromptTemplates
from lightning_unlearn.protocols import RequestPlan
from lightning_unlearn.requests import ConceptVocabulary, Request, RequestError, drop_already_unlearned
# The datamodule is where a stream meets its world: the tiny world supplies the defaults
# (requests, styles, objects) so the generic vocabulary needs none.
from lightning_unlearn.tinyworld.concepts import DEFAULT_STYLE_STREAM, OBJECTS, STYLES


class RequestSamples(Dataset):
    """``num_samples`` (caption, seed) pairs for one request; item i depends only on (seed, i)."""

    def __init__(self, captions: list[str], num_samples: int, seed: int) -> None:
        self.captions, self.num_samples, self.seed = captions, num_samples, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"caption": self.captions[index % len(self.captions)], "seed": self.seed * 1_000_003 + index}


class InOrderShards(DistributedSampler):
    """Rank ``rank``'s share of a request's samples, in order: indices ``rank, rank + W, ...``.

    Never shuffles, whatever ``set_epoch`` says, so the union of the ranks' step-s batches is
    the one-process step-s batch for every world size W (the sample count is a multiple of
    W * batch, so nothing is padded or dropped). Being a ``DistributedSampler`` is what keeps
    Lightning from replacing it with its own shuffling one.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))


def collate_samples(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"caption": [it["caption"] for it in items], "seed": torch.tensor([it["seed"] for it in items])}


class RequestLoader(DataLoader):
    """The request's DataLoader, resumable in the middle of a request.

    Its state (saved in Lightning checkpoints, which look for ``state_dict``/``load_state_dict``
    on a loader) is the number of batches it has handed out this pass; after
    ``load_state_dict`` the next pass skips that many, so a resumed request trains on exactly
    the batches the interrupted one had not reached. Lightning fetches batches one at a time
    from a loader with a length, so the count is of batches actually trained on.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches_served = 0
        self._resume_at = 0

    def __iter__(self):
        skip, self._resume_at = self._resume_at, 0
        self.batches_served = 0
        for batch in super().__iter__():
            if self.batches_served < skip:  # (caption, seed) pairs: skipping costs nothing
                self.batches_served += 1
                continue
            self.batches_served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"batches_served": self.batches_served}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume_at = int(state_dict["batches_served"])


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
        unlearned: list[str] | None = None,
        already_unlearned: Literal["error", "skip"] = "error",
        order_seed: int | None = None,
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
            unlearned: concepts the starting model has already had erased (e.g. by an earlier
                run whose weights it loads); a request for one of them is handled by
                ``already_unlearned``.
            already_unlearned: ``error`` stops with an error naming such a request; ``skip``
                drops it from the stream and logs a notice.
            order_seed: serve the requests in an order shuffled with this seed (a study's
                replicates with ``shuffle_order``); unset = in the order given.
        """
        super().__init__()
        # Checked first: a count below 1 would serve a request with nothing unlearned (0 steps)
        # or fail inside the first fit, after the base evaluation was written.
        at_least(batch_size, 1, "--data.batch_size")
        at_least(steps_per_request, 1, "--data.steps_per_request")
        self.vocabulary = ConceptVocabulary(
            styles=list(styles if styles is not None else STYLES),
            objects=list(objects if objects is not None else OBJECTS),
            templates=templates,
        )
        self.unlearned = list(unlearned or [])
        self.erased_before: list[Request] = [
            Request(concept, "style" if concept in self.vocabulary.styles else "object")
            for concept in self.unlearned if concept in self.vocabulary.styles or concept in self.vocabulary.objects
        ]
        """The ``unlearned`` concepts the vocabulary knows: erased in the starting model, so every
        plan lists them as already erased (protected by callbacks that protect earlier erasures)
        and scores UA over them too. Concepts outside the vocabulary cannot be scored."""
        self.requests: list[Request]
        self.requests, skipped = drop_already_unlearned(
            self.vocabulary.parse(list(requests)), self.unlearned, self.vocabulary, already_unlearned
        )
        if order_seed is not None:
            # random.Random's shuffle is the same on every platform and Python 3 release.
            random.Random(order_seed).shuffle(self.requests)
        self.order_seed = order_seed
        for request in skipped:
            rank_zero_info(f"skipping request {request.concept!r}: the model has already unlearned it (already_unlearned=skip)")
        if erase_prompt not in ("concept", "full"):
            raise RequestError(f"erase_prompt must be 'concept' or 'full', got {erase_prompt!r}")
        self.erase_prompt = erase_prompt
        self.batch_size = batch_size
        self.steps_per_request = steps_per_request
        self.seed = seed
        self.plan: RequestPlan | None = None
        """The plan of the request being served (``None`` before the first: request 1 alone is
        then the training data). Set with :meth:`begin_request`; the module holds the same object."""
        self.train_steps = steps_per_request
        """Optimizer steps the current request may train (the simultaneous protocol's cap can
        exceed ``steps_per_request``); set with the plan."""

    # -- the stream --------------------------------------------------------------------------
    def begin_request(self, plan: RequestPlan, train_steps: int | None = None) -> None:
        """Serve ``plan``'s request next: its training data are the captions of ``plan.erasing``,
        for at most ``train_steps`` optimizer steps (default: ``steps_per_request``)."""
        if not 0 <= plan.index < len(self.requests) or self.requests[plan.index] != plan.request:
            raise RequestError(
                f"plan for request {plan.index + 1} ({plan.request.concept!r}) is not this stream's "
                f"({[r.concept for r in self.requests]})"
            )
        self.plan = plan
        self.train_steps = int(train_steps) if train_steps is not None else self.steps_per_request

    @property
    def position(self) -> int:
        """0-based index of the request being served (0 before the first plan)."""
        return 0 if self.plan is None else self.plan.index

    @property
    def current_request(self) -> Request:
        """The request being served."""
        return self.requests[self.position]

    @property
    def erasing(self) -> tuple[Request, ...]:
        """Requests the current training erases (several under the simultaneous protocol)."""
        return (self.requests[0],) if self.plan is None else self.plan.erasing

    def training_captions(self) -> list[str]:
        """Captions of every concept the current training erases, concept by concept."""
        return [caption for request in self.erasing for caption in self.erase_captions(request)]

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
        # Every world size trains on one global sequence: global batch s is samples
        # [s*B*W, (s+1)*B*W), the batch one process with batch B*W trains on; rank r takes every
        # W-th of them (InOrderShards). The sampler is always ours, also for one process:
        # Lightning injects a *shuffling* DistributedSampler into any training loader whose
        # sampler is not a DistributedSampler under a distributed strategy (DDP with one device
        # included) unless use_distributed_sampler=False, and ours is one, so it is kept.
        world, rank = self._world_and_rank()
        dataset = RequestSamples(
            self.training_captions(),
            num_samples=self.train_steps * self.batch_size * world,
            seed=self.seed * 10_007 + self.position,
        )
        return RequestLoader(dataset, batch_size=self.batch_size, shuffle=False,
                             sampler=InOrderShards(dataset, num_replicas=world, rank=rank),
                             collate_fn=collate_samples)

    def _world_and_rank(self) -> tuple[int, int]:
        """(processes, this process's global rank) of the attached Trainer; (1, 0) without one."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return max(1, int(trainer.world_size)), int(trainer.global_rank)

    def state_dict(self) -> dict[str, Any]:
        """The stream and the current plan (a mid-request checkpoint's record of what it trains)."""
        plan = self.plan
        return {"position": self.position, "requests": [vars(r) for r in self.requests],
                "erasing": [vars(r) for r in self.erasing], "train_steps": self.train_steps,
                "plan": None if plan is None else {
                    "already_erased": [vars(r) for r in plan.already_erased], "from_base": plan.from_base,
                    "scored_erased": [vars(r) for r in plan.scored_erased]}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a saved position. When a plan is set already (the serve function sets it
        before a resumed ``fit`` restores the checkpoint) the saved one must agree with it and
        the plan object is kept, shared with the module; otherwise the saved plan is adopted."""
        saved = [Request(**r) for r in state_dict["requests"]]
        if saved != self.requests:
            raise RequestError(
                "the saved stream differs from the configured one: saved "
                f"{[r.concept for r in saved]}, configured {[r.concept for r in self.requests]}"
            )
        index = int(state_dict["position"])
        if not 0 <= index < len(self.requests):
            raise IndexError(f"request index {index} outside the stream of {len(self.requests)}")
        erasing = tuple(Request(**r) for r in state_dict.get("erasing", [vars(self.requests[index])]))
        train_steps = int(state_dict.get("train_steps") or self.steps_per_request)
        if self.plan is not None:
            if (self.plan.index, self.plan.erasing, self.train_steps) != (index, erasing, train_steps):
                raise RequestError(
                    f"the saved position (request {index + 1}, erasing {[r.concept for r in erasing]}, {train_steps} "
                    f"steps) is not the request being served (request {self.plan.index + 1}, erasing "
                    f"{[r.concept for r in self.plan.erasing]}, {self.train_steps} steps)"
                )
            return
        self.begin_request(_saved_plan(self.requests, index, erasing, state_dict.get("plan")), train_steps)


def _saved_plan(requests: list[Request], index: int, erasing: tuple[Request, ...],
                saved: dict[str, Any] | None) -> RequestPlan:
    """The plan a datamodule state names. Checkpoints from before plans were saved hold only the
    erased concepts: the rest is read as the sequential protocol's (earlier requests erased)."""
    if saved is None:
        return RequestPlan(index, requests[index], erasing, tuple(requests[:index]), False, tuple(requests[: index + 1]))
    return RequestPlan(
        index, requests[index], erasing, tuple(Request(**r) for r in saved["already_erased"]),
        bool(saved["from_base"]), tuple(Request(**r) for r in saved["scored_erased"]),
    )
