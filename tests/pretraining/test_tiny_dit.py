"""The DiT recipe starts from the DiT paper's initialisation, not diffusers' default."""

import math

import torch

from lightning_unlearn.pretraining.tiny_dit import INIT_STD, TinyDiTPretraining, initialize_like_dit
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
    assert torch.count_nonzero(TinyDiTPretraining.fresh_denoiser().proj_out.weight) == 0
