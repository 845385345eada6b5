"""Gradient projection: which directions are protected, and that W v stays put for each of them."""

from types import SimpleNamespace

import pytest

import torch

from lightning_unlearn.callbacks.gradient_projection import GradientProjection, drop_near_duplicates, ridge_factors
from lightning_unlearn.concept_embeddings import concept_embeddings
from lightning_unlearn.projection_bases import BANK_SIZE, ProjectionBasisError, bank_embeddings, reference_bank, template_words
from lightning_unlearn.protocols import plan_request
from lightning_unlearn.requests import ConceptVocabulary, Request
from lightning_unlearn.tinyworld.concepts import tiny_vocabulary


def kv_weights(module) -> dict[str, torch.Tensor]:
    return {k: p for k, p in module.unet.named_parameters() if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))}


def embed(module, names: list[str]) -> torch.Tensor:
    vocab = tiny_vocabulary()
    return concept_embeddings(module.backbone, vocab, [(n, vocab.kind_of(n)) for n in names]).float()


def test_ridge_projector_annihilates_the_protected_columns():
    torch.manual_seed(0)
    c = torch.randn(16, 3) * 5
    basis, solve = ridge_factors(c)
    p = torch.eye(16) - basis @ solve
    gram = c.double().T @ c.double()
    lam = max(1e-4, 1e-6 * float(torch.trace(gram)) / 3)
    expected = torch.eye(16, dtype=torch.float64) - c.double() @ torch.linalg.inv(gram + lam * torch.eye(3, dtype=torch.float64)) @ c.double().T
    torch.testing.assert_close(p.double(), expected, atol=1e-5, rtol=0)
    assert float((p @ c).norm() / c.norm()) < 1e-5
    v = torch.randn(16)
    v -= c @ torch.linalg.lstsq(c, v).solution  # orthogonal to span(C): left alone
    torch.testing.assert_close(p @ v, v, atol=1e-5, rtol=0)


def test_near_duplicate_directions_are_dropped_in_order():
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    vectors = torch.stack([a, a * 3 + 0.01 * b, b, (a + b)])
    assert drop_near_duplicates(vectors) == [0, 2, 3]


def test_protected_set_by_threshold_top_n_vocabulary_and_earlier_requests(module, make_data):
    data = make_data(["Van Gogh", "Picasso"])
    plan = plan_request(data.requests, 1, "sequential")  # serving Picasso; Van Gogh was unlearned
    data.begin_request(plan)
    module.begin_request(plan, data.erase_captions(data.requests[1]))
    trainer = SimpleNamespace(datamodule=data)
    names = [*data.vocabulary.styles, *data.vocabulary.objects]
    sims = torch.nn.functional.cosine_similarity(embed(module, names), embed(module, ["Picasso"]))
    # 0.32 sits clear of every similarity to Picasso, so rounding cannot flip a concept.
    similar = {n for n, s in zip(names, sims.tolist()) if s >= 0.32 and n != "Picasso"}
    assert len(similar) >= 2

    by_threshold = GradientProjection(similarity_threshold=0.32)
    concepts, vectors = by_threshold.protected_concepts(trainer, module)
    assert concepts[0] == ("Van Gogh", "style")  # earlier erasures come first
    assert {c for c, _ in concepts} == similar | {"Van Gogh"} and "Picasso" not in dict(concepts)
    assert vectors.shape == (len(concepts), 384)

    top1 = GradientProjection(similarity_threshold=None, top_n=1, protect_unlearned=False)
    best = names[int(torch.where(torch.tensor([n != "Picasso" for n in names]), sims, -2.0).argmax())]
    assert [c for c, _ in top1.protected_concepts(trainer, module)[0]] == [best]

    listed = GradientProjection(similarity_threshold=-1.0, vocabulary=["circle", "Picasso", "Monet"], protect_unlearned=False)
    assert sorted(c for c, _ in listed.protected_concepts(trainer, module)[0]) == ["Monet", "circle"]

    nothing = GradientProjection(similarity_threshold=None, protect_unlearned=False)
    nothing.on_request_start(trainer, module)
    assert nothing.protected == [] and nothing.projector() is None


