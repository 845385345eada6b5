"""Training objectives: noising, regression targets and samplers on known tensors."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from lightning_unlearn.errors import SettingsError
from lightning_unlearn.objectives import EpsilonObjective, FlowMatchingObjective

TINY_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                     clip_sample=False)


def test_flow_matching_noises_on_the_straight_line_and_regresses_the_velocity():
    flow = FlowMatchingObjective()
    x0 = torch.tensor([[1.0, -2.0], [0.5, 4.0]]).reshape(2, 2, 1, 1)
    noise = torch.tensor([[3.0, 0.0], [-1.0, 2.0]]).reshape(2, 2, 1, 1)
    t = torch.tensor([250.0, 1000.0])  # s = 0.25 and s = 1 (pure noise)
    x_t = flow.add_noise(x0, noise, t)
    # x_t = (1 - s) x0 + s noise
    assert torch.allclose(x_t[0].flatten(), torch.tensor([0.75 * 1 + 0.25 * 3, 0.75 * -2 + 0.25 * 0]))
    assert torch.equal(x_t[1], noise[1])
    # v = noise - x0, whatever t
    assert torch.equal(flow.target(x0, noise, t), torch.tensor([[2.0, 2.0], [-1.5, -2.0]]).reshape(2, 2, 1, 1))


def test_the_flow_sampler_is_diffusers_euler_and_recovers_x0_from_the_true_velocity():
    flow = FlowMatchingObjective()
    scheduler = flow.sampling_scheduler()
    assert isinstance(scheduler, FlowMatchEulerDiscreteScheduler)
    x0 = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    scheduler.set_timesteps(7)
    x = noise.clone()
    for t in scheduler.timesteps:
        # Each visited x_t is the objective's noising of x0 at the grid's t: the sampler and the
        # noising agree on the path.
        assert torch.allclose(x, flow.add_noise(x0, noise, t.expand(3)), atol=1e-5)
        x = scheduler.step(flow.target(x0, noise, t), t, x).prev_sample
    assert torch.allclose(x, x0, atol=1e-5)  # a straight path: Euler is exact


def test_flow_training_timesteps_cover_the_schedule():
    torch.manual_seed(0)
    for sampling in ("logit-normal", "uniform"):
        t = FlowMatchingObjective(timestep_sampling=sampling).training_timesteps(4000, "cpu")
        assert t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1000
        assert abs(float(t.mean()) - 500) < 25
    logit = FlowMatchingObjective(timestep_sampling="logit-normal").training_timesteps(4000, "cpu")
    uniform = FlowMatchingObjective(timestep_sampling="uniform").training_timesteps(4000, "cpu")
    assert logit.std() < uniform.std()  # logit-normal weights the middle noise levels
    with pytest.raises(SettingsError, match="timestep_sampling"):
        FlowMatchingObjective(timestep_sampling="beta")


def test_epsilon_objective_is_the_ddpm_schedule_it_replaced():
    eps = EpsilonObjective(TINY_SCHEDULE)
    ddpm = DDPMScheduler.from_config(TINY_SCHEDULE)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 2, 2, generator=gen), torch.randn(4, 3, 2, 2, generator=gen)
    t = torch.tensor([0, 10, 500, 999])
    assert torch.equal(eps.add_noise(x0, noise, t), ddpm.add_noise(x0, noise, t))
    abar = ddpm.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    assert torch.allclose(eps.add_noise(x0, noise, t), abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    assert torch.equal(eps.target(x0, noise, t), noise)
    assert isinstance(eps.sampling_scheduler(), DDIMScheduler)
    assert eps.config == TINY_SCHEDULE  # what fingerprints hash, unchanged
    v = EpsilonObjective({**TINY_SCHEDULE, "prediction_type": "v_prediction"})
    assert torch.allclose(v.target(x0, noise, t), abar.sqrt() * noise - (1 - abar).sqrt() * x0)


def test_epsilon_training_timesteps_draw_as_the_old_recipe_did():
    # Same generator calls as torch.randint(0, T, (B,)): pretraining stays bit-identical.
    torch.manual_seed(3)
    new = EpsilonObjective(TINY_SCHEDULE).training_timesteps(16, "cpu")
    torch.manual_seed(3)
    assert torch.equal(new, torch.randint(0, 1000, (16,)))


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
def test_every_sampler_name_serves_both_objectives(sampler):
    # dpm++ on a flow runs DPM-Solver++ on the flow's sigmas: it too recovers x0 from the true velocity.
    flow = FlowMatchingObjective()
    scheduler = flow.solver_scheduler(sampler)
    x0 = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    scheduler.set_timesteps(6)
    x = noise.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(flow.target(x0, noise, t), t, x).prev_sample
    # DPM-Solver's flow grid starts at s = 0.999, not 1: pure noise there is off by 0.001 (x0 - noise).
    assert torch.allclose(x, x0, atol=1e-2)
    assert EpsilonObjective(TINY_SCHEDULE).solver_scheduler(sampler) is not None
    with pytest.raises(ValueError, match="sampler must be one of"):
        flow.solver_scheduler("euler-a")
