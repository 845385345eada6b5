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


def test_stream_runs_on_a_diffusers_folder_with_clip_scoring(tmp_path, tiny_sd_folder, tiny_clip_folder):
    run = tmp_path / "run"
    main([
        "unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
        f"--model.pretrained={tiny_sd_folder}", "--model.trainable=kv-xattn",
        "--data.styles=[Van Gogh, Monet, Cubism]", "--data.objects=[cat, dog]",
        "--data.requests=[Van Gogh, Monet]", "--data.steps_per_request=3", "--data.batch_size=2",
        "--model.method.init_args.ddim_steps=3", "--model.method.init_args.bank_trajectories=2",
        "--stream.evaluation.steps=2", "--stream.evaluation.seeds_per_prompt=2",
        f"--stream.evaluation.classifier={tiny_clip_folder}", f"--stream.run_dir={run}",
    ])
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
