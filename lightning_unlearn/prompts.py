"""How captions name concepts: the two kinds of concept and the caption templates.

World-agnostic: the tiny world (``lightning_unlearn.tinyworld.concepts``) and a Stable
Diffusion config (``data.templates`` in YAML) both describe their captions with these types,
so generic code (requests, evaluation, methods) never needs to import a particular world.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ConceptKind = Literal["style", "object"]


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
