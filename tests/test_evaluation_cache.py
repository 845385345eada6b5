"""The base evaluation cache: computed once, reused bit for bit, keyed by everything it depends on."""

from dataclasses import replace

import pytest
import torch

from lightning_unlearn.evaluation import EvaluationSettings, Evaluator, VocabularySubset
from lightning_unlearn.evaluation_cache import (
    EvaluationCache,
    base_evaluation_cache,
    base_evaluation_recipe,
    default_cache_dir,
    evaluate_counts,
    recipe_key,
)
from lightning_unlearn.requests import ConceptVocabulary
from lightning_unlearn.tinyworld.classifier import TinyWorldClassifier
from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES
from lightning_unlearn.unlearning_module import UnlearningModule

VOCAB = ConceptVocabulary(styles=["Van Gogh", "Cartoon"], objects=["circle", "star", "house"])
SETTINGS = EvaluationSettings(steps=3, sampler="dpm++")


@pytest.fixture(scope="module")
def module():
    return UnlearningModule()


def _evaluator(module, vocabulary=VOCAB, settings=SETTINGS):
    classifier = VocabularySubset(TinyWorldClassifier.load(), list(STYLES), list(OBJECTS), vocabulary)
    return Evaluator(module.backbone, classifier, vocabulary, settings)


def _key(module, evaluator, precision="32-true"):
    return recipe_key(base_evaluation_recipe(module, evaluator, precision, "cpu"))


def test_second_evaluation_is_read_back_and_equals_a_fresh_one(module, tmp_path):
    evaluator = _evaluator(module)
    cache = EvaluationCache(tmp_path / "cache")
    recipe = base_evaluation_recipe(module, evaluator, "32-true", "cpu")
    key = recipe_key(recipe)
    first = evaluate_counts(evaluator, module.unet, cache=cache, key=key, recipe=recipe)
    assert not first.reused and first.sampled_seconds > 0
    assert {p.name for p in (tmp_path / "cache" / key).iterdir()} == {"counts.safetensors", "grid.png", "recipe.json"}
    again = evaluate_counts(evaluator, module.unet, cache=cache, key=key)
    assert again.reused
    fresh = evaluate_counts(evaluator, module.unet)  # no cache: always samples
    assert not fresh.reused
    for name in ("style_hits", "object_hits", "count"):
        assert torch.equal(again.counts[name], first.counts[name])
        assert torch.equal(fresh.counts[name], first.counts[name])
    assert int(first.counts["count"].sum()) == 6
    assert (again.grid == first.grid).all() and again.grid.shape == first.grid.shape
    assert not list(tmp_path.rglob("*.tmp"))


def test_key_covers_what_the_evaluation_depends_on(module):
    evaluator = _evaluator(module)
    key = _key(module, evaluator)
    assert _key(module, _evaluator(module)) == key  # deterministic
    # Where results are kept is not part of what they are.
    assert _key(module, _evaluator(module, settings=replace(SETTINGS, cache_dir="/elsewhere", reuse_base=False))) == key
    different = {
        "steps": _key(module, _evaluator(module, settings=replace(SETTINGS, steps=4))),
        "sampler": _key(module, _evaluator(module, settings=replace(SETTINGS, sampler="ddim"))),
        "vocabulary": _key(module, _evaluator(module, vocabulary=ConceptVocabulary(styles=["Van Gogh"], objects=["star"]))),
        "precision": _key(module, evaluator, precision="bf16-mixed"),
    }
    assert all(k != key for k in different.values()) and len(set(different.values())) == len(different)
    # Another base: a weight outside the trainable set (never trained by a stream) changes.
    frozen = next(p for name, p in module.unet.named_parameters() if name not in module.trainable_keys)
    trained = dict(module.unet.named_parameters())[module.trainable_keys[0]]
    saved = frozen.detach().clone(), trained.detach().clone()
    try:
        with torch.no_grad():
            frozen.view(-1)[0] += 1.0
        assert _key(module, evaluator) != key
        # Training the trainable keys does not change the base the key names.
        with torch.no_grad():
            frozen.copy_(saved[0])
            trained.view(-1)[0] += 1.0
        assert _key(module, evaluator) == key
    finally:
        with torch.no_grad():
            frozen.copy_(saved[0])
            trained.copy_(saved[1])


