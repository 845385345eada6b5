import pytest
import torch

from lightning_unlearn.methods.esd import ESD, esd_target
from lightning_unlearn.protocols import plan_request
from lightning_unlearn.requests import Request
from lightning_unlearn.sampling import TextCondition, ddim_sample, noise_pair, seeded_noise
from lightning_unlearn.unlearning_module import UnlearningModule


def test_esd_target_on_known_tensors():
    e0 = torch.tensor([1.0, 2.0, 0.0])
    ep = torch.tensor([2.0, 0.0, 0.0])
    assert torch.equal(esd_target(e0, ep, 1.0), torch.tensor([0.0, 4.0, 0.0]))
    assert torch.equal(esd_target(e0, ep, 2.0), torch.tensor([-1.0, 6.0, 0.0]))
    assert torch.equal(esd_target(e0, ep, 0.0), e0)


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    m = UnlearningModule(method=ESD(ddim_steps=4, bank_trajectories=3, bank_batch=2), trainable="kv-xattn")
    m.begin_request(plan_request([Request("Van Gogh", "style")], 0, "sequential"), ["a painting in Van Gogh style"])
    return m


def test_bank_holds_every_step_of_the_frozen_trajectory(module):
    bank = module.method.bank
    assert bank["x"].shape[0] == 3 * 4 and bank["t"].unique().numel() == 4
    # Entry (trajectory 1, step 2) equals an online run stopped after 2 steps from the same noise.
    backbone, ref = module.backbone, module.reference_unet
    cond = TextCondition.from_captions(backbone, ["a painting in Van Gogh style"])
    uncond = TextCondition.from_captions(backbone, [""])
    noise = seeded_noise(torch.tensor([module.request_seed * 100_003 + 1]), backbone.latent_shape)
    x_t, t = ddim_sample(backbone, ref, noise, cond, uncond, 4, 3.0, stop_after=2)
    row = 2 * 2 + 1  # recorded step-major within the first chunk of two trajectories
    assert int(bank["t"][row]) == int(t)
    torch.testing.assert_close(bank["x"][row : row + 1], x_t, atol=1e-5, rtol=1e-5)
    e0, ep = noise_pair(ref, x_t, t, cond, uncond)
    torch.testing.assert_close(bank["target"][row : row + 1], esd_target(e0, ep, 1.0), atol=1e-5, rtol=1e-5)


def test_loss_trains_only_the_trainable_set_and_pushes_target_away(module):
    batch = {"caption": ["a painting in Van Gogh style"] * 2, "seed": torch.tensor([5, 6])}
    loss = module.method.loss(module.method_context, batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    for name, p in module.unet.named_parameters():
        assert (p.grad is not None) == (".attn2.to_k." in name or ".attn2.to_v." in name)
    module.unet.zero_grad(set_to_none=True)


def test_online_source_gives_a_finite_loss():
    torch.manual_seed(0)
    m = UnlearningModule(method=ESD(ddim_steps=3, xt_source="online"))
    m.begin_request(plan_request([Request("Cartoon", "style")], 0, "sequential"), ["a painting in Cartoon style"])
    assert m.method.bank is None
    batch = {"caption": ["a painting in Cartoon style"] * 2, "seed": torch.tensor([1, 2])}
    loss = m.method.loss(m.method_context, batch)
    assert torch.isfinite(loss)


def test_bad_source_is_named():
    with pytest.raises(ValueError, match="xt_source must be"):
        ESD(xt_source="cache")


def test_bank_draws_depend_on_each_sample_seed_alone(module):
    # How a global batch is split (DDP ranks, batch size) must not change what it trains on.
    seeds = torch.tensor([7, 8, 9, 10])
    whole = module.method._draw_from_bank(seeds, torch.device("cpu"))
    parts = [module.method._draw_from_bank(seeds[i : i + 1], torch.device("cpu")) for i in range(4)]
    for j in range(3):
        assert torch.equal(whole[j], torch.cat([p[j] for p in parts]))
    assert whole[3] == [c for p in parts for c in p[3]]
    assert len(set(whole[1].tolist()) | set(whole[0].flatten(1).sum(1).tolist())) > 1  # not one entry repeated
