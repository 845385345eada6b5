"""The tiny DiT (flow matching) through the same CLI: overlays, protocols, regularizers, analysis."""

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lightning_unlearn.cli import main
from lightning_unlearn.report.document import Table
from lightning_unlearn.report.runs import load_run
from lightning_unlearn.report.sections import runs_section

FAST = [
    "--data.steps_per_request=4", "--data.batch_size=4",
    "--model.method.init_args.ddim_steps=4", "--stream.evaluation.steps=6", "--trainer.enable_model_summary=false",
    "--stream.evaluation.seeds_per_prompt=1",
    # A 3 x 2 corner of the world keeps evaluation to 6 images a model.
    "--data.styles=[Van Gogh, Cartoon, Monet]", "--data.objects=[circle, star]",
]
ESD_FAST = ["--model.method.init_args.bank_trajectories=4"]
CA_FAST = ["--model.method.init_args.images_per_anchor=4", "--model.method.init_args.sample_batch=4"]


def unlearn(method: str, run: Path, *extra: str) -> list[dict]:
    main(["unlearn", "--config", f"configs/tinyworld/{method}_styles_sequential.yaml",
          "--config", f"configs/tinyworld_dit/{method}_styles_sequential.yaml",
          "--data.requests=[Van Gogh, Cartoon]", f"--stream.run_dir={run}", *FAST,
          *(ESD_FAST if method == "esd" else CA_FAST), *extra])
    return json.loads((run / "results.json").read_text())


def test_esd_sequential_on_the_dit_trains_its_cross_attention_and_records_drift_and_semantics(tmp_path, cli_error):
    run = tmp_path / "run"
    rows = unlearn("esd", run)
    assert [r["concept"] for r in rows] == ["base", "Van Gogh", "Cartoon"]
    config = (run / "tensorboard").rglob("config.yaml")
    assert any("backbone: tinyworld-dit" in p.read_text() for p in config)
    assert json.loads((run / "run.json").read_text())["backbone"] == "CrossAttentionDiT, 8 blocks (flow-matching)"
    # The report's runs table names the backbone, so a study over both compares them side by side.
    [table] = [b for b in runs_section([load_run(run)]).blocks if isinstance(b, Table)]
    assert dict(zip(table.headers, table.rows[0]))["backbone"] == "CrossAttentionDiT, 8 blocks (flow-matching)"
    weights = load_file(str(run / "requests" / "02-cartoon" / "weights.safetensors"))
    assert weights and all(k.startswith("transformer_blocks.") and ".attn2." in k for k in weights)
    drift = json.loads((run / "requests" / "02-cartoon" / "drift.json").read_text())
    assert drift and all(math.isfinite(float(v)) for v in _numbers(drift))
    semantic = json.loads((run / "requests" / "02-cartoon" / "semantic.json").read_text())
    assert semantic["concepts"] and all(r["k_change"] > 0 for r in semantic["concepts"])
    # Export writes UNet pipelines: a DiT run is refused by name, before anything is written.
    out = tmp_path / "export"
    line = cli_error(["export", str(run), "--out", str(out)])
    assert "--model.backbone=tinyworld-dit" in line and "UNet pipelines only" in line
    assert not out.exists()


def test_ca_simultaneous_with_projection_topk_and_l1_on_the_dit(tmp_path):
    rows = unlearn("ca", tmp_path / "run", "--config", "configs/protocols/simultaneous.yaml",
                   "--stream.simultaneous.check_every_n_steps=2", "--stream.simultaneous.max_steps=4",
                   "--trainer.callbacks+=configs/tinyworld/callbacks/l1_ca.yaml",
                   "--trainer.callbacks+=configs/callbacks/projection_update.yaml",
                   "--trainer.callbacks+=configs/callbacks/topk.yaml")
    assert [r["concept"] for r in rows] == ["base", "Van Gogh", "Cartoon"]
    record = json.loads((tmp_path / "run" / "requests" / "02-cartoon" / "projection_update.json").read_text())
    assert isinstance(record["protected"], list)


def test_independent_ties_merging_on_the_dit(tmp_path):
    run = tmp_path / "run"
    rows = unlearn("esd", run, "--config", "configs/protocols/independent_ties.yaml")
    assert [r["concept"] for r in rows] == ["base", "Van Gogh", "Cartoon"]
    merged = load_file(str(run / "requests" / "02-cartoon" / "merged.safetensors"))
    assert merged and all(".attn2." in k for k in merged)


def test_a_tiny_backbone_and_a_real_model_together_are_refused(tmp_path, tiny_sd_folder, cli_error):
    run = tmp_path / "run"
    line = cli_error(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
                      "--model.backbone=tinyworld-dit", f"--model.pretrained={tiny_sd_folder}",
                      f"--stream.run_dir={run}"])
    assert "--model.backbone=tinyworld-dit" in line and "--model.pretrained" in line
    assert not run.exists()


def _numbers(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _numbers(v)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


@pytest.mark.parametrize("value", ["dit", "unet"])
def test_an_unknown_backbone_is_named(tmp_path, cli_error, value):
    line = cli_error(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
                      f"--model.backbone={value}", f"--stream.run_dir={tmp_path / 'run'}"])
    assert f"--model.backbone must be one of tinyworld, tinyworld-dit, tinyworld-dit-12, got {value!r}" in line
    assert not (tmp_path / "run").exists()
