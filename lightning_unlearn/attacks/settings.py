"""``--stream.attacks``: which attacks run after each committed request, on what, with what budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lightning_unlearn.attacks.base import Attack
from lightning_unlearn.attacks.embedding import EmbeddingAttack, EmbeddingSettings
from lightning_unlearn.attacks.prompt_search import PromptSearchAttack, PromptSearchSettings
from lightning_unlearn.attacks.relearn import RelearnAttack, RelearnSettings
from lightning_unlearn.checks import at_least, did_you_mean
from lightning_unlearn.errors import SettingsError

ATTACK_NAMES = ("relearn", "embedding", "prompt")
"""The attacks ``--stream.attacks.names`` may list, in the order they run."""
TARGETS = ("latest", "all_erased")


class UnknownAttackError(SettingsError):
    """``--stream.attacks.names`` lists an attack this project does not have."""


@dataclass
class AttackSettings:
    """Adversarial recovery after each committed request (off unless ``names`` lists attacks)."""

    names: list[str] = field(default_factory=list)
    """Attacks to run: ``relearn`` (fine-tuning), ``embedding`` (learned soft prompt), ``prompt``
    (discrete prefix search); empty = no attacks."""
    targets: Literal["latest", "all_erased"] = "latest"
    """Attack the concept the request erased (``latest``) or every concept erased so far."""
    images: int = 8
    """Base-model images of the concept the attacker trains / searches on."""
    seed: int = 0
    """Seed of the attacker's images and draws (a concept gets the same ones after every request)."""
    relearn: RelearnSettings = field(default_factory=RelearnSettings)
    """The relearning attack's budgets."""
    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    """The learned-embedding attack's budget."""
    prompt: PromptSearchSettings = field(default_factory=PromptSearchSettings)
    """The discrete prompt search's budget."""

    def __post_init__(self) -> None:
        for name in self.names:
            if name not in ATTACK_NAMES:
                raise UnknownAttackError(
                    f"--stream.attacks.names: unknown attack {name!r}{did_you_mean(name, ATTACK_NAMES)}; "
                    f"choose from {list(ATTACK_NAMES)}")
        if len(set(self.names)) != len(self.names):
            raise SettingsError(f"--stream.attacks.names lists an attack twice: {self.names}")
        if self.targets not in TARGETS:
            raise SettingsError(f"--stream.attacks.targets must be one of {list(TARGETS)}, got {self.targets!r}")
        at_least(self.images, 1, "--stream.attacks.images")
        at_least(self.seed, 0, "--stream.attacks.seed")

    @property
    def enabled(self) -> bool:
        """Whether any attack is to run."""
        return bool(self.names)

    def build(self) -> list[Attack]:
        """The listed attacks, in :data:`ATTACK_NAMES` order, with their settings."""
        made = {"relearn": lambda: RelearnAttack(self.relearn), "embedding": lambda: EmbeddingAttack(self.embedding),
                "prompt": lambda: PromptSearchAttack(self.prompt)}
        return [made[name]() for name in ATTACK_NAMES if name in self.names]
