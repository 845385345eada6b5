"""Concept Ablation: the loss, its caption pairs, the anchor cache, and a short CLI stream."""

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import lightning_unlearn.methods.concept_ablation as ca
from lightning_unlearn.cli import main
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.methods import ConceptAblation
from lightning_unlearn.protocols import plan_request
from lightning_unlearn.requests import ConceptVocabulary, Request
from lightning_unlearn.sampling import TextCondition, predict_noise
from lightning_unlearn.tinyworld.concepts import tiny_vocabulary
from lightning_unlearn.unlearning_module import UnlearningModule

TINY = dict(images_per_anchor=4, ddim_steps=2, sample_batch=4)
STYLES = [Request("Van Gogh", "style"), Request("Cartoon", "style")]


def test_loss_on_known_tensors_trains_only_the_target_branch():
    eps_target = torch.tensor([1.0, 2.0, 0.0, -1.0], requires_grad=True)
    eps_anchor = torch.tensor([0.0, 4.0, 0.0, 1.0], requires_grad=True)
    loss = ca.concept_ablation_loss(eps_target, eps_anchor)
    assert loss.item() == pytest.approx((1 + 4 + 0 + 4) / 4)
    loss.backward()
    # d/d eps_target of mean (a - b)^2 is 2 (a - b) / n; the anchor is a stop-gradient target.
    assert torch.equal(eps_target.grad, torch.tensor([0.5, -1.0, 0.0, -1.0]))
    assert eps_anchor.grad is None


def test_caption_pairs_for_a_style_and_an_object():
    vocab = tiny_vocabulary()
    anchors, targets = ca.caption_pairs(Request("Van Gogh", "style"), vocab, ca.DEFAULT_OBJECT_ANCHORS)
    assert len(anchors) == len(targets) == len(vocab.objects)
    assert (anchors[3], targets[3]) == ("a star", "a star in Van Gogh style")

    anchors, targets = ca.caption_pairs(Request("star", "object"), vocab, {"star": "diamond"})
    assert len(anchors) == len(vocab.styles) + 1
    assert (anchors[0], targets[0]) == ("a diamond", "a star")
    assert ("a diamond in Monet style", "a star in Monet style") in zip(anchors, targets)
    assert all(a.replace("diamond", "star") == t for a, t in zip(anchors, targets))

    # A style may be mapped onto another style instead of the plain caption.
    anchors, targets = ca.caption_pairs(Request("Van Gogh", "style"), vocab, {"Van Gogh": "Monet"})
    assert (anchors[0], targets[0]) == ("a circle in Monet style", "a circle in Van Gogh style")


def test_every_tiny_world_object_has_a_different_known_anchor():
    vocab = tiny_vocabulary()
    assert set(ca.DEFAULT_OBJECT_ANCHORS) == set(vocab.objects)
    for target, anchor in ca.DEFAULT_OBJECT_ANCHORS.items():
        assert anchor in vocab.objects and anchor != target
    with pytest.raises(ValueError, match="no anchor for the object 'horse'"):
        ca.anchor_concept(Request("horse", "object"), ca.DEFAULT_OBJECT_ANCHORS)


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    torch.manual_seed(0)
    m = UnlearningModule(method=ConceptAblation(**TINY), trainable="kv-xattn")
    m.begin_request(plan_request(STYLES, 0, "sequential"), ["a painting in Van Gogh style"],
                    cache_dir=tmp_path_factory.mktemp("run") / "anchors")
    return m


