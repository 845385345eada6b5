"""The tiny world's vocabulary: styles, objects and the captions built from them.

Styles are named after real art styles so the text encoder sees real semantic neighbours
("Monet" and "Impressionism" sit close, "Neon Lines" far away); objects are shapes with
everyday names. The renderer (``renderer.py``) gives each name its own look.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ConceptKind = Literal["style", "object"]

STYLES: tuple[str, ...] = (
    "Van Gogh",
    "Monet",
    "Pop Art",
    "Ukiyo-e",
    "Cubism",
    "Picasso",
    "Abstractionism",
    "Byzantine",
    "Cartoon",
    "Neon Lines",
    "On Fire",
    "Winter",
    "Pointillism",
    "Art Deco",
    "Baroque",
    "Impressionism",
)

OBJECTS: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "heart",
    "cross",
    "ring",
    "diamond",
    "moon",
    "arrow",
    "house",
    "tree",
)

#: Default 12-request style stream: the paper's reference order where a tiny-world style of
#: that name exists, then neighbours of the ones it lacks. Leaves Monet, Pointillism, Art Deco
#: and Impressionism as in-domain retain concepts.
DEFAULT_STYLE_STREAM: tuple[str, ...] = (
    "Abstractionism",
    "Byzantine",
    "Cartoon",
    "Ukiyo-e",
    "Van Gogh",
    "Neon Lines",
    "Picasso",
    "On Fire",
    "Cubism",
    "Winter",
    "Pop Art",
    "Baroque",
)

#: Default 8-request object stream; leaves square, cross, ring and diamond to retain.
DEFAULT_OBJECT_STREAM: tuple[str, ...] = (
    "star",
    "heart",
    "house",
    "tree",
    "circle",
    "triangle",
    "moon",
    "arrow",
)


@dataclass(frozen=True)
class PromptTemplates:
    """How captions are written. ``{style}`` and ``{object}`` are substituted."""

    full: str = "a {object} in {style} style"
    """Caption naming both concepts (the training and evaluation prompt)."""
    style_only: str = "a painting in {style} style"
    """Caption naming only a style (partial caption, used to erase a style by its phrase)."""
    object_only: str = "a {object}"
    """Caption naming only an object (partial caption, used to erase an object)."""

    def caption(self, style: str | None, obj: str | None) -> str:
        """The caption for a (style, object) pair; either may be ``None`` for a partial one."""
        if style is not None and obj is not None:
            return self.full.format(style=style, object=obj)
        if style is not None:
            return self.style_only.format(style=style)
        if obj is not None:
            return self.object_only.format(object=obj)
        return ""

    def concept_prompt(self, concept: str, kind: ConceptKind) -> str:
        """The caption that names one concept alone."""
        return self.caption(concept, None) if kind == "style" else self.caption(None, concept)


def concept_kind(concept: str) -> ConceptKind:
    """The kind of a tiny-world concept; raises ``ValueError`` naming the unknown one."""
    if concept in STYLES:
        return "style"
    if concept in OBJECTS:
        return "object"
    raise ValueError(
        f"unknown tiny-world concept {concept!r}; styles are {list(STYLES)}, objects are {list(OBJECTS)}"
    )
