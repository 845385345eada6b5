"""End to end through the CLI: a short stream on the tiny world, its output tree, and resume."""

import json
import logging
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lightning_unlearn.cli import main

FAST = [
    "--data.steps_per_request=4", "--data.batch_size=4",
    "--model.method.init_args.ddim_steps=4", "--model.method.init_args.bank_trajectories=4",
    "--stream.evaluation.steps=8", "--trainer.enable_model_summary=false",
    # A 4 x 3 corner of the world keeps evaluation to 12 images.
    "--data.styles=[Van Gogh, Cartoon, Monet, Pop Art]", "--data.objects=[circle, star, house]",
]


def run_stream(run_dir: Path, *extra: str) -> None:
    main(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
          "--data.requests=[Van Gogh, Cartoon]", f"--stream.run_dir={run_dir}", *FAST, *extra])


def test_two_requests_write_the_run_folder_and_resume_does_nothing(tmp_path, caplog):
    run = tmp_path / "run"
    run_stream(run)
    for name in ("00-base", "01-van-gogh", "02-cartoon"):
        assert (run / "requests" / name / "metrics.json").is_file()
        assert (run / "requests" / name / "grid.png").is_file()
    weights = load_file(str(run / "requests" / "02-cartoon" / "weights.safetensors"))
    assert weights and all(".attn2." in k for k in weights)  # esd-x: cross-attention only
    rows = json.loads((run / "results.json").read_text())
    assert [r["concept"] for r in rows] == ["base", "Van Gogh", "Cartoon"]
    assert [r["cumulative_steps"] for r in rows] == [0, 4, 8]
    for row in rows[1:]:
        for key in ("UA", "UA_latest", "IRA", "CRA"):
            assert 0.0 <= row[key] <= 100.0
    assert rows[0]["style_acc"] >= 75 and rows[0]["object_acc"] >= 75  # the shipped base knows its world
    assert json.loads((run / "requests" / "00-base" / "metrics.json").read_text())["per_object"].keys() == {
        "circle", "star", "house"}
    csv_lines = (run / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("request,concept,kind,UA,UA_latest,IRA,CRA") and len(csv_lines) == 4
    ledger = json.loads((run / "ledger.json").read_text())
    assert [e["concept"] for e in ledger["completed"]] == ["Van Gogh", "Cartoon"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(run.rglob("*.tmp"))

    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_stream(run)
    assert "all 2 requests are already complete" in caplog.text
    assert json.loads((run / "results.json").read_text()) == rows


def test_a_different_stream_on_the_same_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    main(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
          "--data.requests=[Monet]", f"--stream.run_dir={run}", *FAST])
    from lightning_unlearn.stream import LedgerMismatchError

    with pytest.raises(LedgerMismatchError, match="use another run_dir"):
        main(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
              "--data.requests=[Cartoon]", f"--stream.run_dir={run}", *FAST])