def test_loss_is_the_mse_of_the_two_branches_with_gradient_through_the_target_only(module):
    method: ConceptAblation = module.method
    seeds = torch.tensor([11, 12])
    loss = method.loss(module.method_context, {"caption": ["unused"] * 2, "seed": seeds})
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.unet.named_parameters() if p.grad is not None}
    assert set(grads) == set(module.trainable_keys)  # kv-xattn only
    module.unet.zero_grad(set_to_none=True)

    # The same draws by hand: sample i's anchor image, timestep and noise from a generator seeded by seeds[i].
    gens = [torch.Generator().manual_seed(s) for s in (11, 12)]
    draws = [(torch.randint(0, 4, (1,), generator=g), torch.randint(0, 1000, (1,), generator=g),
              torch.randn(module.backbone.latent_shape, generator=g)) for g in gens]
    pick = torch.cat([d[0] for d in draws])
    t = torch.cat([d[1] for d in draws])
    noise = torch.stack([d[2] for d in draws])
    x_t = module.backbone.objective.add_noise(method.latents[pick], noise, t)
    pairs = method.caption_index[pick].tolist()
    target = TextCondition.from_captions(module.backbone, [method.target_captions[i] for i in pairs])
    anchor = TextCondition.from_captions(module.backbone, [method.anchor_captions[i] for i in pairs])
    assert all(method.target_captions[i] == method.anchor_captions[i] + " in Van Gogh style" for i in pairs)

    def branches():
        return predict_noise(module.unet, x_t, t, target), predict_noise(module.unet, x_t, t, anchor)

    eps_t, eps_a = branches()
    manual = F.mse_loss(eps_t, eps_a.detach())
    torch.testing.assert_close(loss, manual)
    manual.backward()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, module.unet.get_parameter(name).grad)
    module.unet.zero_grad(set_to_none=True)
    # Letting gradient through the anchor branch too would give a different update.
    eps_t, eps_a = branches()
    F.mse_loss(eps_t, eps_a).backward()
    assert any(not torch.allclose(g, module.unet.get_parameter(n).grad) for n, g in grads.items())
    module.unet.zero_grad(set_to_none=True)


def test_anchor_cache_is_reused_not_rebuilt(module, monkeypatch):
    first: ConceptAblation = module.method
    assert first.anchor_source == "generated"
    folder = module.method_context.cache_dir
    files = list(folder.glob("plain-*.safetensors"))
    assert len(files) == 1 and not list(folder.glob("*.tmp"))

    def no_sampling(*args, **kwargs):
        raise AssertionError("anchor images were sampled again instead of read from the cache")

    monkeypatch.setattr(ca, "ddim_sample", no_sampling)
    # Another style request shares the plain-caption anchor: served from memory.
    module.begin_request(plan_request(STYLES, 1, "sequential"), ["a painting in Cartoon style"], cache_dir=folder)
    assert first.anchor_source == "memory"
    # A fresh method (as in a later run on the same folder) reads the file, without sampling.
    again = ConceptAblation(**TINY)
    module.method = again
    try:
        module.begin_request(plan_request(STYLES, 1, "sequential"), ["a painting in Cartoon style"], cache_dir=folder)
        assert again.anchor_source == "disk"
        torch.testing.assert_close(again.latents, first.latents, rtol=0, atol=0)
        assert again.target_captions[0] == "a circle in Cartoon style"
    finally:
        module.method = first


def test_anchors_come_from_the_base_and_a_changed_base_changes_the_key(module, tmp_path):
    captions = module.method.anchor_captions
    context = module.method_context
    key = ConceptAblation(**TINY).cache_key(context, captions)
    assert ConceptAblation(**TINY).cache_key(context, captions) == key
    assert ConceptAblation(**{**TINY, "images_per_anchor": 5}).cache_key(context, captions) != key
    assert ConceptAblation(**{**TINY, "guidance": 2.0}).cache_key(context, captions) != key

    params = dict(module.unet.named_parameters())
    name = module.trainable_keys[0]
    saved_current, saved_base = params[name].detach().clone(), module.base_state()[name].clone()
    try:
        # Training moves the current weights, not the base: same key, same anchor images.
        with torch.no_grad():
            params[name].add_(1.0)
        fresh = ConceptAblation(**TINY, cache_dir=str(tmp_path))
        assert fresh.cache_key(context, captions) == key
        latents, _ = fresh.anchor_images(context, captions)
        assert fresh.anchor_source == "generated"
        torch.testing.assert_close(latents, module.method.latents)
        # Another base (different pretrained values) must never share the cache.
        module.base_state()[name].add_(1e-3)
        assert ConceptAblation(**TINY).cache_key(context, captions) != key
    finally:
        with torch.no_grad():
            params[name].copy_(saved_current)
        module.base_state()[name].copy_(saved_base)


