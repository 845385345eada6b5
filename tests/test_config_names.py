"""Configs by name: a --config or overlay value is a file, else a shipped config's name, else a
one-line error with the close names (lightning_unlearn/config_names.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_unlearn import config_names
from lightning_unlearn.config_names import (
    ConfigNameError,
    resolve_config,
    resolve_config_args,
    shipped_config_names,
    shipped_configs_dir,
)
from lightning_unlearn.study import Study

REPO = Path(__file__).resolve().parents[1]
BASE = "tinyworld/esd_styles_sequential"


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """The current folder is outside the checkout: no configs/ relative to it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_shipped_configs_are_the_checkouts_configs_folder():
    # The editable install maps lightning_unlearn.configs onto the top-level configs/ (a stale
    # editable install, made before the mapping, fails here: reinstall with pip install -e .).
    assert shipped_configs_dir().resolve() == (REPO / "configs").resolve()
    names = shipped_config_names()
    wanted = {BASE, "callbacks/topk", "protocols/simultaneous", "tinyworld/callbacks/l1_esd", "tinyworld/study_styles"}
    assert wanted <= set(names)
    assert all(not n.endswith((".yaml", ".yml")) and not n.startswith("/") for n in names)


@pytest.mark.parametrize("value", [BASE, f"{BASE}.yaml", f"configs/{BASE}.yaml", f"configs/{BASE}"])
def test_a_name_with_or_without_suffix_or_configs_prefix_resolves_to_the_shipped_file(elsewhere, value):
    assert Path(resolve_config(value)) == shipped_configs_dir() / f"{BASE}.yaml"


def test_an_existing_file_wins_over_a_shipped_config_of_the_same_name(elsewhere):
    own = elsewhere / "configs" / "tinyworld" / "esd_styles_sequential.yaml"
    own.parent.mkdir(parents=True)
    own.write_text("trainer: {max_steps: 1}\n")
    assert resolve_config(f"configs/{BASE}.yaml") == f"configs/{BASE}.yaml"
    assert resolve_config(str(own)) == str(own)


@pytest.mark.parametrize("value, close", [
    ("esd_styles_sequential", ["tinyworld/esd_styles_sequential", "sd15/esd_styles_sequential"]),
    ("tinyworld/esd_styles_sequentail", ["tinyworld/esd_styles_sequential"]),
    ("callbacks/topc.yaml", ["callbacks/topk"]),
])
def test_an_unknown_name_lists_the_close_shipped_names(elsewhere, value, close):
    with pytest.raises(ConfigNameError) as error:
        resolve_config(value)
    message = str(error.value)
    assert message.startswith(f"--config={value}: neither a file nor a shipped config name; close names: ")
    assert all(name in message for name in close), message
    assert "\n" not in message


@pytest.mark.parametrize("value, message", [
    ("/no/such/folder/x.yaml", r"^--config=/no/such/folder/x.yaml: no such file$"),
    ("nothing_like_it", r"shipped configs: callbacks/\w+, .*callbacks/l1, .*tinyworld/esd_styles_sequential"),
])
def test_what_is_neither_a_file_nor_a_name_is_refused(elsewhere, value, message):
    with pytest.raises(ConfigNameError, match=message):
        resolve_config(value)


def test_a_name_cannot_climb_out_of_the_shipped_configs(elsewhere, monkeypatch):
    # A YAML beside the configs folder (in a wheel: the package's own files) is not a config name.
    (elsewhere / "package" / "configs" / "tinyworld").mkdir(parents=True)
    (elsewhere / "package" / "configs" / "tinyworld" / "base.yaml").write_text("{}\n")
    (elsewhere / "package" / "beside.yaml").write_text("{}\n")
    monkeypatch.setattr(config_names, "shipped_configs_dir", lambda: elsewhere / "package" / "configs")
    assert resolve_config("tinyworld/base") == str(elsewhere / "package" / "configs" / "tinyworld" / "base.yaml")
    with pytest.raises(ConfigNameError, match="neither a file nor a shipped config name; close names: tinyworld/base"):
        resolve_config("tinyworld/../../beside")


def test_config_arguments_resolve_in_every_form_and_the_others_pass_through(elsewhere):
    shipped = shipped_configs_dir()
    args = [
        "--config", BASE, f"--config=configs/{BASE}.yaml", "--trainer.callbacks+=callbacks/topk",
        "--trainer.callbacks+", "tinyworld/callbacks/l1_esd", "--config", "protocols/simultaneous",
        # Not file names: an inline YAML, a callback class, and values of other options.
        "--config", "{trainer: {max_steps: 2}}", "--trainer.callbacks+=ModelCheckpoint",
        "--stream.run_dir=runs/x", "--data.requests=[Van Gogh]", "--print_config",
    ]
    assert resolve_config_args(args) == [
        "--config", str(shipped / f"{BASE}.yaml"), f"--config={shipped / BASE}.yaml",
        f"--trainer.callbacks+={shipped / 'callbacks/topk.yaml'}",
        "--trainer.callbacks+", str(shipped / "tinyworld/callbacks/l1_esd.yaml"),
        "--config", str(shipped / "protocols/simultaneous.yaml"),
        "--config", "{trainer: {max_steps: 2}}", "--trainer.callbacks+=ModelCheckpoint",
        "--stream.run_dir=runs/x", "--data.requests=[Van Gogh]", "--print_config",
    ]


def test_the_command_line_prints_an_unknown_name_as_one_error_line(elsewhere, cli_error):
    line = cli_error(["unlearn", "--config", BASE, "--trainer.callbacks+=callbacks/topc"])
    assert line.startswith("error: --trainer.callbacks+=callbacks/topc: neither a file") and "callbacks/topk" in line
    assert "close names: tinyworld/pretrain" in cli_error(["pretrain", "--config", "tinyworld/pretrian"])
    assert "tinyworld/study_styles" in cli_error(["study", "--config", "study_styles"])


def test_a_shipped_study_resolves_every_config_it_names_from_any_folder(elsewhere):
    # The study YAMLs name configs by repository-relative path (configs/tinyworld/...): from a
    # folder without them, each is the shipped file, so a study runs from any folder.
    study = Study.load(resolve_config("tinyworld/study_styles"))
    for run in study.runs:
        resolved = resolve_config_args(run.args)
        files = [a.split("=", 1)[-1] for a in resolved if a.startswith("--trainer.callbacks+=")]
        files += [resolved[i + 1] for i, a in enumerate(resolved) if a == "--config"]
        assert files and all(Path(f).is_file() and Path(f).is_relative_to(shipped_configs_dir()) for f in files), run