def test_gradient_mode_makes_the_gradient_orthogonal_to_every_protected_direction(module):
    plan = plan_request([Request("Van Gogh", "style")], 0, "sequential")
    module.begin_request(plan, ["a painting in Van Gogh style"])
    projection = GradientProjection(mode="gradient", similarity_threshold=0.3)
    projection.on_request_start(SimpleNamespace(datamodule=None), module)
    projection.on_train_start(None, module)
    assert projection.protected and len(projection._params) == 14
    protected = embed(module, projection.protected)

    batch = {"caption": ["a painting in Van Gogh style"] * 2, "seed": torch.tensor([3, 4])}
    loss = module.method.loss(module.method_context, batch)
    loss.backward()
    weights = kv_weights(module)
    before = {k: p.grad.clone() for k, p in weights.items()}
    projection.on_after_backward(None, module)
    p_matrix = projection.projector()
    for k, w in weights.items():
        g0, g = before[k], w.grad
        assert float((g0 @ protected.T).norm()) > 0
        assert float((g @ protected.T).norm()) < 1e-4 * float(g0.norm() * protected.norm(dim=1).max())
        torch.testing.assert_close(g, g0 @ p_matrix, atol=1e-5 * float(g0.abs().max()), rtol=1e-4)
    module.unet.zero_grad(set_to_none=True)


def test_update_mode_keeps_w_v_for_every_protected_v_through_a_whole_request(module, serve, make_data):
    # Adam rescales the gradient per element and weight decay moves every weight: a projected
    # gradient would not survive either; the projected update does.
    module.optimizer_factory = lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.5)
    start = {k: w.detach().clone() for k, w in kv_weights(module).items()}
    projection = GradientProjection(mode="update", similarity_threshold=0.3)
    trainer = serve(module, make_data(["Van Gogh"], steps=3), [projection])
    assert projection.protected == ["Impressionism", "Picasso"]
    protected = embed(module, projection.protected)
    target = embed(module, ["Van Gogh"])
    for k, w in kv_weights(module).items():
        change = w.detach() - start[k]
        assert float(change.norm()) > 1e-3, k  # W did change
        scale = float(change.norm() * protected.norm(dim=1).max())
        assert float((change @ protected.T).norm()) < 1e-4 * scale, k
        assert float((change @ target.T).norm()) > 1e-2 * float(change.norm() * target.norm()), k
    assert float(trainer.callback_metrics[f"{projection.log_prefix}/protected_directions"]) == 2.0
    state = projection.state_dict()
    assert state["basis"].shape == (384, 2) and state["solve"].shape == (2, 384) and state["protected"] == projection.protected


# -- LoRA requests: the effective update s B A is what must leave W v fixed ------------------------
@pytest.fixture(scope="module")
def lora_module():
    from lightning_unlearn.lora import LoraSettings
    from lightning_unlearn.methods import ESD
    from lightning_unlearn.unlearning_module import UnlearningModule

    return UnlearningModule(method=ESD(ddim_steps=3, bank_trajectories=2, bank_batch=2), trainable="lora",
                            lora=LoraSettings(rank=4, alpha=4.0), lr=1e-2)


def lora_request(module, serve, make_data, optimizer, callbacks) -> tuple[dict, dict]:
    """Serve Van Gogh (3 steps) as a LoRA request from the base; (W before, W after) of the
    fused cross-attention keys and values."""
    module.load_trainable_state(module.base_state(), source="the base weights")
    module.clear_request()
    module.optimizer_factory = optimizer
    before = {k: w.detach().clone() for k, w in kv_weights(module).items()}
    serve(module, make_data(["Van Gogh"], steps=3), callbacks)
    assert not any(".lora_" in k for k, _ in module.unet.named_parameters())  # fused at the request's end
    return before, {k: w.detach().clone() for k, w in kv_weights(module).items()}


