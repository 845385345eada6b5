"""The attacks on a diffusers Stable Diffusion folder scored by CLIP (tiny random ones, offline)."""

from __future__ import annotations

import json

from lightning_unlearn.cli import main


def test_attacks_run_on_a_diffusers_folder_with_clip_scoring(tmp_path, tiny_sd_folder, tiny_clip_folder):
    run = tmp_path / "run"
    main([
        "unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
        f"--model.pretrained={tiny_sd_folder}", "--model.trainable=kv-xattn",
        "--data.styles=[Van Gogh, Monet, Cubism]", "--data.objects=[cat, dog]",
        "--data.requests=[Van Gogh]", "--data.steps_per_request=2", "--data.batch_size=2",
        "--model.method.init_args.ddim_steps=3", "--model.method.init_args.bank_trajectories=2",
        "--stream.evaluation.steps=2", "--stream.evaluation.seeds_per_prompt=2", "--stream.semantic_analysis=false",
        f"--stream.evaluation.classifier={tiny_clip_folder}", f"--stream.run_dir={run}",
        "--trainer.logger=false", "--stream.progress=false",
        "--stream.attacks.names=[relearn, embedding, prompt]", "--stream.attacks.images=2",
        "--stream.attacks.relearn.budgets=[1]", "--stream.attacks.relearn.batch_size=2",
        "--stream.attacks.relearn.trainable=kv-xattn",
        "--stream.attacks.embedding.steps=1", "--stream.attacks.prompt.iterations=1",
        "--stream.attacks.prompt.candidates=2",
    ])
    record = json.loads((run / "requests" / "01-van-gogh" / "attacks.json").read_text())
    attacks = record["targets"][0]["attacks"]
    assert set(attacks) == {"relearn", "embedding", "prompt"}
    for result in attacks.values():
        assert result["images"] == 2 * 2  # 2 objects x 2 seeds, classified by CLIP
        assert 0 <= result["asr"] <= 100
    # The CLIP tokenizer's vocabulary is the prompt search's space (single characters in this one).
    assert attacks["prompt"]["vocabulary_words"] > 0 and len(attacks["prompt"]["prefix"].split()) == 3
    row = json.loads((run / "results.json").read_text())[1]
    assert row["relearn_asr"] == attacks["relearn"]["asr"]
