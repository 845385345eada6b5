"""End to end through the CLI: a short stream on the tiny world, its output tree, and resume."""

import json
import logging
from pathlib import Path

import pytest
import torch
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
    for row, folder in zip(rows[1:], ("01-van-gogh", "02-cartoon")):
        metrics = json.loads((run / "requests" / folder / "metrics.json").read_text())
        for key in ("UA", "UA_latest", "IRA", "CRA", "style_acc", "object_acc"):
            # Every number with its 95% interval, the same in results.json and metrics.json.
            assert 0.0 <= row[f"{key}_lo"] <= row[key] <= row[f"{key}_hi"] <= 100.0
            assert row[f"{key}_hi"] - row[f"{key}_lo"] > 0
            assert (metrics[key], metrics[f"{key}_lo"], metrics[f"{key}_hi"]) == (row[key], row[f"{key}_lo"], row[f"{key}_hi"])
    assert rows[0]["style_acc"] >= 75 and rows[0]["object_acc"] >= 75  # the shipped base knows its world
    assert json.loads((run / "requests" / "00-base" / "metrics.json").read_text())["per_object"].keys() == {
        "circle", "star", "house"}
    csv_lines = (run / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("request,concept,kind,UA,UA_lo,UA_hi,UA_latest,UA_latest_lo,UA_latest_hi,"
                                   "IRA,IRA_lo,IRA_hi,CRA,CRA_lo,CRA_hi") and len(csv_lines) == 4
    ledger = json.loads((run / "ledger.json").read_text())
    assert [e["concept"] for e in ledger["completed"]] == ["Van Gogh", "Cartoon"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(run.rglob("*.tmp"))

    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_stream(run)
    assert "all 2 requests are already complete" in caplog.text
    assert json.loads((run / "results.json").read_text()) == rows


def test_a_different_stream_on_the_same_folder_is_refused(tmp_path, cli_error):
    run = tmp_path / "run"
    main(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
          "--data.requests=[Monet]", f"--stream.run_dir={run}", *FAST])
    assert "use another run_dir" in cli_error(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
                                               "--data.requests=[Cartoon]", f"--stream.run_dir={run}", *FAST])


# -- precision and optimizer options -----------------------------------------------------------

# This CPU has no bf16 instructions (bf16 convolutions run ~20x slower than fp32): one request
# on a 2 x 1 corner of the world, 2-step banks and evaluation.
SMALL = [
    "--data.requests=[Van Gogh]", "--data.steps_per_request=4", "--data.batch_size=2",
    "--model.method.init_args.ddim_steps=2", "--model.method.init_args.bank_trajectories=2",
    "--stream.evaluation.steps=2", "--trainer.enable_model_summary=false",
    "--data.styles=[Van Gogh, Monet]", "--data.objects=[star]",
]

def _capture_runner(monkeypatch) -> list:
    """Keep the StreamRunner that ``main`` builds, to look at its trainer afterwards."""
    from lightning_unlearn.stream import StreamRunner

    runners, run = [], StreamRunner.run

    def keep(self):
        runners.append(self)
        return run(self)

    monkeypatch.setattr(StreamRunner, "run", keep)
    return runners


def _finite_request(run: Path) -> dict:
    rows = json.loads((run / "results.json").read_text())
    assert [r["concept"] for r in rows] == ["base", "Van Gogh"] and rows[1]["train_steps"] == 4
    for key in ("UA", "IRA", "CRA", "style_acc", "object_acc"):
        assert 0.0 <= rows[1][key] <= 100.0
    return load_file(str(run / "requests" / "01-van-gogh" / "weights.safetensors"))


def test_bf16_mixed_precision_with_a_bf16_reference_serves_a_request_on_the_cpu(tmp_path, monkeypatch):
    runners = _capture_runner(monkeypatch)
    run = tmp_path / "run"
    main(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
          f"--stream.run_dir={run}", *SMALL, "--trainer.precision=bf16-mixed", "--model.reference_dtype=bfloat16",
          "--model.gradient_checkpointing=true"])
    trainer = runners[0].trainer
    assert trainer.precision == "bf16-mixed"
    module = runners[0].module
    assert next(module.reference_unet.parameters()).dtype == torch.bfloat16
    assert next(module.unet.parameters()).dtype == torch.float32  # mixed: fp32 master weights
    loss = trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss)
    weights = _finite_request(run)
    base = module.base_state()
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert any(not torch.equal(base[k], v) for k, v in weights.items()), "training changed nothing"


def test_bitsandbytes_adamw8bit_from_the_cli_trains_with_8bit_state_on_the_cpu(tmp_path, monkeypatch):
    runners = _capture_runner(monkeypatch)
    run = tmp_path / "run"
    # min_8bit_size: bitsandbytes keeps 32-bit state for tensors under 4096 elements by default,
    # which would leave most of the tiny UNet's cross-attention on the 32-bit path.
    main(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
          f"--stream.run_dir={run}", *SMALL, "--model.optimizer=bitsandbytes.optim.AdamW8bit",
          "--model.optimizer.lr=1e-3", "--model.optimizer.min_8bit_size=256"])
    import bitsandbytes

    optimizer = runners[0].trainer.optimizers[0]
    assert isinstance(optimizer, bitsandbytes.optim.AdamW8bit)
    dtypes = {v.dtype for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)}
    assert torch.uint8 in dtypes, f"no 8-bit optimizer state: {dtypes}"
    weights = _finite_request(run)
    base = runners[0].module.base_state()
    assert any(not torch.equal(base[k], v) for k, v in weights.items()), "training changed nothing"
