"""The tiny world's vocabulary: styles, objects and the captions built from them.

Styles are named after real art styles so the text encoder sees real semantic neighbours
("Monet" and "Impressionism" sit close, "Neon Lines" far away); objects are shapes with
everyday names. The renderer (``renderer.py``) gives each name its own look. Captions use
the generic :class:`~lightning_unlearn.prompts.PromptTemplates` defaults.
"""

from __future__ import annotations

from lightning_unlearn.prompts import ConceptKind
from lightning_unlearn.requests import ConceptVocabulary

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


def concept_kind(concept: str) -> ConceptKind:
    """The kind of a tiny-world concept; raises ``ValueError`` naming the unknown one."""
    if concept in STYLES:
        return "style"
    if concept in OBJECTS:
        return "object"
    raise ValueError(
        f"unknown tiny-world concept {concept!r}; styles are {list(STYLES)}, objects are {list(OBJECTS)}"
    )


def tiny_vocabulary() -> ConceptVocabulary:
    """The tiny world's vocabulary: its 16 styles and 12 objects, default caption templates.

    A fresh object each call (``ConceptVocabulary`` is mutable). The generic vocabulary has no
    world of its own; the layers that know the tiny world (its datamodule, tests, benchmarks)
    build it here.
    """
    return ConceptVocabulary(styles=list(STYLES), objects=list(OBJECTS))
