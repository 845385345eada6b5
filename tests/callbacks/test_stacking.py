"""Regularizers stack from the command line, and two instances of one class keep apart."""

import json

import pytest
from lightning.pytorch import Trainer

from lightning_unlearn.callbacks.anchor import AnchorRegularizer
from lightning_unlearn.callbacks.base import RequestCallback
from lightning_unlearn.callbacks.drift import DriftRecorder
from lightning_unlearn.callbacks.gradient_projection import GradientProjection
from lightning_unlearn.callbacks.selective_finetuning import SelectiveFineTuning
from lightning_unlearn.cli import main
from lightning_unlearn.stream import StreamRunner

FAST = [
    "--data.steps_per_request=3", "--data.batch_size=2",
    "--model.method.init_args.ddim_steps=3", "--model.method.init_args.bank_trajectories=2",
    # One image a prompt: these tests check what the stacked callbacks record, not the metrics.
    "--stream.evaluation.steps=2", "--stream.evaluation.seeds_per_prompt=1", "--trainer.enable_model_summary=false",
]
# A 4 x 3 world where the projection's protected set is not asserted (evaluation: 12 prompts, not 192).
SMALL_WORLD = ["--data.styles=[Van Gogh, Picasso, Monet, Cartoon]", "--data.objects=[circle, star, house]"]


def test_projection_topk_and_two_anchors_from_yaml_files_run_one_stream(tmp_path, monkeypatch):
    seen = {}
    original = StreamRunner.run

    def spy(self):
        seen["trainer"] = self.trainer
        return original(self)

    monkeypatch.setattr(StreamRunner, "run", spy)
    run = tmp_path / "run"
    main([
        # the study's projection_topk run: the base, then two overlays stacked after its DriftRecorder
        "unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
        "--trainer.callbacks+=configs/callbacks/projection_update.yaml",
        "--trainer.callbacks+=configs/callbacks/topk.yaml",
        # edits the last callback so far: the SelectiveFineTuning just added
        "--trainer.callbacks.init_args.importance_batches=1",
        "--trainer.callbacks+=configs/callbacks/l2.yaml",
        "--trainer.callbacks+=configs/callbacks/l1.yaml",
        "--data.requests=[Van Gogh]", f"--stream.run_dir={run}", *FAST,
    ])
    trainer = seen["trainer"]
    stack = [cb for cb in trainer.callbacks if isinstance(cb, RequestCallback)]
    # The base config's DriftRecorder comes first; the overlays follow in CLI order.
    assert type(stack[0]) is DriftRecorder
    stack = stack[1:]
    assert [type(cb) for cb in stack] == [GradientProjection, SelectiveFineTuning, AnchorRegularizer, AnchorRegularizer]
    assert stack[1].importance_batches == 1 and [cb.kind for cb in stack[2:]] == ["l2", "l1"]
    assert len({cb.state_key for cb in stack}) == 4  # the l1 and l2 anchors do not collide
    metrics = trainer.callback_metrics
    assert float(metrics[stack[2].log_key]) > 0 and float(metrics[stack[3].log_key]) > 0
    assert f"{stack[1].log_prefix}/selected_fraction" in metrics
    assert stack[0].protected == ["Impressionism", "Picasso"]
    rows = json.loads((run / "results.json").read_text())
    assert [r["concept"] for r in rows] == ["base", "Van Gogh"] and rows[1]["train_steps"] == 3


def test_two_identical_instances_need_names():
    with pytest.raises(RuntimeError, match="state_key"):
        Trainer(callbacks=[SelectiveFineTuning(), SelectiveFineTuning()], logger=False)
    named = [SelectiveFineTuning(name="topk_a"), SelectiveFineTuning(name="topk_b")]
    Trainer(callbacks=named, logger=False, enable_checkpointing=False)
    assert named[0].state_key != named[1].state_key and named[0].log_prefix == "topk_a"


def test_inverse_ewc_trajectory_and_replay_stack_with_an_anchor_over_two_requests(tmp_path):
    run = tmp_path / "run"
    main([
        "unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
        "--trainer.callbacks+=configs/tinyworld/callbacks/inverse_ewc_esd.yaml",
        "--trainer.callbacks+=configs/tinyworld/callbacks/trajectory_esd.yaml",
        "--trainer.callbacks+=configs/tinyworld/callbacks/replay.yaml",
        "--trainer.callbacks+=configs/tinyworld/callbacks/l2_esd.yaml",
        "--data.requests=[Van Gogh, Picasso]", f"--stream.run_dir={run}", *FAST, *SMALL_WORLD,
    ])
    folders = sorted(p for p in (run / "requests").iterdir() if p.is_dir() and not p.name.startswith("00"))
    assert len(folders) == 2, folders
    for index, folder in enumerate(folders):
        records = {stem: json.loads((folder / f"{stem}.json").read_text())
                   for stem in ("inverse_ewc_l2", "trajectory_l2", "replay")}
        # Request 1 has no importance yet; request 2 is penalised by both.
        for stem in ("inverse_ewc_l2", "trajectory_l2"):
            assert records[stem]["penalty_active"] is (index == 1)
            assert records[stem]["penalty_steps"] == (3 if index == 1 else 0)
        assert records["replay"]["steps"] == 3 and records["replay"]["replay_mse_last"] > 0
    rows = json.loads((run / "results.json").read_text())
    assert [r["concept"] for r in rows] == ["base", "Van Gogh", "Picasso"]
