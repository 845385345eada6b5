"""configs/sd15: each study config parses, its stream is the reference's, and it really runs one
short request on a tiny random Stable Diffusion folder (model path, vocabulary and lengths overridden)."""

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from lightning_unlearn.datamodules.concept_stream import ConceptStreamDataModule
from lightning_unlearn.cli import main
from lightning_unlearn.prompts import PromptTemplates

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "sd15").glob("*.yaml"))
STYLE_STREAM = ["Abstractionism", "Byzantine", "Cartoon", "Cold Warm", "Ukiyoe", "Van Gogh", "Neon Lines", "Picasso",
                "On Fire", "Magic Cube", "Winter", "Vibrant Flow"]
OBJECT_STREAM = ["Bears", "Birds", "Cats", "Dogs", "Fishes", "Frogs", "Jellyfish", "Rabbits", "Sandwiches", "Statues",
                 "Towers", "Waterfalls"]


def test_the_four_study_configs_exist():
    assert [c.stem for c in CONFIGS] == [
        "ca_objects_sequential", "ca_styles_sequential", "esd_objects_sequential", "esd_styles_sequential"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_config_holds_the_reference_stream_and_memory_settings(config):
    raw = yaml.safe_load(config.read_text())
    data = ConceptStreamDataModule(**{**raw["data"], "templates": PromptTemplates(**raw["data"]["templates"])})
    assert [r.concept for r in data.requests] == (STYLE_STREAM if "styles" in config.stem else OBJECT_STREAM)
    assert len(data.vocabulary.styles) == 50 and len(data.vocabulary.objects) == 20
    assert raw["data"]["templates"]["full"] == "A {object} image in {style} style."
    assert raw["trainer"]["precision"] == "bf16-mixed"
    model = raw["model"]
    assert model["reference_dtype"] == "bfloat16" and model["gradient_checkpointing"] is True
    assert model["optimizer"]["class_path"] == "bitsandbytes.optim.AdamW8bit"
    if config.stem.startswith("ca_objects"):  # every object request has an anchor it maps onto
        anchors = model["method"]["init_args"]["anchors"]
        assert set(OBJECT_STREAM) <= set(anchors)
        assert set(anchors.values()) <= set(data.vocabulary.objects) - set(OBJECT_STREAM)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_config_runs_one_request_on_a_tiny_stable_diffusion(config, tmp_path, tiny_sd_folder, tiny_clip_folder):
    styles = "styles" in config.stem
    first = STYLE_STREAM[0] if styles else OBJECT_STREAM[0]
    method_args = (["--model.method.init_args.ddim_steps=2", "--model.method.init_args.bank_trajectories=2"]
                   if config.stem.startswith("esd") else
                   ["--model.method.init_args.ddim_steps=2", "--model.method.init_args.images_per_anchor=2"])
    run = tmp_path / "run"
    main([
        "unlearn", "--config", str(config),
        f"--model.pretrained={tiny_sd_folder}", f"--stream.evaluation.classifier={tiny_clip_folder}",
        "--trainer.accelerator=cpu", f"--stream.run_dir={run}",
        f"--data.styles=[{first if styles else 'Van Gogh'}, Monet]", f"--data.objects=[{'Cats' if styles else first}]",
        f"--data.requests=[{first}]", "--data.steps_per_request=2", "--data.batch_size=1",
        "--stream.evaluation.steps=2", *method_args,
    ])
    rows = json.loads((run / "results.json").read_text())
    assert [r["concept"] for r in rows] == ["base", first] and rows[1]["train_steps"] == 2
    weights = load_file(str(run / "requests" / f"01-{first.lower()}" / "weights.safetensors"))
    base = load_file(str(tiny_sd_folder / "unet" / "diffusion_pytorch_model.safetensors"))
    assert weights and any(float((base[k] - v.float()).abs().max()) > 0 for k, v in weights.items())
