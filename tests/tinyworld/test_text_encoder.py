import torch

from lightning_unlearn.concept_embeddings import concept_embeddings, concept_token_span, cosine_matrix
from lightning_unlearn.tinyworld.backbone import TinyWorldBackbone
from lightning_unlearn.tinyworld.concepts import tiny_vocabulary
from lightning_unlearn.tinyworld.text_encoder import HIDDEN_SIZE, MAX_TOKENS, MiniLMTextEncoder


def test_token_states_shape_mask_and_determinism():
    enc = MiniLMTextEncoder()
    states, mask = enc(["a star in Van Gogh style", ""])
    assert states.shape == (2, MAX_TOKENS, HIDDEN_SIZE)
    assert mask[0].sum() > mask[1].sum() == 2  # [CLS] [SEP] for the empty caption
    again, _ = enc(["a star in Van Gogh style", ""])
    assert torch.equal(states, again)
    assert not any(p.requires_grad for p in enc.parameters())


def test_concept_span_covers_multi_token_names():
    backbone = TinyWorldBackbone()
    caption = "a painting in Van Gogh style"
    start, end = concept_token_span(backbone, caption, "Van Gogh")
    ids = backbone.tokenizer(caption)["input_ids"]
    assert backbone.tokenizer.decode(ids[start:end]) == "van gogh"


def test_real_semantics_neighbouring_styles_are_closer():
    backbone = TinyWorldBackbone()
    vocab = tiny_vocabulary()
    names = [("Monet", "style"), ("Impressionism", "style"), ("Neon Lines", "style"), ("Picasso", "style"),
             ("Cubism", "style")]
    sim = cosine_matrix(concept_embeddings(backbone, vocab, names))
    assert sim[0, 1] > sim[0, 2]  # Monet is nearer Impressionism than Neon Lines
    assert sim[3, 4] > sim[3, 2]  # Picasso is nearer Cubism than Neon Lines