def protected_drift(before: dict, after: dict, protected: torch.Tensor) -> tuple[float, float]:
    """max over layers of |dW C| / (|dW| max|v|) and of max_v |dW v| / |W v|, for the protected v (rows)."""
    normalised, relative = 0.0, 0.0
    for k in before:
        change = after[k] - before[k]
        assert float(change.norm()) > 1e-4, k  # the request did change the layer
        normalised = max(normalised, float((change @ protected.T).norm() / (change.norm() * protected.norm(dim=1).max())))
        relative = max(relative, float(((change @ protected.T).norm(dim=0) / (before[k] @ protected.T).norm(dim=0)).max()))
    return normalised, relative



@pytest.mark.parametrize("mode, optimizer", [
    ("update", lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.5)),
    ("gradient", lambda params: torch.optim.SGD(params, lr=100.0)),  # linear steps: A's projected gradient stays projected
])
def test_lora_projection_keeps_protected_w_v_fixed_and_without_it_w_v_moves(lora_module, serve, make_data, mode, optimizer):
    projection = GradientProjection(mode=mode, similarity_threshold=0.3)
    before, after = lora_request(lora_module, serve, make_data, optimizer, [projection])
    assert projection.protected == ["Impressionism", "Picasso"]
    assert len(projection.keys) == 14 and all(".lora_A." in k for k in projection.keys)  # A only, never B
    protected = embed(lora_module, projection.protected)
    normalised, relative = protected_drift(before, after, protected)
    # Tolerance: the ridge term lambda leaves A C at ~lambda / |C|^2 of A's size, not exactly 0.
    assert normalised < 1e-4 and relative < 1e-5, (normalised, relative)

    unprojected_before, unprojected_after = lora_request(lora_module, serve, make_data, optimizer, [])
    moved, moved_relative = protected_drift(unprojected_before, unprojected_after, protected)
    assert moved > 1e-2 and moved_relative > 1e-4, (moved, moved_relative)


# -- the other bases: the reference code's prompt bank, and the caption template's words ----------
def test_reference_bank_is_a_fixed_list_over_both_domains():
    vocab = tiny_vocabulary()
    bank = reference_bank(vocab)
    assert len(bank) == BANK_SIZE == 200 and bank == reference_bank(vocab)  # generated once, the same every time
    assert len({p.caption for p in bank}) == 200
    # round 0: the reference's two templates, styles and objects alternating
    assert [p.caption for p in bank[:4]] == ["An image in the style of Van Gogh", "An image of a circle",
                                             "An image in the style of Monet", "An image of a square"]
    assert {p.kind for p in bank[:28]} == {"style", "object"} and len({p.concept for p in bank[:28]}) == 28
    # later rounds: the world's captions, with a partner of the other kind
    assert bank[28].caption == vocab.templates.concept_prompt("Van Gogh", "style")
    full = [p for p in bank if len(p.mentions) == 2]
    assert full and all(p.caption == vocab.templates.caption(*(p.mentions if p.kind == "style" else p.mentions[::-1]))
                        for p in full)
    # a large vocabulary: one reference-template prompt per concept, as the reference code
    big = ConceptVocabulary(styles=[f"style{i}" for i in range(150)], objects=[f"thing{i}" for i in range(150)])
    assert [p.caption for p in reference_bank(big)][:2] == ["An image in the style of style0", "An image of a thing0"]
    assert len(reference_bank(big)) == 200 and all(p.caption.startswith("An image") for p in reference_bank(big))


def test_template_words_are_found_by_position_not_by_search():
    caption, words = template_words("a painting in {style} style", {"style": "Pop Art"})
    assert caption == "a painting in Pop Art style"
    # "in" also occurs inside "painting": positions, not str.find, locate the template's own word
    assert [(w, caption[s:e]) for w, s, e in words] == [("a", "a"), ("painting", "painting"), ("in", "in"), ("style", "style")]
    assert words[2][1] == 11


