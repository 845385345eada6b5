"""``train.py score``: a tiny-world denoiser's validation grid under several noise seeds, pooled."""

import json

import pytest
from safetensors.torch import save_file

from lightning_unlearn.cli import main
from lightning_unlearn.intervals import wilson
from lightning_unlearn.tinyworld.backbone import TINY_WEIGHTS_DIR
from lightning_unlearn.tinyworld.concepts import OBJECTS


def test_the_shipped_unet_scores_per_seed_and_pooled_with_intervals(tmp_path, capsys):
    out = tmp_path / "score.json"
    # Two sampler steps keep it to seconds; the counts' bookkeeping is what is checked here.
    main(["score", str(TINY_WEIGHTS_DIR / "tiny_unet.safetensors"), "--seeds", "1", "2", "--steps", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    grids, pooled = result["grids"], result["pooled"]
    assert [g["seed"] for g in grids] == [1, 2] and all(g["images"] == 192 for g in grids)
    assert pooled["images"] == 384 and pooled["seeds"] == [1, 2]
    for kind in ("style", "object"):
        hits = sum(g[f"{kind}_correct"] for g in grids)
        assert pooled[f"{kind}_correct"] == hits
        assert pooled[f"{kind}_wilson95"] == [round(b, 2) for b in wilson(hits, 384)]
    for grid in grids:
        assert list(grid["per_object"]) == list(OBJECTS) and sum(grid["per_object"].values()) == grid["object_correct"]
        assert all(0 <= hits <= 16 for hits in grid["per_object"].values())
    # Different noise gives different images: the two grids are not one grid counted twice.
    assert grids[0] != {**grids[1], "seed": 1}
    assert f"pooled over 2 grids (384 images): style {pooled['style_acc']}%" in printed
    assert f"seed 2: style {grids[1]['style_correct']}/192" in printed


def test_bad_input_is_named_before_any_sampling(tmp_path, cli_error):
    unet = str(TINY_WEIGHTS_DIR / "tiny_unet.safetensors")
    assert "--seeds repeats a seed" in cli_error(["score", unet, "--seeds", "7", "7"])
    assert "--steps must be at least 1" in cli_error(["score", unet, "--steps", "0"])
    taken = tmp_path / "taken.json"
    taken.write_text("{}")
    assert f"--out {taken} exists" in cli_error(["score", unet, "--out", str(taken)])
    assert taken.read_text() == "{}"
    missing = tmp_path / "missing.safetensors"
    assert f"weights file {missing} does not exist" in cli_error(["score", str(missing)])
    pickle = tmp_path / "model.safetensors"
    pickle.write_bytes(b"\x80\x04\x95not safetensors")
    assert f"{pickle} is not a readable safetensors file" in cli_error(["score", str(pickle)])
    classifier = str(TINY_WEIGHTS_DIR / "tiny_classifier.safetensors")
    assert f"{classifier} is not a tiny-world UNet's weights" in cli_error(["score", classifier])
    # A DiT file that lacks part of a block is named as the DiT it claims to be.
    from safetensors.torch import load_file

    dit = load_file(str(TINY_WEIGHTS_DIR / "tiny_dit.safetensors"))
    broken = tmp_path / "broken.safetensors"
    save_file({k: v for k, v in dit.items() if not k.startswith("transformer_blocks.3.attn2.")}, str(broken))
    assert f"{broken} is not a tiny-world 8-block DiT's weights" in cli_error(["score", str(broken)])


@pytest.mark.slow  # about 4 minutes on 2 cores: one 192-image grid on the 12-block DiT
def test_the_12_block_dits_card_grid_is_what_score_measures():
    card = json.loads((TINY_WEIGHTS_DIR / "tiny_dit_12.json").read_text())
    from lightning_unlearn.pretraining.grid_score import recipe_for, score_seed
    from lightning_unlearn.tinyworld.classifier import TinyWorldClassifier

    recipe = recipe_for(TINY_WEIGHTS_DIR / "tiny_dit_12.safetensors", 20, 4.0)
    grid = score_seed(recipe, TinyWorldClassifier.load(), card["hyperparameters"]["eval_seed"])
    # The card's grid re-sampled from the exported weights: equal up to a borderline image or two
    # (the export is the EMA weights rounded through safetensors; float order differs by machine).
    assert grid["style_correct"] == round(192 * card["sample_accuracy"]["sample_style_acc"])
    assert abs(grid["object_correct"] - round(192 * card["sample_accuracy"]["sample_object_acc"])) <= 2
