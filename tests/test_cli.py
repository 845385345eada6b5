"""The command line refuses a misspelled key by name before it writes anything."""

from pathlib import Path

import pytest

from lightning_unlearn.cli import main

CONFIG = "configs/tinyworld/esd_styles_sequential.yaml"


@pytest.mark.parametrize(
    "yaml_text, args, named",
    [
        (None, ["--data.request=[Monet]"], "--data.request"),  # one letter short of --data.requests
        (None, ["--model.lrr=1"], "--model.lrr"),
        (None, ["--data.batch=4"], "--data.batch=4"),  # a prefix of --data.batch_size is not taken for it
        ("stream:\n  run_dri: elsewhere\n", [], "'run_dri'"),
        ("model:\n  lrr: 1\n", [], "'lrr'"),
        ("data:\n  steps_per_requests: 3\n", [], "'steps_per_requests'"),
    ],
)
def test_a_misspelled_key_exits_naming_it_and_writes_nothing(tmp_path, capsys, yaml_text, args, named):
    run = tmp_path / "run"
    extra = []
    if yaml_text is not None:
        (tmp_path / "bad.yaml").write_text(yaml_text)
        extra = ["--config", str(tmp_path / "bad.yaml")]
    with pytest.raises(SystemExit) as exit_info:
        main(["unlearn", "--config", CONFIG, f"--stream.run_dir={run}", *extra, *args])
    assert exit_info.value.code not in (0, None)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error:") and named in error
    assert not run.exists() and list(Path(tmp_path).iterdir()) == ([tmp_path / "bad.yaml"] if yaml_text else [])


@pytest.mark.parametrize(
    "requests, named",
    [("[Rembrandt]", "unknown concept 'Rembrandt'"), ("[]", "request list is empty"),
     ("[Monet, Monet]", "duplicate request: 'Monet'")],
)
def test_a_bad_request_list_is_named_before_the_run_folder_exists(tmp_path, cli_error, requests, named):
    run = tmp_path / "run"
    assert named in cli_error(["unlearn", "--config", CONFIG, f"--stream.run_dir={run}", f"--data.requests={requests}"])
    assert not run.exists()


ESD_ARGS = "--model.method.init_args."
CA = ["--model.method=lightning_unlearn.methods.ConceptAblation", "--model.trainable=kv-xattn"]


