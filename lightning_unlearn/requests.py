"""Unlearning requests and the concept vocabulary they are checked against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lightning_unlearn.checks import did_you_mean
from lightning_unlearn.errors import UnlearnError
from lightning_unlearn.prompts import ConceptKind, PromptTemplates


class RequestError(UnlearnError, ValueError):
    """A request list that cannot be served (unknown concept, wrong kind, duplicate, empty)."""


@dataclass(frozen=True)
class Request:
    """One takedown request: erase ``concept`` (a ``style`` or an ``object``)."""

    concept: str
    kind: ConceptKind

    @property
    def slug(self) -> str:
        """File-name-safe form of the concept ("Van Gogh" -> "van-gogh")."""
        return "".join(ch if ch.isalnum() else "-" for ch in self.concept.lower()).strip("-")


@dataclass
class ConceptVocabulary:
    """The concepts a model knows, by kind, and how captions name them.

    It belongs to no world: the layer that knows the model supplies the names (the stream's
    datamodule defaults to the tiny world's, ``tinyworld.concepts.tiny_vocabulary()``; for a
    real model list its concepts in YAML). No default here, so generic code never silently
    judges a model by another world's concepts.
    """

    styles: list[str]
    objects: list[str]
    templates: PromptTemplates = field(default_factory=PromptTemplates)

    def kind_of(self, concept: str) -> ConceptKind:
        """Kind of a known concept; :class:`RequestError` naming an unknown one.

        A name that is a known one but for case, spacing or one or two letters is still
        refused (a takedown must name exactly the concept it erases), with the suggestion.
        """
        if concept in self.styles:
            return "style"
        if concept in self.objects:
            return "object"
        raise RequestError(
            f"unknown concept {concept!r}{did_you_mean(concept, [*self.styles, *self.objects])}: "
            f"not among the styles {self.styles} nor the objects {self.objects}"
        )

    def concepts(self, kind: ConceptKind) -> list[str]:
        """All concepts of one kind."""
        return list(self.styles if kind == "style" else self.objects)

    def parse(self, entries: list[str | dict]) -> list[Request]:
        """Requests from YAML entries: a concept name, or ``{concept: NAME, kind: style|object}``.

        Raises :class:`RequestError` for an empty list, an unknown concept, a kind that does
        not match the concept, or a concept requested twice.
        """
        if not entries:
            raise RequestError("the request list is empty: give at least one concept to unlearn")
        requests: list[Request] = []
        for entry in entries:
            if isinstance(entry, str):
                concept, kind = entry, None
            elif isinstance(entry, dict) and "concept" in entry:
                concept, kind = str(entry["concept"]), entry.get("kind")
            else:
                raise RequestError(f"a request must be a concept name or {{concept: ..., kind: ...}}, got {entry!r}")
            actual = self.kind_of(concept)
            if kind is not None and kind != actual:
                raise RequestError(f"request {concept!r} says kind {kind!r} but {concept!r} is a {actual}")
            request = Request(concept, actual)
            if request in requests:
                raise RequestError(f"duplicate request: {concept!r} appears more than once in the stream")
            requests.append(request)
        return requests


class AlreadyUnlearnedError(RequestError):
    """A request names a concept the starting model has already had erased."""


def drop_already_unlearned(
    requests: list[Request], unlearned: list[str], vocabulary: ConceptVocabulary, policy: Literal["error", "skip"]
) -> tuple[list[Request], list[Request]]:
    """Split ``requests`` into those to serve and those already erased from the starting model.

    ``unlearned`` names concepts erased before this stream (an earlier run whose weights the
    model starts from). ``policy="error"`` raises :class:`AlreadyUnlearnedError` naming the
    first such request; ``"skip"`` drops them (the caller reports what it dropped). Returns
    ``(to_serve, skipped)``. A concept requested twice *within* the stream is the parser's
    duplicate error, not this.
    """
    if policy not in ("error", "skip"):
        raise RequestError(f"already_unlearned must be 'error' or 'skip', got {policy!r}")
    erased = set()
    for concept in unlearned:
        erased.add(Request(concept, vocabulary.kind_of(concept)))  # unknown names fail here, by name
    skipped = [r for r in requests if r in erased]
    if skipped and policy == "error":
        raise AlreadyUnlearnedError(
            f"request {skipped[0].concept!r} asks to unlearn a concept the model has already unlearned "
            f"(listed in unlearned={sorted(unlearned)}): remove it from the requests, or set "
            "already_unlearned=skip to drop such requests"
        )
    to_serve = [r for r in requests if r not in erased]
    if not to_serve:
        raise RequestError(
            f"every request ({[r.concept for r in requests]}) has already been unlearned: nothing left to serve"
        )
    return to_serve, skipped
