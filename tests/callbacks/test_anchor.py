"""L1-SP / L2-SP: the gradient it adds is the penalty's, and L2 keeps a request closer to its start."""

import pytest
import torch

from lightning_unlearn.callbacks.anchor import AnchorRegularizer


def drift(module, start: dict[str, torch.Tensor]) -> float:
    params = dict(module.unet.named_parameters())
    return float(torch.sqrt(sum(((params[k].detach() - start[k]) ** 2).sum() for k in module.trainable_keys)))


@pytest.mark.parametrize("kind", ["l1", "l2"])
@pytest.mark.parametrize("reference", ["previous", "base"])
def test_added_gradient_is_the_mean_reduced_penalty_gradient(module, monkeypatch, kind, reference):
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    params = dict(module.unet.named_parameters())
    keys = module.trainable_keys
    with torch.no_grad():  # the request starts away from the base, so the two references differ
        for k in keys:
            params[k].add_(torch.randn_like(params[k]) * 1e-3)
    start = {k: params[k].detach().clone() for k in keys}
    anchor = AnchorRegularizer(kind=kind, weight=7.0, reference=reference)
    anchor.on_request_start(None, module)
    anchor.on_train_start(None, module)
    with torch.no_grad():
        for k in keys:
            params[k].add_(torch.randn_like(params[k]) * 1e-3)
    # The loss gradient is on the penalty's scale so float32 can tell the sum apart.
    loss_grad = {k: torch.randn_like(params[k]) * 1e-5 for k in keys}
    for k in keys:
        params[k].grad = loss_grad[k].clone()

    anchor.on_before_optimizer_step(None, module, None)

    ref = start if reference == "previous" else module.base_state()
    leaves = {k: params[k].detach().clone().requires_grad_(True) for k in keys}
    numel = sum(v.numel() for v in leaves.values())
    diffs = [leaves[k] - ref[k] for k in keys]
    penalty = 7.0 / numel * sum((d.abs() if kind == "l1" else d.square()).sum() for d in diffs)
    expected = torch.autograd.grad(penalty, [leaves[k] for k in keys])
    for k, g in zip(keys, expected):
        torch.testing.assert_close(params[k].grad, loss_grad[k] + g, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(anchor.last_penalty, penalty.detach(), rtol=1e-5, atol=0)
    module.unet.zero_grad(set_to_none=True)


def test_l2_anchored_to_the_previous_checkpoint_lowers_drift(module, serve, make_data):
    data = make_data(["Van Gogh"], steps=3)
    start = {k: v.detach().clone() for k, v in module.unet.named_parameters()}
    serve(module, data, [])
    plain = drift(module, start)

    module.unet.load_state_dict({k: v for k, v in start.items()}, strict=False)
    anchor = AnchorRegularizer(kind="l2", weight=1e4, reference="previous")
    trainer = serve(module, data, [anchor])
    regularized = drift(module, start)

    assert plain > 0 and regularized < 0.7 * plain, (plain, regularized)
    assert float(trainer.callback_metrics[anchor.log_key]) > 0  # the penalty is logged
