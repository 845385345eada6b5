"""Each attack on the tiny world with a tiny budget: deterministic, and the attacked UNet unchanged."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_unlearn.attacks import (
    AttackRunner, AttackSettings, EmbeddingAttack, EmbeddingSettings, PromptSearchAttack, PromptSearchSettings,
    RelearnAttack, RelearnSettings, UnknownAttackError,
)
from lightning_unlearn.attacks.base import AttackTarget, make_concept_images
from lightning_unlearn.attacks.prompt_search import vocabulary_words
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.requests import Request

VAN_GOGH = Request("Van Gogh", "style")
TINY = {
    "relearn": lambda: RelearnAttack(RelearnSettings(budgets=[2, 3], batch_size=2)),
    "embedding": lambda: EmbeddingAttack(EmbeddingSettings(steps=2, tokens=2, batch_size=2)),
    "prompt": lambda: PromptSearchAttack(PromptSearchSettings(iterations=2, tokens=2, candidates=2)),
}


def snapshot(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


@pytest.mark.parametrize("name", sorted(TINY))
def test_attack_is_deterministic_and_leaves_the_model_unchanged(tiny_evaluator, name):
    backbone = tiny_evaluator.backbone
    unet = backbone.unet
    flags = {k: p.requires_grad for k, p in unet.named_parameters()}
    before = snapshot(unet)
    images = make_concept_images(tiny_evaluator, copy.deepcopy(unet), VAN_GOGH, count=3, seed=5)
    records = [TINY[name]().run(AttackTarget(backbone, tiny_evaluator, VAN_GOGH, images, seed=11), unet) for _ in range(2)]
    assert records[0] == records[1]
    assert records[0]["images"] == 3 * 2  # 3 objects x 2 evaluation seeds
    assert 0 <= records[0]["asr_low"] <= records[0]["asr"] <= records[0]["asr_high"] <= 100
    after = snapshot(unet)
    assert all(torch.equal(before[k], after[k]) for k in before), "the attack changed the committed weights"
    assert {k: p.requires_grad for k, p in unet.named_parameters()} == flags
    assert all(p.grad is None for p in unet.parameters())


def test_runner_gives_a_concept_the_same_images_and_seeds_wherever_it_is_attacked(tiny_evaluator):
    settings = AttackSettings(names=["prompt"], images=2, prompt=PromptSearchSettings(iterations=1, tokens=1, candidates=2))
    first = AttackRunner(settings, tiny_evaluator, lambda: copy.deepcopy(tiny_evaluator.backbone.unet))
    second = AttackRunner(settings, tiny_evaluator, lambda: copy.deepcopy(tiny_evaluator.backbone.unet))
    cartoon = Request("Cartoon", "style")
    strip = lambda rec: [{k: v for k, v in t.items() if k != "seconds"} for t in rec["targets"]]  # noqa: E731
    a = first.attack(tiny_evaluator.backbone.unet, [VAN_GOGH, cartoon])
    b = second.attack(tiny_evaluator.backbone.unet, [cartoon])
    assert strip(a)[1] == strip(b)[0]
    assert first.concept_seed(VAN_GOGH) != first.concept_seed(cartoon)


def test_prompt_search_space_is_whole_words():
    from lightning_unlearn.tinyworld.text_encoder import MiniLMTextEncoder

    words = vocabulary_words(MiniLMTextEncoder().tokenizer)
    assert len(words) > 10_000 and all(w.isalpha() and len(w) >= 3 for w in words)
    assert "painting" in words and not any(w.startswith("##") for w in words)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: AttackSettings(names=["relern"]), "unknown attack 'relern' (did you mean 'relearn'?)"),
    (lambda: AttackSettings(names=["relearn", "relearn"]), "lists an attack twice"),
    (lambda: RelearnSettings(budgets=[5, 0]), "--stream.attacks.relearn.budgets must be >= 1, got 0"),
    (lambda: RelearnSettings(budgets=[]), "budgets is empty"),
    (lambda: EmbeddingSettings(steps=0), "--stream.attacks.embedding.steps must be >= 1"),
    (lambda: PromptSearchSettings(iterations=-1), "--stream.attacks.prompt.iterations must be >= 1"),
    (lambda: AttackSettings(targets="every"), "--stream.attacks.targets must be one of"),
])
def test_bad_attack_settings_are_named(make, message):
    with pytest.raises(SettingsError) as err:
        make()
    assert message in str(err.value)
    assert not isinstance(err.value, UnknownAttackError) or "did you mean" in message
