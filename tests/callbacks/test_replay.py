"""Replay: after a request, retained prompts' predictions stay closer to the frozen model's than
without it (same seed), on held-out prompts and noise; the bank holds only retained concepts."""

import pytest
import torch

from lightning_unlearn.callbacks.replay import Replay, replay_bank
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.requests import Request
from lightning_unlearn.sampling import TextCondition, per_sample_randint, predict_noise, seeded_noise


@pytest.mark.parametrize("bad", [{"weight": -1.0}, {"batch": 0}, {"prompts": "all"}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(SettingsError):
        Replay(**bad)


def test_bank_leaves_out_erased_and_erasing_concepts(module):
    vocabulary = module.vocabulary
    gone = [Request("Van Gogh", "style"), Request(vocabulary.objects[0], "object")]
    bank = replay_bank(vocabulary, gone, "both")
    assert bank and not any("Van Gogh" in c or vocabulary.objects[0] in c.split() for c in bank)
    styles, objects = len(vocabulary.styles) - 1, len(vocabulary.objects) - 1
    assert len(bank) == styles + objects + styles * objects
    assert len(replay_bank(vocabulary, gone, "pairs")) == styles * objects


def heldout_mse(module, frozen, captions):
    """MSE to the frozen UNet on the given captions at noise and timesteps no replay draw uses."""
    seeds = torch.arange(900_000_000, 900_000_000 + len(captions))
    x = seeded_noise(seeds, module.backbone.latent_shape)
    t = per_sample_randint(seeds, 1000)
    cond = TextCondition.from_captions(module.backbone, captions)
    with torch.no_grad():
        return float((predict_noise(module.unet, x, t, cond) - predict_noise(frozen, x, t, cond)).square().mean())


def test_replay_keeps_retained_predictions_closer_to_the_frozen_model(module, serve, make_data):
    data = make_data(["Van Gogh"], steps=5)
    start = {k: v.detach().clone() for k, v in module.unet.named_parameters()}
    frozen = module.frozen_reference_copy()  # the model the request starts from
    vocabulary = module.vocabulary
    # Held out: the retained concepts alone; replay trains on the style x object captions only.
    heldout = [vocabulary.templates.concept_prompt(s, "style") for s in vocabulary.styles if s != "Van Gogh"]
    heldout += [vocabulary.templates.concept_prompt(o, "object") for o in vocabulary.objects]

    serve(module, data, [])
    plain = heldout_mse(module, frozen, heldout)

    module.unet.load_state_dict(start, strict=False)
    replay = Replay(weight=1.0, batch=2, prompts="pairs")  # the defaults but the bank
    serve(module, data, [replay])
    kept = heldout_mse(module, frozen, heldout)
    record = replay.record
    assert record["steps"] == 5 and record["bank_size"] == 15 * 12 and record["replay_mse_last"] > 0
    # Measured: 0.90x (weight 1). Under Adam a larger weight hurt here (10: 2.4x the plain MSE): the
    # replay gradient vanishes at theta = theta_ref and Adam scales its small, noisy values up to lr.
    assert plain > 0 and kept < 0.95 * plain, (plain, kept)
