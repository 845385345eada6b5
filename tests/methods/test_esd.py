import pytest
import torch

from lightning_unlearn.errors import SettingsError
from lightning_unlearn.methods.esd import ESD, ddpm_range_of_stop, esd_target, reference_draws
from lightning_unlearn.protocols import plan_request
from lightning_unlearn.requests import Request
from lightning_unlearn.sampling import (
    TextCondition, ddim_sample, guided_trajectory, noise_pair, predict_noise, seeded_noise,
)
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
    with pytest.raises(SettingsError, match="xt_source must be one of bank, online, reference; got 'cache'"):
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


# -- xt_source=reference: the ESD reference code's sampling ---------------------------------------
CAPTION = "a painting in Van Gogh style"


@pytest.fixture(scope="module")
def ref_module():
    torch.manual_seed(0)
    m = UnlearningModule(method=ESD(ddim_steps=4, xt_source="reference"), trainable="kv-xattn")
    m.begin_request(plan_request([Request("Van Gogh", "style")], 0, "sequential"), [CAPTION])
    return m


def test_ddpm_range_of_stop_is_the_reference_mapping():
    # round(t_enc / N * T) .. round((t_enc + 1) / N * T), as train-esd.py.
    assert ddpm_range_of_stop(0, 50, 1000) == (0, 20)
    assert ddpm_range_of_stop(7, 50, 1000) == (140, 160)
    assert ddpm_range_of_stop(49, 50, 1000) == (980, 1000)
    assert ddpm_range_of_stop(3, 4, 1000) == (750, 1000)
    assert ddpm_range_of_stop(1, 3, 1000) == (333, 667)
    noise, t_enc, t_ddpm = reference_draws(5, (2, 3), 50, 1000)
    low, high = ddpm_range_of_stop(t_enc, 50, 1000)
    assert low <= t_ddpm < high and torch.equal(noise, seeded_noise(torch.tensor([5]), (2, 3))[0])


def test_reference_x_t_comes_from_the_trained_unet_online_from_the_frozen_copy(ref_module):
    m = ref_module
    seeds, captions = torch.tensor([11, 12]), [CAPTION] * 2
    online = ESD(ddim_steps=4, xt_source="online")
    ref_before = m.method.reference_xt(m.method_context, seeds, captions)
    online_before = online._run_online(m.method_context, {"seed": seeds, "caption": captions})
    grid = m.backbone.sampling_scheduler()
    grid.set_timesteps(4)
    assert int(online_before[1][0]) != int(grid.timesteps[0])  # online took steps from noise
    values = [p for n, p in m.unet.named_parameters() if ".attn2.to_v." in n]
    saved = [p.detach().clone() for p in values]
    try:
        with torch.no_grad():
            for p in values:
                p.mul_(3.0)  # what a few training steps do to the trained UNet, only bigger
        ref_after = m.method.reference_xt(m.method_context, seeds, captions)
        online_after = online._run_online(m.method_context, {"seed": seeds, "caption": captions})
    finally:
        with torch.no_grad():
            for p, v in zip(values, saved):
                p.copy_(v)
    assert torch.equal(ref_before["t"], ref_after["t"]) and torch.equal(ref_before["t_enc"], ref_after["t_enc"])
    assert (ref_before["x"] - ref_after["x"]).abs().max() > 1e-3  # x_t follows the trained weights
    assert torch.equal(online_before[0], online_after[0])  # online: the frozen copy's x_t, unchanged
    assert torch.equal(online_before[2], online_after[2])


def test_reference_x_t_is_the_trained_unets_guided_ddim_from_tau_1(ref_module):
    # N - max(t_enc, 1) steps from tau_1 (the reference's sampler drops tau_0), guidance 3.
    m = ref_module
    draw = m.method.reference_xt(m.method_context, torch.tensor([21]), [CAPTION])
    noise, t_enc, _ = reference_draws(21, m.backbone.latent_shape, 4, 1000)
    scheduler = m.backbone.sampling_scheduler()
    scheduler.set_timesteps(4)
    n = 4 - max(t_enc, 1)
    cond = TextCondition.from_captions(m.backbone, [CAPTION])
    uncond = TextCondition.from_captions(m.backbone, [""])
    with torch.no_grad():
        x = guided_trajectory(scheduler, m.unet, noise[None], cond, uncond, 3.0, scheduler.timesteps[1 : 1 + n])
    torch.testing.assert_close(draw["x"], x, atol=1e-5, rtol=1e-5)
    assert int(draw["t_own"][0]) == (int(scheduler.timesteps[n + 1]) if n + 1 < 4 else -1)


def test_reference_unets_are_called_at_t_ddpm_not_at_x_ts_own_timestep(ref_module):
    m = ref_module
    seeds, captions = torch.arange(30, 35), [CAPTION] * 5
    draw = m.method.reference_xt(m.method_context, seeds, captions)
    assert len(set(draw["t_enc"].tolist())) > 1
    for t, t_enc, own in zip(draw["t"].tolist(), draw["t_enc"].tolist(), draw["t_own"].tolist()):
        low, high = ddpm_range_of_stop(t_enc, 4, 1000)
        assert low <= t < high and t != own  # grid 750/500/250/0: never x_t's own level here
    calls: dict[str, list[torch.Tensor]] = {"trained": [], "frozen": []}
    hooks = [
        m.unet.register_forward_pre_hook(lambda mod, args: calls["trained"].append(args[1].clone())),
        m.reference_unet.register_forward_pre_hook(lambda mod, args: calls["frozen"].append(args[1].clone())),
    ]
    try:
        loss = m.method.loss(m, {"seed": seeds, "caption": captions})
    finally:
        for h in hooks:
            h.remove()
    assert torch.isfinite(loss)
    # The loss's prediction and the frozen target pair: both at t_ddpm, sample by sample.
    assert torch.equal(calls["trained"][-1], draw["t"])
    assert len(calls["frozen"]) == 1 and torch.equal(calls["frozen"][0], torch.cat([draw["t"], draw["t"]]))
    # Before, the trained UNet sampled x_t: from tau_1 (500 of the grid 750, 500, 250, 0) down.
    assert len(calls["trained"]) > 1 and bool((calls["trained"][0] == 500).all())


