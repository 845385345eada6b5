"""Selective fine-tuning: exactly k elements selected, every other one bit-identical after a request."""

import torch

from lightning_unlearn.callbacks.selective_finetuning import SelectiveFineTuning


def test_exactly_k_selected_and_unselected_elements_stay_bit_identical_under_adamw(module, serve, make_data):
    # Weight decay moves every parameter the optimizer holds: the case a gradient mask alone misses.
    module.optimizer_factory = lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.5)
    start = {k: v.detach().clone() for k, v in module.unet.named_parameters()}
    topk = SelectiveFineTuning(top_k=0.05, importance_batches=2)
    trainer = serve(module, make_data(["Van Gogh"], steps=3), [topk], trainable="kv-xattn")

    total = sum(start[k].numel() for k in module.trainable_keys)
    assert topk.total == total and topk.selected == round(0.05 * total)
    assert sum(int(m.sum()) for m in topk.masks.values()) == topk.selected
    assert set(topk.masks) == set(module.trainable_keys)

    params = dict(module.unet.named_parameters())
    changed = 0
    for key, mask in topk.masks.items():
        now, before = params[key].detach(), start[key]
        assert torch.equal(now[~mask], before[~mask]), key
        changed += int((now[mask] != before[mask]).sum())
    assert changed > 0.9 * topk.selected  # the selected elements did train

    whole = [k for k, m in topk.masks.items() if not m.any()]
    partial = [k for k, m in topk.masks.items() if m.any() and not m.all()]
    assert partial  # the restore path was exercised
    # Tensors with nothing selected never reached the optimizer.
    held = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert all(id(params[k]) not in held for k in whole)
    assert all(id(params[k]) in held for k in partial)
    # The request is over: the whole trainable set may learn again.
    assert all(params[k].requires_grad for k in module.trainable_keys)
    assert all(p.grad is None or not p.grad.any() for k, p in params.items() if k in whole)


def test_selection_is_deterministic_and_ranks_by_importance(module):
    from lightning_unlearn.protocols import plan_request
    from lightning_unlearn.requests import Request

    module.begin_request(plan_request([Request("Cartoon", "style")], 0, "sequential"), ["a painting in Cartoon style"])
    topk = SelectiveFineTuning(top_k=0.1, importance_batches=1)
    scores = topk.importance(None, module)
    again = topk.importance(None, module)
    assert all(torch.equal(scores[k], again[k]) for k in scores)
    assert all(p.grad is None for p in module.unet.parameters())  # it leaves no gradients behind

    topk.on_request_start(None, module)
    chosen = torch.cat([scores[k][topk.masks[k]] for k in scores])
    dropped = torch.cat([scores[k][~topk.masks[k]] for k in scores])
    assert chosen.numel() == topk.selected and float(chosen.min()) >= float(dropped.max())
    topk.on_request_end(None, module)
