"""The DiT behind the UNet's call convention: calls, learned variance, attn2 inputs, trainable sets, LoRA."""

import torch
from diffusers import PixArtTransformer2DModel

from lightning_unlearn.denoisers import CrossAttentionDiT, cross_attention_inputs
from lightning_unlearn.lora import LoraSettings, add_request_adapter, fuse_request_adapter, target_weight_names
from lightning_unlearn.tinyworld.dit import build_tiny_dit
from lightning_unlearn.tinyworld.unet import build_tiny_unet
from lightning_unlearn.trainable import trainable_names

SMALL = dict(num_layers=2)


def inputs(batch: int = 2, channels: int = 12, size: int = 16, tokens: int = 5, width: int = 384):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen)
    states = torch.randn(batch, tokens, width, generator=gen)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[:, -2:] = 0
    return x, states, mask


def test_the_dit_is_called_like_a_unet_and_computes_pixarts_forward():
    torch.manual_seed(0)
    dit = build_tiny_dit(**SMALL).eval()
    x, states, mask = inputs()
    t = torch.tensor([10.0, 900.5])  # a flow model's timesteps are continuous
    out = dit(x, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
    assert out.shape == x.shape
    plain = PixArtTransformer2DModel.from_config(dit.config)
    plain.load_state_dict(dit.state_dict())
    expected = plain.eval()(x, encoder_hidden_states=states, timestep=t, encoder_attention_mask=mask).sample
    torch.testing.assert_close(out, expected)
    # A scalar timestep is broadcast over the batch, as a UNet's is.
    torch.testing.assert_close(dit(x, torch.tensor(10.0), encoder_hidden_states=states).sample[0],
                               dit(x, torch.tensor([10.0, 10.0]), encoder_hidden_states=states).sample[0])


def test_learned_variance_channels_are_dropped():
    torch.manual_seed(0)
    dit = build_tiny_dit(out_channels=24, **SMALL).eval()  # PixArt's learned sigma: 2 C outputs
    x, states, mask = inputs()
    out = dit(x, torch.tensor([5, 6]), encoder_hidden_states=states, encoder_attention_mask=mask).sample
    full = PixArtTransformer2DModel.forward(dit, x, encoder_hidden_states=states, timestep=torch.tensor([5, 6]),
                                            encoder_attention_mask=mask).sample
    assert full.shape[1] == 24 and out.shape[1] == 12
    torch.testing.assert_close(out, full[:, :12])


def test_cross_attention_inputs_are_the_projected_captions_on_a_dit_and_the_states_on_a_unet():
    torch.manual_seed(0)
    dit = build_tiny_dit(**SMALL)
    _, states, _ = inputs()
    projected = cross_attention_inputs(dit, states)
    assert projected.shape == (2, 5, 128)
    torch.testing.assert_close(projected, dit.caption_projection(states))
    # Those are what attn2.to_k multiplies: the key of the first block's cross-attention.
    assert dit.transformer_blocks[0].attn2.to_k.weight.shape[1] == projected.shape[-1]
    assert cross_attention_inputs(build_tiny_unet(), states) is states


def test_trainable_sets_resolve_on_the_transformer_blocks():
    dit = build_tiny_dit(**SMALL)
    names = [n for n, _ in dit.named_parameters()]
    esd_x = trainable_names(dit, "esd-x")
    assert esd_x and all(n.startswith("transformer_blocks.") and ".attn2." in n for n in esd_x)
    assert {n.split(".")[1] for n in esd_x} == {"0", "1"}  # every block's cross-attention
    kv = trainable_names(dit, "kv-xattn")
    assert sorted(kv) == sorted(n for n in names if ".attn2.to_k." in n or ".attn2.to_v." in n)
    assert "transformer_blocks.1.attn2.to_k.weight" in kv and not any("attn1" in n or "to_q" in n for n in kv)
    esd_u = trainable_names(dit, "esd-u")
    assert set(esd_u) == set(names) - set(esd_x)
    assert "caption_projection.linear_1.weight" in esd_u and "transformer_blocks.0.attn1.to_q.weight" in esd_u
    assert trainable_names(dit, "full") == names


def test_lora_adapters_attach_and_fuse_on_the_dit():
    torch.manual_seed(0)
    dit = build_tiny_dit(**SMALL)
    settings = LoraSettings(rank=2, alpha=2.0)
    assert target_weight_names(dit, settings) == [
        f"transformer_blocks.{i}.attn2.{w}.weight" for i in range(2) for w in ("to_k", "to_v")
    ]
    before = dit.transformer_blocks[0].attn2.to_k.weight.detach().clone()
    names = add_request_adapter(dit, settings)
    assert names and all(".lora_" in n for n in names)
    with torch.no_grad():
        for name in names:
            if ".lora_B." in name:
                dit.get_parameter(name).fill_(0.1)
    fuse_request_adapter(dit)
    assert not any(".lora_" in n for n, _ in dit.named_parameters())
    assert not torch.equal(dit.transformer_blocks[0].attn2.to_k.weight, before)


def test_a_subclass_checkpoint_is_pixarts_own():
    dit = build_tiny_dit(**SMALL)
    assert isinstance(dit, PixArtTransformer2DModel) and isinstance(dit, CrossAttentionDiT)
    plain = PixArtTransformer2DModel.from_config(dit.config)
    assert set(plain.state_dict()) == set(dit.state_dict())