def test_an_incomplete_entry_is_recomputed_and_a_foreign_one_refused(module, tmp_path):
    evaluator = _evaluator(module)
    cache = EvaluationCache(tmp_path)
    key = _key(module, evaluator)
    first = evaluate_counts(evaluator, module.unet, cache=cache, key=key)
    (tmp_path / key / "recipe.json").unlink()  # as if the run died before the entry completed
    assert cache.load(key) is None
    assert not evaluate_counts(evaluator, module.unet, cache=cache, key=key).reused
    assert cache.load(key) is not None
    # An entry copied under another key's name is not silently used.
    other = tmp_path / ("0" * 64)
    (tmp_path / key).rename(other)
    with pytest.raises(ValueError, match="is not the result of its key"):
        cache.load("0" * 64)
    assert first.counts["count"].sum() == 6


def test_cache_folder_defaults_next_to_the_run_and_reuse_can_be_turned_off(tmp_path):
    run_dir = tmp_path / "runs" / "study"
    assert default_cache_dir(run_dir) == (tmp_path / "runs" / ".eval_cache").resolve()
    assert base_evaluation_cache(EvaluationSettings(), run_dir).folder == default_cache_dir(run_dir)
    assert base_evaluation_cache(EvaluationSettings(cache_dir=str(tmp_path / "c")), run_dir).folder == tmp_path / "c"
    assert base_evaluation_cache(EvaluationSettings(reuse_base=False), run_dir) is None


def test_runs_side_by_side_share_one_base_evaluation(module, tmp_path):
    from lightning_unlearn.evaluation_cache import evaluate_base

    evaluator = _evaluator(module)
    first = evaluate_base(module, evaluator, tmp_path / "runs" / "a", "32-true")
    second = evaluate_base(module, evaluator, tmp_path / "runs" / "b", "32-true")
    assert not first.reused and second.reused
    assert torch.equal(first.counts["style_hits"], second.counts["style_hits"])
    assert len(list((tmp_path / "runs" / ".eval_cache").iterdir())) == 1
    off = _evaluator(module, settings=replace(SETTINGS, reuse_base=False, cache_dir=str(tmp_path / "off")))
    assert not evaluate_base(module, off, tmp_path / "runs" / "c", "32-true").reused
    assert not (tmp_path / "off").exists()


@pytest.mark.slow  # two CLI streams: about 40 s of CPU
def test_a_second_stream_on_the_same_base_reads_the_base_evaluation_back(tmp_path, caplog):
    import json
    import logging

    from lightning_unlearn.cli import main

    def run(name: str) -> list[dict]:
        main(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml", "--data.requests=[Van Gogh]",
              f"--stream.run_dir={tmp_path / name}", "--data.steps_per_request=2", "--data.batch_size=2",
              "--model.method.init_args.ddim_steps=3", "--model.method.init_args.bank_trajectories=2",
              "--stream.evaluation.steps=3", "--stream.semantic_analysis=false", "--trainer.logger=false",
              "--data.styles=[Van Gogh, Cartoon]", "--data.objects=[circle, star, house]"])
        return json.loads((tmp_path / name / "results.json").read_text())

    first = run("a")
    entries = list((tmp_path / ".eval_cache").iterdir())
    assert len(entries) == 1 and (entries[0] / "recipe.json").is_file()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        second = run("b")
    assert "base evaluation reused from" in caplog.text
    assert {k: first[0][k] for k in ("IRA", "CRA", "style_acc", "object_acc")} == {
        k: second[0][k] for k in ("IRA", "CRA", "style_acc", "object_acc")}
    assert (tmp_path / "a/requests/00-base/grid.png").read_bytes() == (tmp_path / "b/requests/00-base/grid.png").read_bytes()
    assert len(list((tmp_path / ".eval_cache").iterdir())) == 1
