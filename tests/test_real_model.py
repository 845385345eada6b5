"""The real-model path: a diffusers Stable Diffusion folder and a CLIP zero-shot judge, offline."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lightning_unlearn.backbone import DiffusersBackbone, ModelPathError, check_diffusers_folder
from lightning_unlearn.cli import main


def test_backbone_loads_all_components_from_disk(tiny_sd_folder):
    backbone = DiffusersBackbone(tiny_sd_folder)
    states, mask = backbone.encode_text(["a cat in Van Gogh style", ""])
    assert states.shape[0] == 2 and states.shape[-1] == 32 and mask is None
    assert backbone.latent_shape == (4, 8, 8)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    latents = backbone.images_to_latents(images)
    assert latents.shape == (2, 4, 8, 8)
    assert backbone.latents_to_images(latents).shape == (2, 3, 16, 16)
    assert backbone.scheduler_config["beta_schedule"] == "scaled_linear"


def test_bad_model_paths_are_named(tmp_path, tiny_sd_folder):
    with pytest.raises(ModelPathError, match="does not exist"):
        check_diffusers_folder(tmp_path / "nowhere")
    with pytest.raises(ModelPathError, match="no model_index.json"):
        check_diffusers_folder(tmp_path)
    assert check_diffusers_folder(tiny_sd_folder) == tiny_sd_folder


def run_short_stream(pretrained, classifier, run, *extra: str) -> None:
    """Two ESD requests (kv-xattn, 3 steps) on ``pretrained``, scored by the CLIP folder ``classifier``."""
    main([
        "unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
        f"--model.pretrained={pretrained}", "--model.trainable=kv-xattn",
        "--data.styles=[Van Gogh, Monet, Cubism]", "--data.objects=[cat, dog]",
        "--data.requests=[Van Gogh, Monet]", "--data.steps_per_request=3", "--data.batch_size=2",
        "--model.method.init_args.ddim_steps=3", "--model.method.init_args.bank_trajectories=2",
        "--stream.evaluation.steps=2", f"--stream.evaluation.classifier={classifier}", f"--stream.run_dir={run}",
        *extra,
    ])


def test_stream_runs_on_a_diffusers_folder_with_clip_scoring(tmp_path, tiny_sd_folder, tiny_clip_folder):
    run = tmp_path / "run"
    run_short_stream(tiny_sd_folder, tiny_clip_folder, run, "--stream.evaluation.seeds_per_prompt=2")
    rows = json.loads((run / "results.json").read_text())
    assert [r["concept"] for r in rows] == ["base", "Van Gogh", "Monet"]
    weights = load_file(str(run / "requests" / "02-monet" / "weights.safetensors"))
    assert weights and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in weights)
    base_unet = load_file(str(tiny_sd_folder / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(base_unet[k], v) for k, v in weights.items()), "training changed nothing"
    metrics = json.loads((run / "requests" / "02-monet" / "metrics.json").read_text())
    assert set(metrics["per_style"]) == {"Van Gogh", "Monet", "Cubism"}


def test_real_model_without_a_classifier_is_refused(tmp_path, tiny_sd_folder, cli_error):
    assert "--stream.evaluation.classifier" in cli_error(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
              f"--model.pretrained={tiny_sd_folder}", "--data.styles=[Van Gogh, Monet]", "--data.objects=[cat]",
              "--data.requests=[Van Gogh]", "--data.steps_per_request=1", f"--stream.run_dir={tmp_path / 'r'}"])


# -- PixArt: a DiT with T5 text, epsilon prediction with learned sigma -----------------------------
def test_a_pixart_folder_loads_as_a_dit_with_an_epsilon_objective_and_no_sigma_channels(tiny_pixart_folder):
    from lightning_unlearn.denoisers import CrossAttentionDiT

    backbone = DiffusersBackbone(tiny_pixart_folder)
    assert isinstance(backbone.unet, CrossAttentionDiT) and backbone.unet.config.out_channels == 8
    assert backbone.objective.name == "epsilon" and backbone.scheduler_config["beta_schedule"] == "linear"
    states, mask = backbone.encode_text(["a cat in Van Gogh style", ""])
    assert states.shape == (2, 120, 32) and mask.shape == (2, 120) and mask[1].sum() == 1  # "" is </s> alone
    assert backbone.latent_shape == (4, 8, 8)
    x = torch.randn(2, *backbone.latent_shape)
    pred = backbone.unet(x, torch.tensor([10, 500]), encoder_hidden_states=states, encoder_attention_mask=mask).sample
    assert pred.shape == x.shape  # the learned-variance channels are dropped
    # T5 puts no start token: the concept's tokens are found where they are.
    from lightning_unlearn.concept_embeddings import concept_token_span
    start, end = concept_token_span(backbone, "a cat in Van Gogh style", "Van Gogh")
    ids = backbone.tokenizer("a cat in Van Gogh style")["input_ids"]
    assert ids[start:end] == backbone.tokenizer("Van Gogh", add_special_tokens=False)["input_ids"]


def test_stream_runs_on_a_pixart_folder_with_projection(tmp_path, tiny_pixart_folder, tiny_clip_folder):
    run = tmp_path / "run"
    run_short_stream(tiny_pixart_folder, tiny_clip_folder, run, "--stream.evaluation.seeds_per_prompt=1",
                     "--trainer.callbacks+=configs/callbacks/projection_update.yaml")
    rows = json.loads((run / "results.json").read_text())
    assert [r["concept"] for r in rows] == ["base", "Van Gogh", "Monet"]
    weights = load_file(str(run / "requests" / "02-monet" / "weights.safetensors"))
    assert weights and all(k.startswith("transformer_blocks.") and (".attn2.to_k." in k or ".attn2.to_v." in k)
                           for k in weights)
    base = load_file(str(tiny_pixart_folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(base[k], v) for k, v in weights.items()), "training changed nothing"


@pytest.mark.parametrize("family, why", [
    ("StableDiffusion3Pipeline", "does not support"), ("FluxPipeline", "does not support"),
    ("SanaPipeline", "does not support"),
])
def test_transformer_families_without_cross_attention_are_refused_by_name(tmp_path, tiny_pixart_folder, family, why,
                                                                          cli_error):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_pixart_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = family
    (folder / "model_index.json").write_text(json.dumps(index))
    run = tmp_path / "run"
    line = cli_error(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml", f"--model.pretrained={folder}",
                      "--data.styles=[Van Gogh, Monet]", "--data.objects=[cat]", "--data.requests=[Van Gogh]",
                      f"--stream.run_dir={run}"])
    assert family in line and why in line and "PixArtSigmaPipeline" in line
    assert not run.exists()
