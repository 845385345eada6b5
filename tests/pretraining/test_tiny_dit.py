"""The DiT recipe starts from the DiT paper's initialisation, not diffusers' default, or from a
trained DiT made deeper without changing what it computes."""

import math

import pytest
import torch

from lightning_unlearn.errors import SettingsError
from lightning_unlearn.pretraining.tiny_dit import (
    INIT_STD, TinyDiTPretraining, deepen_dit, initialize_like_dit, inserted_block_positions,
)
from lightning_unlearn.tinyworld.dit import build_tiny_dit

SMALL = {"num_layers": 2}


def _inputs(dit, batch: int = 2):
    torch.manual_seed(0)
    x = torch.randn(batch, dit.config.in_channels, 16, 16)
    states = torch.randn(batch, 7, dit.config.caption_channels)
    return x, torch.tensor([10.0, 700.0][:batch]), states


def test_a_dit_initialised_like_dit_predicts_zero_and_ignores_the_caption_until_trained():
    dit = initialize_like_dit(build_tiny_dit(**SMALL))
    x, t, states = _inputs(dit)
    # Zero output layer: the first prediction is exactly 0 whatever the input.
    assert torch.count_nonzero(dit(x, t, encoder_hidden_states=states).sample) == 0
    # Zero cross-attention output projections: the caption cannot move the hidden states yet.
    for block in dit.transformer_blocks:
        assert torch.count_nonzero(block.attn2.to_out[0].weight) == 0
        assert torch.count_nonzero(block.attn2.to_out[0].bias) == 0
    default = build_tiny_dit(**SMALL)
    assert torch.count_nonzero(default(x, t, encoder_hidden_states=states).sample) > 0


def test_linears_are_xavier_uniform_and_the_conditioning_mlps_have_the_dit_std():
    dit = initialize_like_dit(build_tiny_dit(**SMALL))
    zeroed = {"proj_out"} | {f"transformer_blocks.{i}.attn2.to_out.0" for i in range(SMALL["num_layers"])}
    mlps = ("adaln_single.emb.timestep_embedder.", "caption_projection.")
    for name, module in dit.named_modules():
        if not isinstance(module, torch.nn.Linear) or name in zeroed:
            continue
        assert torch.count_nonzero(module.bias) == 0, name
        if name.startswith(mlps):
            assert abs(module.weight.std().item() - INIT_STD) < 0.2 * INIT_STD, name
        else:
            fan_out, fan_in = module.weight.shape
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert module.weight.abs().max() <= bound, name
            # Uniform on [-bound, bound] has std bound / sqrt(3).
            assert abs(module.weight.std().item() - bound / math.sqrt(3)) < 0.1 * bound, name


def test_the_recipe_starts_from_the_dit_initialisation():
    # The card records it too (tests/pretraining/test_recipes.py).
    assert torch.count_nonzero(TinyDiTPretraining(num_layers=2).unet.proj_out.weight) == 0


def _trained_like(layers: int) -> dict[str, torch.Tensor]:
    """Weights of a DiT whose every tensor is non-zero (as after training), so that copying the
    wrong block or leaving a zero-initialised one in place changes the output."""
    torch.manual_seed(1)
    dit = build_tiny_dit(num_layers=layers)
    with torch.no_grad():
        for p in dit.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return dit.state_dict()


@pytest.mark.parametrize(
    ("old", "new", "positions"),
    [(8, 12, [2, 5, 8, 11]), (8, 9, [8]), (2, 7, [0, 1, 3, 4, 6]), (3, 3, []), (1, 2, [1])],
)
def test_new_blocks_are_spread_evenly_between_the_old_ones(old, new, positions):
    assert inserted_block_positions(old, new) == positions


def test_a_deepened_dit_computes_what_the_shallower_one_did():
    weights = _trained_like(2)
    shallow = build_tiny_dit(num_layers=2)
    shallow.load_state_dict(weights)
    deep = deepen_dit(weights, 5)
    assert len(deep.transformer_blocks) == 5
    x, t, states = _inputs(deep)
    expected = shallow(x, t, encoder_hidden_states=states).sample
    assert torch.count_nonzero(expected) > 0
    torch.testing.assert_close(deep(x, t, encoder_hidden_states=states).sample, expected, rtol=1e-5, atol=1e-5)
    # 2 -> 5: new blocks at 0, 2, 4; the old blocks 0 and 1 sit at 1 and 3, unchanged.
    assert inserted_block_positions(2, 5) == [0, 2, 4]
    for old, new in ((0, 1), (1, 3)):
        key = "attn2.to_k.weight"
        assert torch.equal(deep.state_dict()[f"transformer_blocks.{new}.{key}"], weights[f"transformer_blocks.{old}.{key}"])


def test_the_new_blocks_add_nothing_at_first_but_learn():
    deep = deepen_dit(_trained_like(2), 3)
    new_block = deep.transformer_blocks[inserted_block_positions(2, 3)[0]]
    outputs = (new_block.attn1.to_out[0], new_block.attn2.to_out[0], new_block.ff.net[2])
    assert all(torch.count_nonzero(layer.weight) == 0 for layer in outputs)
    # Their inner layers are DiT-initialised, not zero, so one step moves the outputs off zero.
    assert torch.count_nonzero(new_block.attn1.to_q.weight) > 0
    x, t, states = _inputs(deep)
    optimizer = torch.optim.SGD(deep.parameters(), lr=0.1)
    deep(x, t, encoder_hidden_states=states).sample.pow(2).mean().backward()
    optimizer.step()
    assert all(torch.count_nonzero(layer.weight) > 0 for layer in outputs)


def test_deepening_refuses_what_it_cannot_grow():
    with pytest.raises(SettingsError, match="fewer than the 3 blocks"):
        deepen_dit(_trained_like(3), 2)
    unet_like = {**_trained_like(1), "down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)}
    with pytest.raises(SettingsError, match="does not have: down_blocks"):
        deepen_dit(unet_like, 2)
    with pytest.raises(SettingsError, match="no transformer blocks"):
        deepen_dit({"conv.weight": torch.zeros(1)}, 2)  # a classifier's or a VAE's file
    wider = build_tiny_dit(num_layers=1, num_attention_heads=2).state_dict()
    with pytest.raises(SettingsError, match="does not fit"):
        deepen_dit(wider, 2)