def serving_picasso_after_van_gogh(module, make_data):
    data = make_data(["Van Gogh", "Picasso"])
    plan = plan_request(data.requests, 1, "sequential")
    data.begin_request(plan)
    module.begin_request(plan, data.erase_captions(data.requests[1]))
    return SimpleNamespace(datamodule=data)


def test_reference_bank_basis_drops_the_targets_prompts_keeps_earlier_erasures_and_near_duplicates_go(module, make_data):
    trainer = serving_picasso_after_van_gogh(module, make_data)
    projection = GradientProjection(basis="reference_bank")
    labels, vectors = projection.protected_directions(trainer, module)
    bank = reference_bank(tiny_vocabulary())
    allowed = [p for p in bank if "Picasso" not in p.mentions]
    naming_picasso = [p for p in bank if "Picasso" in p.caption]
    assert len(allowed) == 200 - len(naming_picasso) and len(naming_picasso) > 3  # 3 one-concept prompts + full captions
    assert labels[0] == "Van Gogh" and not any("Picasso" in label for label in labels)
    assert set(labels[1:]) <= {p.caption for p in allowed}
    # every column is what the documentation says: a prompt's concept tokens, averaged
    by_caption = {p.caption: p for p in allowed}
    expected = torch.cat([embed(module, ["Van Gogh"]), bank_embeddings(module.backbone, [by_caption[c] for c in labels[1:]]).float()])
    torch.testing.assert_close(vectors, expected)
    # near-duplicates: no two kept columns closer than 0.95; every prompt left out has a kept one closer
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    cosines = unit @ unit.T - 2 * torch.eye(len(labels))
    assert float(cosines.max()) <= 0.95
    dropped = [p for p in allowed if p.caption not in set(labels)]
    assert dropped, "the tiny world's bank has near-duplicates"
    dropped_unit = torch.nn.functional.normalize(bank_embeddings(module.backbone, dropped).float(), dim=-1)
    assert float((dropped_unit @ unit.T).max(dim=1).values.min()) > 0.95
    projection.on_request_start(trainer, module)
    assert projection.protected == labels and projection.basis.shape == (384, len(labels))
    assert GradientProjection(basis="reference_bank", protect_unlearned=False).protected_directions(trainer, module)[0][0] != "Van Gogh"
    # a listed vocabulary is the bank's concept list (the world still says which kind each is)
    listed = GradientProjection(basis="reference_bank", vocabulary=["circle", "Monet", "Picasso"], protect_unlearned=False)
    labels, _ = listed.protected_directions(trainer, module)
    assert labels[:2] == ["An image in the style of Monet", "An image of a circle"]
    assert all(("Monet" in label or "circle" in label) and "Picasso" not in label for label in labels)


def test_template_basis_adds_one_column_per_shared_template_word(module, make_data):
    trainer = serving_picasso_after_van_gogh(module, make_data)
    similar, similar_vectors = GradientProjection().protected_directions(trainer, module)
    labels, vectors = GradientProjection(basis="template").protected_directions(trainer, module)
    words = ["'a' of 'a {object} in {style} style'", "'in' of 'a {object} in {style} style'",
             "'style' of 'a {object} in {style} style'", "'a' of 'a painting in {style} style'",
             "'painting' of 'a painting in {style} style'", "'in' of 'a painting in {style} style'",
             "'style' of 'a painting in {style} style'", "'a' of 'a {object}'"]
    assert labels == [*similar, *words] and "Van Gogh" in similar
    torch.testing.assert_close(vectors[: len(similar)], similar_vectors)
    # "a" of "a {object}": the first token's state, averaged over every object's caption
    states, _ = module.backbone.encode_text([f"a {o}" for o in tiny_vocabulary().objects])
    torch.testing.assert_close(vectors[-1], states[:, 1].mean(0).float().cpu())
    # "style" of the full caption, over the 15 retained styles x 12 objects (Picasso is the target)
    vocab = tiny_vocabulary()
    captions = [f"a {o} in {s} style" for s in vocab.styles if s != "Picasso" for o in vocab.objects]
    states, _ = module.backbone.encode_text(captions)
    last = [1 + module.backbone.count_tokens(c) - 1 for c in captions]  # "style" is one token, the last
    torch.testing.assert_close(vectors[len(similar) + 2], torch.stack([states[i, j] for i, j in enumerate(last)]).mean(0).float().cpu())


