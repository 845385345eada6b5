"""Adversarial recovery of erased concepts: can a committed model be made to show them again?

One module per attack, each a documented class with a budget, run on a copy of a committed
model (never its weights) and seeded, deterministic on CPU:

- :class:`RelearnAttack` (``relearn``): fine-tune on a few base-model images of the concept;
  UA after each budget, steps to bring UA under 50;
- :class:`EmbeddingAttack` (``embedding``): learn a soft prompt (textual-inversion style);
- :class:`PromptSearchAttack` (``prompt``): greedy coordinate search of a word prefix
  (UnlearnDiffAtk-style).

ASR is the share of attacked images the evaluation's classifier calls the erased concept, with a
95% Wilson interval and the image count. :class:`AttackSettings` is ``--stream.attacks``;
:class:`AttackRunner` runs them after each committed request (``attacks.json``); ``train.py
attack RUN_DIR`` runs them on an existing run folder. See docs/attacks.md.
"""

from lightning_unlearn.attacks.base import Attack, AttackTarget, ConceptImages, score_concept
from lightning_unlearn.attacks.embedding import EmbeddingAttack, EmbeddingSettings
from lightning_unlearn.attacks.prompt_search import PromptSearchAttack, PromptSearchSettings
from lightning_unlearn.attacks.relearn import RelearnAttack, RelearnSettings
from lightning_unlearn.attacks.runner import AttackRunner, attack_summary
from lightning_unlearn.attacks.settings import ATTACK_NAMES, AttackSettings, UnknownAttackError

__all__ = [
    "ATTACK_NAMES", "Attack", "AttackRunner", "AttackSettings", "AttackTarget", "ConceptImages", "EmbeddingAttack",
    "EmbeddingSettings", "PromptSearchAttack", "PromptSearchSettings", "RelearnAttack", "RelearnSettings",
    "UnknownAttackError", "attack_summary", "score_concept",
]
