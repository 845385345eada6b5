"""The relearning attack is real: an ESD-erased style comes back after 50 fine-tuning steps."""

from __future__ import annotations

import json


from lightning_unlearn.cli import main


def test_relearning_brings_an_erased_style_back(tmp_path):
    run = tmp_path / "run"
    main([
        "unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml", "--data.requests=[Van Gogh]",
        "--data.styles=[Van Gogh, Cartoon, Monet, Pop Art]", "--data.objects=[circle, star, house]",
        "--data.steps_per_request=40", "--data.batch_size=8", "--model.lr=1e-3",
        "--model.method.init_args.ddim_steps=8", "--model.method.init_args.bank_trajectories=16",
        "--stream.evaluation.seeds_per_prompt=3", "--stream.semantic_analysis=false",
        "--trainer.logger=false", "--stream.progress=false", f"--stream.run_dir={run}",
        "--stream.attacks.names=[relearn]", "--stream.attacks.relearn.budgets=[50]",
    ])
    curve = json.loads((run / "requests" / "01-van-gogh" / "attacks.json").read_text())["targets"][0]["attacks"]["relearn"]["curve"]
    before, after = curve[0], curve[-1]
    assert before["steps"] == 0 and after["steps"] == 50 and before["images"] == 9
    assert before["UA"] >= 75, f"ESD did not erase Van Gogh (UA {before['UA']}): the test has nothing to attack"
    assert after["UA"] <= before["UA"] - 40, curve
