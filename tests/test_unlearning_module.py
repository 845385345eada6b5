"""The module's optimizer comes from the CLI; its checkpoints refuse other models' weights."""

import pytest
import torch

from datamodules.concept_stream import ConceptStreamDataModule
from lightning_unlearn.stream import UnlearnCLI
from lightning_unlearn.unlearning_module import UnlearningModule


def _cli(*extra: str) -> UnlearnCLI:
    return UnlearnCLI(UnlearningModule, ConceptStreamDataModule, run=False,
                      args=["--config", "configs/tinyworld/esd_styles_sequential.yaml", *extra])


def test_default_optimizer_is_adamw_without_weight_decay_and_the_cli_swaps_it():
    model = _cli().model
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["lr"] == 5e-4 and opt.defaults["weight_decay"] == 0.0
    trainable = {id(p) for p in model.unet.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable
    sgd = _cli("--model.optimizer=torch.optim.SGD", "--model.optimizer.lr=0.01", "--model.optimizer.momentum=0.9").model
    opt = sgd.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.01 and opt.defaults["momentum"] == 0.9


def test_loading_weights_of_another_model_is_refused():
    model = UnlearningModule(trainable="kv-xattn")
    with pytest.raises(ValueError, match="has keys this UNet lacks"):
        model.load_trainable_state({"text_model.encoder.weight": torch.zeros(2)}, source="other.safetensors")
    key = model.trainable_keys[0]
    with pytest.raises(ValueError, match=f"{key} has shape"):
        model.load_trainable_state({key: torch.zeros(3, 3)}, source="other.safetensors")