@pytest.mark.parametrize(
    "args, named",
    [
        (["--data.steps_per_request=0"], "--data.steps_per_request must be >= 1, got 0"),
        (["--data.steps_per_request=-3"], "--data.steps_per_request must be >= 1, got -3"),
        (["--data.batch_size=0"], "--data.batch_size must be >= 1, got 0"),
        (["--model.lr=0"], "--model.lr must be a finite number > 0, got 0.0"),
        (["--model.lr=-1e-5"], "--model.lr must be a finite number > 0"),
        (["--model.trainable=everything"], "--model.trainable: unknown trainable set 'everything'"),
        (["--data.styles=[Van Gogh, Monett]"], "--data.styles names 'Monett' (did you mean 'Monet'?), which the classifier does not know"),
        ([f"{ESD_ARGS}negative_guidance=-1"], f"{ESD_ARGS}negative_guidance must be a finite number >= 0"),
        ([f"{ESD_ARGS}ddim_steps=0"], f"{ESD_ARGS}ddim_steps must be >= 1"),
        ([f"{ESD_ARGS}start_guidance=-2"], f"{ESD_ARGS}start_guidance must be a finite number >= 0"),
        ([f"{ESD_ARGS}bank_trajectories=0"], f"{ESD_ARGS}bank_trajectories must be >= 1"),
        ([*CA, f"{ESD_ARGS}images_per_anchor=0"], f"{ESD_ARGS}images_per_anchor must be >= 1"),
        ([*CA, f"{ESD_ARGS}sample_batch=0"], f"{ESD_ARGS}sample_batch must be >= 1"),
        (["--stream.evaluation.seeds_per_prompt=0"], "--stream.evaluation.seeds_per_prompt must be >= 1"),
        (["--stream.evaluation.steps=0"], "--stream.evaluation.steps must be >= 1"),
        (["--stream.evaluation.batch_size=0"], "--stream.evaluation.batch_size must be >= 1"),
        (["--stream.evaluation.guidance=-1"], "--stream.evaluation.guidance must be a finite number >= 0"),
        (["--stream.evaluate_every=0"], "--stream.evaluate_every must be >= 1, got 0"),
        (["--stream.checkpoint_every_n_steps=0"], "--stream.checkpoint_every_n_steps must be >= 1, got 0"),
        (["--stream.protocol=simultaneous", "--stream.simultaneous.max_steps=0"], "--stream.simultaneous.max_steps must be >= 1"),
        (["--stream.simultaneous.check_every_n_steps=0"], "--stream.simultaneous.check_every_n_steps must be >= 1"),
        (["--stream.simultaneous.ua_target=-1"], "--stream.simultaneous.ua_target must lie in [0, 100], got -1.0"),
        (["--stream.simultaneous.ua_target=101"], "--stream.simultaneous.ua_target must lie in [0, 100]"),
        (["--stream.protocol=independent", "--stream.merge.lambda_=0"], "--stream.merge.lambda_ must be a finite number > 0"),
        (["--stream.protocol=independent", "--stream.merge.top_k=1.5"], "--stream.merge.top_k must lie in (0, 1], got 1.5"),
        (["--stream.merge.method=ties"], "--stream.merge combines independently unlearned checkpoints"),
        (["--trainer.callbacks+=lightning_unlearn.callbacks.anchor.AnchorRegularizer", "--trainer.callbacks.weight=-1"],
         "lightning_unlearn.callbacks.anchor.AnchorRegularizer init_args.weight must be a finite number >= 0, got -1.0"),
        (["--trainer.callbacks+=lightning_unlearn.callbacks.selective_finetuning.SelectiveFineTuning", "--trainer.callbacks.top_k=0"],
         "SelectiveFineTuning init_args.top_k must lie in (0, 1], got 0.0"),
        (["--trainer.callbacks+=lightning_unlearn.callbacks.gradient_projection.GradientProjection",
          "--trainer.callbacks.similarity_threshold=1.5"], "GradientProjection init_args.similarity_threshold must lie in [-1, 1]"),
    ],
)
def test_a_setting_that_cannot_be_served_is_named_before_anything_is_written(tmp_path, cli_error, args, named):
    # Before these checks, steps_per_request=0 served a takedown with nothing unlearned (exit 0),
    # and negative steps or batch 0 failed after the base evaluation, leaving its files behind.
    run = tmp_path / "run"
    line = cli_error(["unlearn", "--config", CONFIG, f"--stream.run_dir={run}", "--data.requests=[Van Gogh]", *args])
    assert named in line
    assert not run.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("inside", [False, True])
def test_a_run_folder_path_that_is_a_file_is_named_before_anything_else(tmp_path, cli_error, inside):
    taken = tmp_path / "results.csv"
    taken.write_text("a file the user keeps\n")
    run = taken / "run" if inside else taken
    line = cli_error(["unlearn", "--config", CONFIG, f"--stream.run_dir={run}"])
    assert f"--stream.run_dir {run} " in line and ("is an existing file" if not inside else f"inside {taken}, which is a file") in line
    assert taken.read_text() == "a file the user keeps\n" and list(tmp_path.iterdir()) == [taken]


@pytest.mark.parametrize(
    "requests, named",
    [("[van gogh]", "unknown concept 'van gogh' (did you mean 'Van Gogh'?)"),
     ("[Pcasso]", "unknown concept 'Pcasso' (did you mean 'Picasso'?)"),
     ("[sqare]", "unknown concept 'sqare' (did you mean 'square'?)")],
)
def test_a_near_miss_of_a_concept_is_refused_with_a_suggestion(tmp_path, cli_error, requests, named):
    run = tmp_path / "run"
    assert named in cli_error(["unlearn", "--config", CONFIG, f"--stream.run_dir={run}", f"--data.requests={requests}"])
    assert not run.exists()


def test_a_mistyped_concept_ablation_anchor_is_named_before_anything_is_written(tmp_path, cli_error):
    run = tmp_path / "run"
    line = cli_error(["unlearn", "--config", CONFIG, f"--stream.run_dir={run}", "--data.requests=[Van Gogh]", *CA,
                      "--model.method.init_args.anchors={Van Gogh: Monett}"])
    assert "the anchor 'Monett' of 'Van Gogh' is not a tiny-world style (did you mean 'Monet'?)" in line
    assert not run.exists()


def test_a_mistyped_plain_subcommand_prints_one_error_line(tmp_path, cli_error):
    assert "train.py report: the following arguments are required: RUN_DIR" in cli_error(["report"])
    assert "train.py study: the following arguments are required: --config" in cli_error(["study"])
