"""The package installs under one namespace, editable (the checkout) and as a wheel.

``callbacks/`` and ``datamodules/`` sit at the top of the repository (the design card) but install
as ``lightning_unlearn.callbacks`` and ``lightning_unlearn.datamodules``: nothing named plain
``callbacks`` or ``datamodules`` may land in site-packages, where it would collide with other
projects' folders of the same name. ``configs/`` ships as ``lightning_unlearn.configs``: both
installs run the ``lightning-unlearn`` console script from any folder and find a config by name.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = (
    "import json, lightning_unlearn.callbacks.anchor as a, lightning_unlearn.datamodules.concept_stream as d; "
    "print(json.dumps([a.__file__, d.__file__]))"
)


# The main job by names only: a base config, a callback overlay and a protocol overlay.
BY_NAME = ["unlearn", "--config", "tinyworld/esd_styles_sequential", "--trainer.callbacks+=callbacks/topk",
           "--config", "protocols/simultaneous", "--print_config"]
RESOLVE = "from lightning_unlearn.config_names import resolve_config as r; print(r('tinyworld/esd_styles_sequential'))"
# An absolute path of a build or training machine (a bare "/root/..." in prose names no file).
MACHINE_PATH = re.compile(rb"(?:/work|/root|/home|/tmp)/[A-Za-z0-9_.-]*[A-Za-z0-9_]")


def run_python(python: str | Path, code: str, cwd: Path) -> str:
    return run([str(python), "-c", code], cwd)


def run(command: list[str | Path], cwd: Path) -> str:
    # Offline like the command line itself; and no checkout on the path: only the install counts.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def assert_the_by_name_job_parsed(printed: str) -> None:
    """The --print_config of BY_NAME: the base's stream, the overlay's callback and protocol."""
    assert "lightning_unlearn.callbacks.selective_finetuning.SelectiveFineTuning" in printed
    assert "lightning_unlearn.callbacks.drift.DriftRecorder" in printed  # the base's own callback, kept
    assert re.search(r"^  protocol: simultaneous$", printed, re.M), printed


def test_the_editable_install_maps_the_top_level_folders_into_the_package(tmp_path):
    # From a folder outside the checkout, so nothing resolves through the current directory.
    files = run_python(sys.executable, PROBE, cwd=tmp_path)
    assert str(REPO / "callbacks" / "anchor.py") in files and str(REPO / "datamodules" / "concept_stream.py") in files
    # The bare names are not packages of the install: an old class path fails to import.
    result = subprocess.run([sys.executable, "-c", "import callbacks"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0 and "No module named 'callbacks'" in result.stderr


def test_the_editable_install_runs_the_job_by_config_names_from_any_folder(tmp_path):
    # An editable install made before the console script and the configs mapping lacks both:
    # pip install -e . --no-deps --no-build-isolation brings them.
    assert (Path(sys.executable).parent / "lightning-unlearn").is_file(), "reinstall: pip install -e ."
    resolved = run_python(sys.executable, RESOLVE, tmp_path).strip()
    assert resolved == str(REPO / "configs/tinyworld/esd_styles_sequential.yaml")
    assert_the_by_name_job_parsed(run([sys.executable, "-m", "lightning_unlearn", *BY_NAME], tmp_path))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the build backend (setuptools) is already installed; nothing downloads.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    (path,) = out.glob("lightning_unlearn-*.whl")
    return path


@pytest.fixture(scope="module")
def clean_venv(wheel, tmp_path_factory) -> tuple[Path, Path]:
    """A fresh venv with the wheel installed (not editable): (its bin folder, its purelib)."""
    env_dir = tmp_path_factory.mktemp("clean") / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = Path(run_python(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])", env_dir).strip())
    # The dependencies (torch, lightning, diffusers...) come from this environment's site-packages,
    # added as a plain path: its .pth files (the editable install of the checkout) are not run.
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return env_dir / "bin", purelib


def test_the_wheel_holds_no_top_level_callbacks_or_datamodules(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert not tops & {"callbacks", "datamodules", "tests", "benchmarks", "configs"}, tops
    assert "lightning_unlearn/callbacks/anchor.py" in names and "lightning_unlearn/datamodules/concept_stream.py" in names
    assert any(n.startswith("lightning_unlearn/weights/") and n.endswith(".safetensors") for n in names)
    # Every config of the checkout ships, the nested overlay folders too.
    shipped = {n.removeprefix("lightning_unlearn/") for n in names if n.startswith("lightning_unlearn/configs/")}
    assert {p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml")} <= shipped


def test_the_wheels_metadata_has_the_spdx_licence_and_the_console_script(wheel):
    archive = zipfile.ZipFile(wheel)
    info = {n.split("/", 1)[1]: n for n in archive.namelist() if ".dist-info/" in n}
    metadata = archive.read(info["METADATA"]).decode()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    assert not re.search(r"^License: ", metadata, re.M), "the legacy free-text licence field is back"
    assert "Apache License" in archive.read(info["licenses/LICENSE"]).decode()
    assert "lightning-unlearn = lightning_unlearn.cli:main" in archive.read(info["entry_points.txt"]).decode()


def test_the_wheel_ships_no_machine_paths(wheel):
    # The build machine's or a trainer's folders in a shipped file (code, configs, weights' JSON,
    # the README in METADATA) mean nothing on a user's machine, and leak the builder's layout.
    archive = zipfile.ZipFile(wheel)
    found = {name: sorted({m.decode() for m in MACHINE_PATH.findall(archive.read(name))})
             for name in archive.namelist() if not name.endswith(".safetensors")}
    assert not {name: paths for name, paths in found.items() if paths}


def test_a_wheel_installed_into_a_clean_venv_serves_the_configs_class_paths(clean_venv, tmp_path):
    bin_dir, purelib = clean_venv
    installed = {p.name for p in purelib.iterdir()}
    assert "lightning_unlearn" in installed, sorted(installed)
    assert not installed & {"callbacks", "datamodules", "configs"}, sorted(installed)
    files = run_python(bin_dir / "python", PROBE, cwd=tmp_path)
    assert str(purelib / "lightning_unlearn" / "callbacks" / "anchor.py") in files
    # The packaged config, not the checkout's: tmp_path has no configs/ and the checkout is not on the path.
    resolved = run_python(bin_dir / "python", RESOLVE, tmp_path).strip()
    assert resolved == str(purelib / "lightning_unlearn/configs/tinyworld/esd_styles_sequential.yaml")


def test_the_console_script_runs_the_job_by_config_names_from_any_folder(clean_venv, tmp_path):
    bin_dir, _ = clean_venv
    script = bin_dir / "lightning-unlearn"
    assert script.is_file() and os.access(script, os.X_OK)
    # The shipped configs' class paths resolve against the installed package (parsed, not run).
    assert_the_by_name_job_parsed(run([script, *BY_NAME], tmp_path))


def test_the_module_and_the_ddp_relaunch_form_start_the_command_line(clean_venv, tmp_path):
    bin_dir, _ = clean_venv
    python = bin_dir / "python"
    assert "usage: python -m lightning_unlearn {" in run([python, "-m", "lightning_unlearn", "--help"], tmp_path)
    # Lightning's DDP launcher re-runs a plain script as [sys.executable, abspath(sys.argv[0]), *argv]:
    # the console script's wrapper must run that way too.
    assert "usage: lightning-unlearn {pretrain," in run([python, bin_dir / "lightning-unlearn", "--help"], tmp_path)
