import pytest

from lightning_unlearn.tinyworld.dit import build_tiny_dit
from lightning_unlearn.tinyworld.unet import build_tiny_unet
from lightning_unlearn.trainable import TRAINABLE_SETS, apply_trainable, trainable_names


@pytest.fixture(scope="module")
def unet():
    return build_tiny_unet()


def test_each_set_selects_what_its_name_says(unet):
    all_names = [n for n, _ in unet.named_parameters()]
    esd_x = trainable_names(unet, "esd-x")
    kv = trainable_names(unet, "kv-xattn")
    esd_u = trainable_names(unet, "esd-u")
    assert esd_x and all(".attn2." in n for n in esd_x)
    assert kv and all(n.split(".attn2.")[1].split(".")[0] in ("to_k", "to_v") for n in kv)
    assert set(kv) < set(esd_x)
    assert set(esd_u) == set(all_names) - set(esd_x)
    assert trainable_names(unet, "full") == all_names
    # every cross-attention block contributes its key and value weights
    n_xattn = sum(1 for n in all_names if n.endswith("attn2.to_k.weight"))
    assert n_xattn >= 3 and len(kv) == 2 * n_xattn


def test_apply_sets_requires_grad(unet):
    names = apply_trainable(unet, "kv-xattn")
    for n, p in unet.named_parameters():
        assert p.requires_grad == (n in names)
    apply_trainable(unet, "full")
    assert all(p.requires_grad for p in unet.parameters())


def test_unknown_set_is_named(unet):
    with pytest.raises(ValueError, match="unknown trainable set 'esd-q'"):
        trainable_names(unet, "esd-q")
    assert set(TRAINABLE_SETS) == {"esd-x", "kv-xattn", "qkv-xattn", "kvo-xattn", "esd-u", "full"}


@pytest.mark.parametrize("build", [build_tiny_unet, build_tiny_dit], ids=["unet", "dit"])
def test_the_two_halves_add_the_query_or_the_output_projection_to_keys_and_values(build):
    """qkv-xattn and kvo-xattn sit between kv-xattn and esd-x and split what esd-x adds to
    kv-xattn into the queries and the output projection, on both backbones."""
    model = build()
    kv = set(trainable_names(model, "kv-xattn"))
    qkv = set(trainable_names(model, "qkv-xattn"))
    kvo = set(trainable_names(model, "kvo-xattn"))
    esd_x = set(trainable_names(model, "esd-x"))
    queries = {n for n in esd_x if ".attn2.to_q." in n}
    outputs = {n for n in esd_x if ".attn2.to_out." in n}
    assert queries and outputs
    assert qkv == kv | queries and kvo == kv | outputs
    assert qkv | kvo == esd_x and qkv & kvo == kv
