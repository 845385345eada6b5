"""Shared fixtures: offline everywhere, tiny random Stable Diffusion, PixArt and CLIP folders."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

# Import Lightning at collection: its log handler then binds the session's stderr, not the captured
# stderr of whichever test first imports it (a "Logging error" traceback in a later test's output).
import lightning.pytorch  # noqa: F401, E402

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def write_char_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer with a character vocabulary and no merges (no download needed)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=24)
    tok.save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory) -> Path:
    """A random, tiny Stable-Diffusion-shaped pipeline saved by diffusers itself."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny-sd")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        sample_size=16,
    )
    tok_dir = root / "_tok"
    write_char_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=24, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    out = root / "sd"
    pipe.save_pretrained(out)
    return out


def t5_char_tokenizer():
    """A T5 (Unigram) tokenizer over single characters, word starts marked with "\u2581" (no download)."""
    from transformers import T5Tokenizer

    chars = [chr(c) for c in range(33, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


@pytest.fixture(scope="session")
def tiny_pixart_folder(tmp_path_factory) -> Path:
    """A random, tiny PixArt-sigma pipeline (DiT with learned sigma, T5 text) saved by diffusers itself."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    root = tmp_path_factory.mktemp("tiny-pixart")
    tokenizer = t5_char_tokenizer()
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                           num_heads=4, pad_token_id=0, eos_token_id=1))
    # out_channels = 2 x in_channels: epsilon and the learned variance, as the released PixArt models.
    transformer = PixArtTransformer2DModel(
        sample_size=8, in_channels=4, out_channels=8, patch_size=2, num_layers=2, num_attention_heads=2,
        attention_head_dim=8, cross_attention_dim=16, caption_channels=32, use_additional_conditions=False,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        sample_size=16,
    )
    scheduler = DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon")
    pipe = PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                               scheduler=scheduler)
    out = root / "pixart"
    pipe.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_clip_folder(tmp_path_factory) -> Path:
    """A random, tiny CLIP model + tokenizer saved by transformers itself."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny-clip")
    write_char_tokenizer(root)
    tokenizer = CLIPTokenizer.from_pretrained(root)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=24, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           image_size=16, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(root)
    return root


@pytest.fixture
def cli_error(capsys):
    """``cli_error(args)`` runs ``train.py ARGS`` in-process expecting a named error, checks that it
    ends in exit status 2 with one ``error:`` line and no traceback, and returns that line."""
    from lightning_unlearn.cli import main

    def run(args: list[str]) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: "), err
        return line

    return run
