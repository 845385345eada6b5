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