FAST = [
    "--data.steps_per_request=2", "--data.batch_size=2",
    "--model.method.init_args.images_per_anchor=4", "--model.method.init_args.ddim_steps=2",
    "--stream.evaluation.steps=1", "--stream.evaluation.seeds_per_prompt=1", "--trainer.enable_model_summary=false",
    # A 3 x 3 world: these tests check the run folder and the anchor cache, not the metrics.
    "--data.styles=[Van Gogh, Monet, Cartoon]", "--data.objects=[circle, star, house]",
]


def test_cli_stream_of_a_style_and_an_object_writes_the_run_and_anchor_cache(tmp_path, caplog):
    run = tmp_path / "run"
    main(["unlearn", "--config", "configs/tinyworld/ca_styles_sequential.yaml",
          "--data.requests=[Van Gogh, star]", f"--stream.run_dir={run}", *FAST])
    for name in ("00-base", "01-van-gogh", "02-star"):
        assert (run / "requests" / name / "metrics.json").is_file()
    weights = load_file(str(run / "requests" / "02-star" / "weights.safetensors"))
    assert weights and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in weights)
    rows = json.loads((run / "results.json").read_text())
    assert [r["concept"] for r in rows] == ["base", "Van Gogh", "star"]
    # Cached next to the run folder, where every run on the same base finds them.
    assert not (run / "anchors").exists()
    anchors = sorted(p.name.split("-")[0] for p in (tmp_path / ".anchor_cache").glob("*.safetensors"))
    assert anchors == ["cross", "plain"]  # the style's plain captions, the star's default anchor
    cached = load_file(str(next((tmp_path / ".anchor_cache").glob("cross-*.safetensors"))))
    assert cached["latents"].shape[0] == 4 and cached["caption_index"].shape == (4,)

    # Another run on the same base (a study's next run) reuses them instead of sampling them again.
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / ".anchor_cache").iterdir()}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        main(["unlearn", "--config", "configs/tinyworld/ca_styles_sequential.yaml",
              "--data.requests=[Van Gogh]", f"--stream.run_dir={tmp_path / 'run2'}", *FAST])
    assert "Concept Ablation: 4 anchor images for 'plain' from" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / ".anchor_cache").iterdir()} == written


VAN_GOGH, STAR = Request("Van Gogh", "style"), Request("star", "object")


@pytest.mark.parametrize("anchors, requests, named", [
    ({"Van Gohg": "Monet"}, [VAN_GOGH], "names 'Van Gohg', which is not a concept of the vocabulary (did you mean 'Van Gogh'?)"),
    ({"Van Gogh": "monet"}, [VAN_GOGH], "the anchor 'monet' of 'Van Gogh' is not a tiny-world style (did you mean 'Monet'?)"),
    ({"Van Gogh": "Rembrandt"}, [VAN_GOGH], "the anchor 'Rembrandt' of 'Van Gogh' is not a tiny-world style; the tiny UNet knows only"),
    ({"star": "Monet"}, [STAR], "the anchor of the object 'star' is the style 'Monet'; a object's anchor must be a object"),
    ({"star": "star"}, [STAR], "the anchor of 'star' is the concept itself"),
])
def test_tiny_world_anchors_are_checked_at_the_start(module, anchors, requests, named):
    method = ConceptAblation(anchors=anchors, **TINY)
    with pytest.raises(SettingsError) as info:
        method.check_stream(module.backbone, requests, tiny_vocabulary())
    assert named in str(info.value)


def test_an_anchor_map_may_name_concepts_outside_the_stream(module):
    # A config's shared map (the SD configs anchor every UnlearnCanvas object) names more concepts
    # than one stream's vocabulary; only a near-miss of a known concept is a typo.
    ConceptAblation(anchors={"Rembrandt": "Monet"}, **TINY).check_stream(module.backbone, [VAN_GOGH], tiny_vocabulary())


