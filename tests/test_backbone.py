"""``--model.pretrained`` folders are checked before anything loads or any file is written:
pickled weights are refused by name (never unpickled), and only the Stable Diffusion 1.x / 2.x
pipeline family is served (SDXL and others are refused with the list of what is supported)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from lightning_unlearn.backbone import ModelPathError, check_diffusers_folder
from lightning_unlearn.cli import main  # noqa: F401  (imports Lightning at collection: its log handler binds the session's stderr)

CONFIG = "configs/tinyworld/esd_styles_sequential.yaml"
CONVERT = "convert it once with: python -c"


def unlearn_args(pretrained: Path, run: Path, classifier: Path | None = None) -> list[str]:
    """A short stream on ``pretrained`` (it never gets to run when the folder is refused)."""
    scoring = [f"--stream.evaluation.classifier={classifier}", "--stream.evaluation.steps=2"] if classifier else []
    return ["unlearn", "--config", CONFIG, f"--model.pretrained={pretrained}", "--data.styles=[Van Gogh, Monet]",
            "--data.objects=[cat]", "--data.requests=[Van Gogh]", "--data.steps_per_request=1",
            f"--stream.run_dir={run}", *scoring]


class _TouchesAMarker:
    """Unpickling this runs ``Path.touch(marker)``: stands for any code a crafted file runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def pickled_sd_folder(tiny_sd_folder, tmp_path_factory) -> Path:
    """The tiny pipeline saved by diffusers with ``safe_serialization=False`` (UNet and VAE as .bin)."""
    from diffusers import StableDiffusionPipeline

    out = tmp_path_factory.mktemp("pickled") / "sd"
    StableDiffusionPipeline.from_pretrained(tiny_sd_folder).save_pretrained(out, safe_serialization=False)
    assert (out / "unet" / "diffusion_pytorch_model.bin").is_file()
    assert not (out / "unet" / "diffusion_pytorch_model.safetensors").exists()
    return out


def test_a_pipeline_with_pickled_weights_is_refused_by_name_before_any_file(pickled_sd_folder, tmp_path, cli_error):
    run = tmp_path / "run"
    line = cli_error(unlearn_args(pickled_sd_folder, run))
    assert str(pickled_sd_folder / "unet" / "diffusion_pytorch_model.bin") in line
    assert "never unpickled" in line and CONVERT in line
    assert not run.exists()


def test_a_crafted_pickle_is_never_executed(tiny_sd_folder, tmp_path, cli_error):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_TouchesAMarker(marker))
    pickle.loads(payload)  # the payload is real: unpickling it runs code
    assert marker.exists()
    marker.unlink()
    crafted = tmp_path / "crafted"
    shutil.copytree(tiny_sd_folder, crafted)
    for component in ("unet", "vae"):
        (crafted / component / "diffusion_pytorch_model.safetensors").unlink()
        (crafted / component / "diffusion_pytorch_model.bin").write_bytes(payload)
    run = tmp_path / "run"
    line = cli_error(unlearn_args(crafted, run))
    assert "diffusion_pytorch_model.bin is a pickled checkpoint" in line and CONVERT in line
    assert not marker.exists() and not run.exists()
    with pytest.raises(ModelPathError, match="never unpickled"):
        check_diffusers_folder(crafted)
    assert not marker.exists()


def test_a_component_without_any_weights_is_named(tiny_sd_folder, tmp_path):
    folder = tmp_path / "sd"
    shutil.copytree(tiny_sd_folder, folder)
    (folder / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(ModelPathError, match=r"text_encoder has no weights .* lacks model\.safetensors"):
        check_diffusers_folder(folder)


@pytest.fixture(scope="module")
def tiny_sdxl_folder(tmp_path_factory) -> Path:
    """A random, tiny SDXL pipeline (two text encoders, text_time conditioning) saved by diffusers."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from tests.conftest import write_char_tokenizer

    root = tmp_path_factory.mktemp("tiny-sdxl")
    torch.manual_seed(0)
    write_char_tokenizer(root / "_tok")
    tokenizer = CLIPTokenizer.from_pretrained(root / "_tok")
    text = dict(vocab_size=len(tokenizer), intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=24, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, **text))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=32, projection_dim=32, **text))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(2, 4), norm_num_groups=8, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        sample_size=16,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=EulerDiscreteScheduler(),
    )
    out = root / "sdxl"
    pipe.save_pretrained(out)
    return out


def test_an_sdxl_pipeline_is_refused_before_any_file(tiny_sdxl_folder, tiny_clip_folder, tmp_path, cli_error):
    index = json.loads((tiny_sdxl_folder / "model_index.json").read_text())
    # It has everything the old check asked for, so it used to load and crash in the base evaluation
    # (a TypeError inside diffusers, after run.json was written).
    assert index["_class_name"] == "StableDiffusionXLPipeline" and "text_encoder_2" in index
    assert all((tiny_sdxl_folder / c).is_dir() for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"))
    run = tmp_path / "run"
    line = cli_error(unlearn_args(tiny_sdxl_folder, run, classifier=tiny_clip_folder))
    assert "StableDiffusionXLPipeline" in line and "does not support" in line
    assert "supported: StableDiffusionPipeline (Stable Diffusion 1.x / 2.x)" in line
    assert not run.exists()


@pytest.mark.parametrize("family", ["StableDiffusion3Pipeline", "FluxPipeline", "SanaPipeline", None])
def test_other_families_are_refused_by_their_class_name(tiny_sd_folder, tmp_path, family):
    folder = tmp_path / "model"
    shutil.copytree(tiny_sd_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index.pop("_class_name")
    if family is not None:
        index["_class_name"] = family
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelPathError, match=f"holds a {family or 'pipeline of unnamed class'} .* supported: StableDiffusionPipeline"):
        check_diffusers_folder(folder)


def test_a_folder_without_model_index_is_refused_before_any_file(tiny_sd_folder, tmp_path, cli_error):
    folder = tmp_path / "no-index"
    shutil.copytree(tiny_sd_folder, folder)
    (folder / "model_index.json").unlink()
    run = tmp_path / "run"
    assert "has no model_index.json" in cli_error(unlearn_args(folder, run))
    (folder / "model_index.json").write_text("{not json")
    assert "model_index.json is not valid JSON" in cli_error(unlearn_args(folder, run))
    assert not run.exists()
