"""The pretraining recipes run through the CLI and export safetensors + a card, atomically."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lightning_unlearn.cli import main


def test_classifier_recipe_exports_weights_and_card(tmp_path):
    out = tmp_path / "clf.safetensors"
    main(["pretrain", "--config", "configs/tinyworld/pretrain_classifier.yaml", "--trainer.max_steps=2",
          "--trainer.val_check_interval=2", f"--trainer.logger.init_args.save_dir={tmp_path}",
          "--data.init_args.batch_size=8", "--data.init_args.val_batches=1", f"--model.init_args.export_path={out}",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])
    assert load_file(str(out))
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["steps"] == 2 and set(card["heldout_accuracy"]) == {"val/style_acc", "val/object_acc"}
    # The card ships with the weights: it records the recipe, not where this machine wrote them.
    assert card["hyperparameters"] == {"lr": 0.002, "weight_decay": 0.0001}
    assert str(tmp_path) not in out.with_suffix(".json").read_text()


def test_a_classifier_resume_that_asks_for_another_schedule_is_refused_before_its_first_step(tmp_path, cli_error):
    # The one-cycle schedule (its length, peak and the weight decay) comes back from the
    # checkpoint: a resume with other settings used to train on with the old ones, silently.
    out = tmp_path / "clf.safetensors"
    args = ["pretrain", "--config", "configs/tinyworld/pretrain_classifier.yaml", "--trainer.val_check_interval=2",
            f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_checkpointing=true",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}", "--trainer.callbacks.save_last=true",
            "--data.init_args.batch_size=8", "--data.init_args.val_batches=1", f"--model.init_args.export_path={out}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    main([*args, "--trainer.max_steps=4"])
    saved = tmp_path / "ckpt" / "last.ckpt"
    exported = out.read_bytes()
    line = cli_error([*args, "--trainer.max_steps=6", "--model.init_args.lr=0.001", "--ckpt_path", str(saved)])
    assert "--trainer.max_steps 4 (asked 6)" in line and "--model.init_args.lr 0.002 (asked 0.001)" in line
    assert "weight_decay" not in line  # only what differs is named
    assert out.read_bytes() == exported  # no step was taken, nothing exported


def test_unet_recipe_samples_scores_and_exports(tmp_path):
    # Training ends at step 3, between validations (every 2): the card must not pair the step-3
    # weights with the step-2 measurement.
    main(["pretrain", "--config", "configs/tinyworld/pretrain.yaml", "--trainer.max_steps=3",
          "--trainer.val_check_interval=2", f"--trainer.logger.init_args.save_dir={tmp_path}",
          f"--trainer.callbacks.init_args.dirpath={tmp_path / 'ckpt'}", "--data.init_args.batch_size=4",
          f"--model.init_args.export_dir={tmp_path}", "--model.init_args.eval_steps=2",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])
    weights = load_file(str(tmp_path / "tiny_unet.safetensors"))
    assert any(".attn2.to_k." in k for k in weights)
    card = json.loads((tmp_path / "tiny_unet.json").read_text())
    assert card["steps"] == 3 and 0.0 <= card["sample_accuracy"]["sample_object_acc"] <= 1.0
    assert card["sample_accuracy"]["step"] == 3
    assert card["schedule_segments"] == [{"from_step": 0, "max_steps": 3, "lr": 0.001, "weight_decay": 0.01}]
    assert "export_dir" not in card["hyperparameters"] and card["hyperparameters"]["eval_steps"] == 2
    assert str(tmp_path) not in (tmp_path / "tiny_unet.json").read_text()
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    assert not list(tmp_path.glob("*.tmp"))


def test_dit_recipe_trains_with_flow_matching_and_resumes_after_a_validation(tmp_path):
    args = ["pretrain", "--config", "configs/tinyworld_dit/pretrain.yaml", "--trainer.val_check_interval=1",
            f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.callbacks.init_args.dirpath={tmp_path / 'ckpt'}",
            "--trainer.callbacks.init_args.every_n_train_steps=1", "--data.init_args.batch_size=4",
            f"--model.init_args.export_dir={tmp_path}", "--model.init_args.eval_steps=1",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    main([*args, "--trainer.max_steps=2"])
    # The step-2 checkpoint comes after a validation, which loads the classifier: resuming from it
    # used to fail on the classifier's keys in the checkpoint.
    main([*args, "--trainer.max_steps=3", "--ckpt_path", "last"])
    weights = load_file(str(tmp_path / "tiny_dit.safetensors"))
    assert "transformer_blocks.7.attn2.to_k.weight" in weights and not any(k.startswith("_classifier") for k in weights)
    card = json.loads((tmp_path / "tiny_dit.json").read_text())
    assert card["steps"] == 3 and card["model"].startswith("lightning_unlearn.denoisers.CrossAttentionDiT")
    # The resumed run extended the schedule: the card says which max_steps each stretch ran under.
    assert card["schedule_segments"] == [{"from_step": 0, "max_steps": 2, "lr": 0.0005, "weight_decay": 0.01},
                                         {"from_step": 2, "max_steps": 3, "lr": 0.0005, "weight_decay": 0.01}]
    assert card["objective"]["objective"] == "flow-matching" and card["objective"]["timestep_sampling"] == "logit-normal"
    assert card["sampler"] == "diffusers.FlowMatchEulerDiscreteScheduler"
    assert card["initialization"] == "DiT (xavier-uniform, zero output layers)" and card["config"]["patch_size"] == 1
    assert card["hyperparameters"]["lr"] == 0.0005 and card["hyperparameters"]["min_snr_gamma"] == 0.0


def test_a_resume_from_a_checkpoint_file_keeps_the_settings_given_on_the_command_line(tmp_path):
    # Lightning re-applies a checkpoint file's hparams over the parsed config; the resumed run
    # used to export to the first run's folder with the first run's learning rate, silently.
    first, second = tmp_path / "first", tmp_path / "second"
    args = ["pretrain", "--config", "configs/tinyworld_dit/pretrain.yaml", "--trainer.val_check_interval=2",
            f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.callbacks.init_args.dirpath={tmp_path / 'ckpt'}",
            "--data.init_args.batch_size=4", "--model.init_args.eval_steps=1",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    main([*args, "--trainer.max_steps=2", f"--model.init_args.export_dir={first}"])
    saved = tmp_path / "step2.ckpt"
    (tmp_path / "ckpt" / "last.ckpt").rename(saved)
    main([*args, "--trainer.max_steps=3", f"--model.init_args.export_dir={second}", "--model.init_args.lr=0.0001",
          "--model.init_args.weight_decay=0.05", "--trainer.callbacks.init_args.every_n_train_steps=1",
          "--ckpt_path", str(saved)])
    card = json.loads((second / "tiny_dit.json").read_text())
    assert card["steps"] == 3 and card["hyperparameters"]["lr"] == 0.0001
    assert card["schedule_segments"] == [{"from_step": 0, "max_steps": 2, "lr": 0.0005, "weight_decay": 0.01},
                                         {"from_step": 2, "max_steps": 3, "lr": 0.0001, "weight_decay": 0.05}]
    assert json.loads((first / "tiny_dit.json").read_text())["steps"] == 2  # the first run's export is untouched
    # The optimizer trained with the new settings, not the checkpoint's: restoring its state used
    # to bring back the old peak and weight decay while the card claimed the new ones.
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    group = state["optimizer_states"][0]["param_groups"][0]
    assert state["lr_schedulers"][0]["base_lrs"] == [0.0001] and group["initial_lr"] == 0.0001
    assert group["weight_decay"] == 0.05
    assert group["lr"] == pytest.approx(0.0001 * 4 / card["hyperparameters"]["warmup_steps"])  # warm-up step 4


def test_the_dit_recipe_deepens_a_trained_dit_starts_where_it_was_and_keeps_its_lineage(tmp_path):
    # An 8-block DiT (every weight non-zero, as after training) with its card, made 12 deep: before
    # any step the deeper model and its EMA predict what the 8-block one predicts, so training
    # starts from its accuracy, not from scratch; the export's card embeds the source's card,
    # also after a resume.
    from lightning_unlearn.atomic_io import save_weights
    from lightning_unlearn.pretraining.tiny_dit import TinyDiTPretraining
    from lightning_unlearn.tinyworld.dit import build_tiny_dit

    torch.manual_seed(0)
    source = build_tiny_dit(num_layers=8)
    with torch.no_grad():
        for p in source.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    init_from = tmp_path / "source" / "tiny_dit.safetensors"
    save_weights(source.state_dict(), init_from)
    init_from.with_suffix(".json").write_text(json.dumps({"steps": 5000, "sample_accuracy": {"sample_object_acc": 0.849}}))
    deep = TinyDiTPretraining(num_layers=12, init_from=str(init_from))
    x, t, states = torch.randn(3, 12, 16, 16), torch.tensor([50.0, 500.0, 950.0]), torch.randn(3, 9, 384)
    expected = source(x, t, encoder_hidden_states=states).sample
    for model in (deep.unet, deep.ema_unet):
        assert len(model.transformer_blocks) == 12
        torch.testing.assert_close(model(x, t, encoder_hidden_states=states).sample, expected, rtol=1e-5, atol=1e-5)
    out = tmp_path / "out"
    args = ["pretrain", "--config", "configs/tinyworld_dit/pretrain.yaml", "--config", "configs/tinyworld_dit/pretrain_deepen.yaml",
            f"--model.init_args.init_from={init_from}", f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--trainer.callbacks.init_args.dirpath={tmp_path / 'ckpt'}", "--trainer.callbacks.init_args.every_n_train_steps=1",
            "--data.init_args.batch_size=4", f"--model.init_args.export_dir={out}", "--model.init_args.eval_steps=1",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    main([*args, "--trainer.max_steps=1"])
    # The resume finds a different card next to init_from (an export into the folder it was read
    # from overwrites it): the lineage comes from the checkpoint, not from the file.
    init_from.with_suffix(".json").write_text(json.dumps({"steps": 1, "overwritten": True}))
    main([*args, "--trainer.max_steps=2", "--ckpt_path", "last"])
    weights = load_file(str(out / "tiny_dit.safetensors"))
    assert "transformer_blocks.11.attn2.to_k.weight" in weights and "transformer_blocks.12.attn2.to_k.weight" not in weights
    card = json.loads((out / "tiny_dit.json").read_text())
    assert card["steps"] == 2 and card["config"]["num_layers"] == 12
    assert card["initialization"].startswith("the tiny DiT at tiny_dit.safetensors")
    assert card["initialized_from"] == {"steps": 5000, "sample_accuracy": {"sample_object_acc": 0.849}}
    assert card["hyperparameters"]["lr"] == 0.0003 and card["hyperparameters"]["num_layers"] == 12


def test_a_missing_init_from_is_one_error_line_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["pretrain", "--config", "configs/tinyworld_dit/pretrain.yaml", f"--model.init_args.init_from={tmp_path / 'none.safetensors'}",
              f"--trainer.logger.init_args.save_dir={tmp_path}", f"--model.init_args.export_dir={tmp_path / 'out'}"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --model.init_args.init_from")
    assert not (tmp_path / "out").exists()