def test_tiny_world_anchors_may_be_concepts_the_stream_vocabulary_leaves_out(module):
    # A stream over a subset still runs on the full tiny UNet, which knows "Monet".
    vocabulary = ConceptVocabulary(styles=["Van Gogh", "Cartoon"], objects=["circle", "ring"])
    ConceptAblation(anchors={"Van Gogh": "Monet"}, **TINY).check_stream(module.backbone, [VAN_GOGH], vocabulary)


def test_an_object_without_an_anchor_is_refused_at_the_start_not_at_its_request(module):
    vocabulary = ConceptVocabulary(styles=["Van Gogh"], objects=["star", "horse"])
    with pytest.raises(SettingsError, match="no anchor for the object 'horse'"):
        ConceptAblation(**TINY).check_stream(module.backbone, [STAR, Request("horse", "object")], vocabulary)


def test_real_model_anchors_outside_the_vocabulary_are_used_unless_a_near_miss(tiny_sd_folder, caplog):
    real = UnlearningModule(method=ConceptAblation(**TINY), pretrained=str(tiny_sd_folder), trainable="kv-xattn")
    vocabulary = ConceptVocabulary(styles=["Van Gogh", "Picasso"], objects=["zebra", "house"])
    zebra = Request("zebra", "object")
    # The text encoder of a real model knows "horse", though the stream does not score it; a
    # short word one letter from "house" is another word, not a typo.
    ConceptAblation(anchors={"zebra": "horse"}, **TINY).check_stream(real.backbone, [zebra], vocabulary)
    for anchor, meant in (("picaso", "Picasso"), ("Van-Gogh", "Van Gogh"), ("HOUSE", "house")):
        method = ConceptAblation(anchors={"zebra" if meant == "house" else "Van Gogh": anchor}, **TINY)
        request = zebra if meant == "house" else VAN_GOGH
        with pytest.raises(SettingsError, match=rf"the anchor '{anchor}' .* did you mean '{meant}'\?"):
            method.check_stream(real.backbone, [request], vocabulary)


def test_flow_backbone_noises_anchor_images_on_the_straight_line_and_matches_the_anchor_velocity(tmp_path):
    torch.manual_seed(0)
    m = UnlearningModule(method=ConceptAblation(**TINY), trainable="kv-xattn", backbone="tinyworld-dit")
    m.begin_request(plan_request(STYLES, 0, "sequential"), ["a painting in Van Gogh style"], cache_dir=tmp_path)
    method: ConceptAblation = m.method
    assert method.latents.shape == (4, *m.backbone.latent_shape) and torch.isfinite(method.latents).all()
    seeds = torch.tensor([11, 12])
    loss = method.loss(m.method_context, {"caption": ["unused"] * 2, "seed": seeds})
    gens = [torch.Generator().manual_seed(s) for s in (11, 12)]
    draws = [(torch.randint(0, 4, (1,), generator=g), torch.randint(0, 1000, (1,), generator=g),
              torch.randn(m.backbone.latent_shape, generator=g)) for g in gens]
    pick, t = torch.cat([d[0] for d in draws]), torch.cat([d[1] for d in draws])
    noise = torch.stack([d[2] for d in draws])
    s = (t.float() / 1000).reshape(-1, 1, 1, 1)
    x_t = (1 - s) * method.latents[pick] + s * noise  # rectified flow, by hand
    pairs = method.caption_index[pick].tolist()
    target = TextCondition.from_captions(m.backbone, [method.target_captions[i] for i in pairs])
    anchor = TextCondition.from_captions(m.backbone, [method.anchor_captions[i] for i in pairs])
    v_target, v_anchor = predict_noise(m.unet, x_t, t, target), predict_noise(m.unet, x_t, t, anchor)
    torch.testing.assert_close(loss, F.mse_loss(v_target, v_anchor), atol=1e-6, rtol=1e-5)