def test_an_unknown_basis_is_a_named_error(cli_error, tmp_path):
    line = cli_error(["unlearn", "--config", "configs/tinyworld/ca_styles_sequential.yaml",
                      "--trainer.callbacks+=configs/callbacks/projection_update.yaml",
                      "--trainer.callbacks.init_args.basis=bank", f"--stream.run_dir={tmp_path / 'run'}"])
    assert line == ("error: lightning_unlearn.callbacks.gradient_projection.GradientProjection init_args.basis must be "
                    "one of ['similar', 'reference_bank', 'template'], got 'bank'")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ProjectionBasisError):
        GradientProjection(basis="Reference_Bank")


@pytest.mark.parametrize("basis", ["reference_bank", "template"])
def test_update_mode_keeps_w_v_fixed_for_every_column_of_the_other_bases(module, serve, make_data, basis):
    module.optimizer_factory = lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.5)
    data = make_data(["Van Gogh", "Picasso"])
    serve(module, data, [], stop_after=1)  # Van Gogh erased without projection
    start = {k: w.detach().clone() for k, w in kv_weights(module).items()}
    projection = GradientProjection(mode="update", basis=basis)
    serve(module, data, [projection], start=1)
    assert projection.protected[0] == "Van Gogh" and len(projection.protected) > 8
    columns = projection.basis.T  # [m, 384], checked against the documented columns above
    target = embed(module, ["Picasso"])
    for k, w in kv_weights(module).items():
        change = w.detach() - start[k]
        assert float(change.norm()) > 1e-3, k
        # Tolerance: the ridge term leaves |dW v| at ~1e-5 of |dW| |v| for the worst column.
        worst = float((change @ columns.T).norm(dim=0).max() / (change.norm() * columns.norm(dim=1).max()))
        assert worst < 1e-4, (k, worst)


# -- the tiny DiT: attn2 reads the projected captions, and that is the space protected --------------
@pytest.fixture(scope="module")
def dit_module():
    from lightning_unlearn.methods import ESD
    from lightning_unlearn.unlearning_module import UnlearningModule

    torch.manual_seed(0)
    return UnlearningModule(method=ESD(ddim_steps=3, bank_trajectories=2, bank_batch=2), trainable="esd-x",
                            backbone="tinyworld-dit", lr=1e-3)


def test_update_mode_keeps_w_v_fixed_on_the_dits_cross_attention(dit_module, serve, make_data):
    dit_module.optimizer_factory = lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.5)
    start = {k: w.detach().clone() for k, w in kv_weights(dit_module).items()}
    assert start and all(k.startswith("transformer_blocks.") for k in start)
    projection = GradientProjection(mode="update", similarity_threshold=None, top_n=3)
    serve(dit_module, make_data(["Van Gogh"], steps=3), [projection])
    assert len(projection.protected) == 3 and len(projection.keys) == len(start)
    vocab = tiny_vocabulary()
    # The protected v are the captions as attn2 reads them (after caption_projection, 128-d) ...
    protected = concept_embeddings(dit_module.backbone, vocab, [(n, vocab.kind_of(n)) for n in projection.protected],
                                   attention_inputs=True).float()
    assert protected.shape == (3, 128) and projection.basis.shape == (128, 3)
    target = concept_embeddings(dit_module.backbone, vocab, [("Van Gogh", "style")], attention_inputs=True).float()
    for k, w in kv_weights(dit_module).items():
        change = w.detach() - start[k]
        assert float(change.norm()) > 1e-3, k  # W did change
        scale = float(change.norm() * protected.norm(dim=1).max())
        assert float((change @ protected.T).norm()) < 1e-4 * scale, k  # ... and W v stayed put for them
        assert float((change @ target.T).norm()) > 1e-2 * float(change.norm() * target.norm()), k