def test_reference_draws_are_deterministic_and_per_sample(ref_module):
    m = ref_module
    seeds, captions = torch.tensor([3, 4]), [CAPTION] * 2
    a = m.method.reference_xt(m.method_context, seeds, captions)
    b = m.method.reference_xt(m.method_context, seeds, captions)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # Sample i depends on seeds[i] alone (DDP ranks and batch sizes draw the same x_t).
    parts = [m.method.reference_xt(m.method_context, seeds[i : i + 1], captions[:1]) for i in range(2)]
    for key in ("t", "t_enc", "t_own"):
        assert torch.equal(a[key], torch.cat([p[key] for p in parts]))
    for key in ("x", "target"):
        torch.testing.assert_close(a[key], torch.cat([p[key] for p in parts]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a["x"][:1], m.method.reference_xt(m.method_context, torch.tensor([6]), captions[:1])["x"])


# -- a flow-matching backbone: the same loss on the predicted velocity ----------------------------
@pytest.fixture(scope="module")
def dit_module():
    torch.manual_seed(0)
    m = UnlearningModule(method=ESD(ddim_steps=4, bank_trajectories=3, bank_batch=2, negative_guidance=1.5),
                         trainable="kv-xattn", backbone="tinyworld-dit")
    m.begin_request(plan_request([Request("Van Gogh", "style")], 0, "sequential"), ["a painting in Van Gogh style"])
    return m


def test_flow_bank_targets_are_negatively_guided_velocities_on_the_euler_trajectory(dit_module):
    from diffusers import FlowMatchEulerDiscreteScheduler

    backbone, ref, bank = dit_module.backbone, dit_module.reference_unet, dit_module.method.bank
    assert backbone.objective.name == "flow-matching"
    assert isinstance(backbone.sampling_scheduler(), FlowMatchEulerDiscreteScheduler)
    # x_t sit on the flow's own grid, t = 1000 s for s evenly spaced from 1 to 1/1000: 4 steps.
    assert torch.allclose(bank["t"].unique().sort().values, torch.tensor([1.0, 334.0, 667.0, 1000.0]))
    cond = TextCondition.from_captions(backbone, ["a painting in Van Gogh style"])
    uncond = TextCondition.from_captions(backbone, [""])
    noise = seeded_noise(torch.tensor([dit_module.request_seed * 100_003 + 1]), backbone.latent_shape)
    # By hand: two guided Euler steps x <- x + (s_next - s) v from s = 1, then the target there.
    x, sigmas = noise.clone(), [1.0, 0.667, 0.334]
    for i in range(2):
        t = torch.tensor(sigmas[i] * 1000)
        v0, vp = noise_pair(ref, x, t, cond, uncond)
        x = x + (sigmas[i + 1] - sigmas[i]) * (v0 + 3.0 * (vp - v0))
    row = 2 * 2 + 1  # trajectory 1, step 2
    assert float(bank["t"][row]) == pytest.approx(334.0)
    torch.testing.assert_close(bank["x"][row : row + 1], x, atol=1e-4, rtol=1e-4)
    v0, vp = noise_pair(ref, x, torch.tensor(334.0), cond, uncond)
    # The bank runs the trajectories batched, this by hand one at a time: float32 sums differ in
    # order, and the guided difference scales that by 1.5 (6e-4 seen on the patch-1 DiT); a wrong
    # target differs by the size of the velocity itself.
    torch.testing.assert_close(bank["target"][row : row + 1], v0 - 1.5 * (vp - v0), atol=2e-3, rtol=1e-3)


def test_flow_loss_regresses_the_trained_velocity_on_the_bank(dit_module):
    batch = {"caption": ["a painting in Van Gogh style"] * 2, "seed": torch.tensor([5, 6])}
    loss = dit_module.method.loss(dit_module.method_context, batch)
    x_t, t, target, captions = dit_module.method._draw_from_bank(batch["seed"], torch.device("cpu"))
    pred = predict_noise(dit_module.unet, x_t, t, TextCondition.from_captions(dit_module.backbone, captions))
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(pred, target))
    loss.backward()
    for name, p in dit_module.unet.named_parameters():
        assert (p.grad is not None) == (".attn2.to_k." in name or ".attn2.to_v." in name), name
    dit_module.unet.zero_grad(set_to_none=True)


@pytest.mark.parametrize("source", ["online", "reference"])
def test_every_xt_source_runs_on_the_flow_backbone(dit_module, source):
    method = ESD(ddim_steps=3, xt_source=source)
    batch = {"caption": ["a painting in Van Gogh style"] * 2, "seed": torch.tensor([1, 2])}
    assert torch.isfinite(method.loss(dit_module.method_context, batch))
