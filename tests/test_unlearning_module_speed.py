"""The UNet speed switches: ``--model.compile``, ``--model.channels_last``, ``--model.fused_optimizer``.

Each is off by default and changes no result beyond float rounding: a training step's loss and
gradients and a sampling call match the eager, contiguous, unfused run within the tolerances
below. Compiling with inductor on the CPU takes minutes on 2 cores, so the compiled-output test
is ``slow``; the switch's plumbing (which UNets get compiled, names unchanged) is tested by default.
"""

from __future__ import annotations

import pytest
import torch

from lightning_unlearn.errors import SettingsError
from lightning_unlearn.methods import ESD
from lightning_unlearn.protocols import plan_request
from lightning_unlearn.requests import Request
from lightning_unlearn.sampling import TextCondition, noise_pair
from lightning_unlearn.unlearning_module import UnlearningModule

VAN_GOGH = Request("Van Gogh", "style")
CAPTION = "a painting in Van Gogh style"
BATCH = {"caption": [CAPTION] * 2, "seed": torch.tensor([3, 4])}


def _module(**options) -> UnlearningModule:
    module = UnlearningModule(method=ESD(ddim_steps=2, bank_trajectories=2, bank_batch=2), trainable="esd-x", **options)
    module.begin_request(plan_request([VAN_GOGH], 0, "sequential"), [CAPTION])
    return module.train()


def _loss_and_grads(module: UnlearningModule) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.unet.zero_grad(set_to_none=True)
    loss = module.method.loss(module.method_context, BATCH)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.unet.named_parameters() if p.grad is not None}


def _sampling_call(module: UnlearningModule) -> tuple[torch.Tensor, torch.Tensor]:
    backbone = module.backbone
    latents = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return noise_pair(module.reference_unet, latents, torch.tensor(500), TextCondition.from_captions(backbone, [CAPTION] * 2),
                          TextCondition.from_captions(backbone, [""]))


def _assert_same_step(module: UnlearningModule, eager: UnlearningModule, rtol: float, atol: float) -> None:
    loss, grads = _loss_and_grads(module)
    eager_loss, eager_grads = _loss_and_grads(eager)
    torch.testing.assert_close(loss, eager_loss, rtol=rtol, atol=atol)
    assert grads and set(grads) == set(eager_grads)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=rtol, atol=atol, msg=name)
    for got, want in zip(_sampling_call(module), _sampling_call(eager)):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


def test_compile_is_off_by_default_and_compiles_every_unet_in_place_when_on():
    plain = _module()
    assert plain.unet._compiled_call_impl is None and plain.reference_unet._compiled_call_impl is None
    module = UnlearningModule(method=ESD(ddim_steps=1, bank_trajectories=1), compile="reduce-overhead")
    # Compiled in place (lazily: nothing compiles before the first call): names and checkpoints unchanged.
    assert module.unet._compiled_call_impl is not None
    assert [n for n, _ in module.unet.named_parameters()] == [n for n, _ in plain.unet.named_parameters()]
    # A deep copy drops the compiled call; the frozen copies are compiled anew, each its own.
    reference = module.frozen_reference_copy()
    base = module.frozen_base_copy()
    for copy in (reference, base):
        assert copy is not module.unet and copy._compiled_call_impl is not None
        assert copy._compiled_call_impl is not module.unet._compiled_call_impl
    with pytest.raises(SettingsError, match="--model.compile must be one of off, default, reduce-overhead, max-autotune"):
        UnlearningModule(compile="fast")


def test_channels_last_holds_the_weights_channels_last_and_changes_only_rounding():
    module, eager = _module(channels_last=True), _module()
    conv = module.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert module.reference_unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert eager.unet.conv_in.weight.is_contiguous()
    _assert_same_step(module, eager, rtol=1e-4, atol=1e-5)


def test_fused_adamw_takes_the_same_step_as_the_default():
    fused, plain = _module(fused_optimizer=True), _module()
    steps = []
    for module in (fused, plain):
        optimizer = module.configure_optimizers()
        _loss_and_grads(module)
        optimizer.step()
        steps.append((optimizer, {n: p.detach().clone() for n, p in module.unet.named_parameters() if p.requires_grad}))
    assert steps[0][0].defaults["fused"] is True and not steps[1][0].defaults["fused"]
    for name, value in steps[1][1].items():
        torch.testing.assert_close(steps[0][1][name], value, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.slow
def test_compiled_unet_matches_eager():
    """Inductor on the CPU: the compiled training step and sampling call equal eager within
    rtol 1e-4 / atol 1e-5 (inductor fuses and reorders float32 arithmetic)."""
    _assert_same_step(_module(compile="default"), _module(), rtol=1e-4, atol=1e-5)
