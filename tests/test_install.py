"""The package installs under one namespace, editable (the checkout) and as a wheel.

``callbacks/`` and ``datamodules/`` sit at the top of the repository (the design card) but install
as ``lightning_unlearn.callbacks`` and ``lightning_unlearn.datamodules``: nothing named plain
``callbacks`` or ``datamodules`` may land in site-packages, where it would collide with other
projects' folders of the same name.
"""

from __future__ import annotations

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


def run_python(python: str | Path, code: str, cwd: Path) -> str:
    result = subprocess.run([str(python), "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_editable_install_maps_the_top_level_folders_into_the_package(tmp_path):
    # From a folder outside the checkout, so nothing resolves through the current directory.
    files = run_python(sys.executable, PROBE, cwd=tmp_path)
    assert str(REPO / "callbacks" / "anchor.py") in files and str(REPO / "datamodules" / "concept_stream.py") in files
    # The bare names are not packages of the install: an old class path fails to import.
    result = subprocess.run([sys.executable, "-c", "import callbacks"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0 and "No module named 'callbacks'" in result.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the build backend (setuptools) is already installed; nothing downloads.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    (path,) = out.glob("lightning_unlearn-*.whl")
    return path


def test_the_wheel_holds_no_top_level_callbacks_or_datamodules(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert not tops & {"callbacks", "datamodules", "tests", "benchmarks", "configs"}, tops
    assert "lightning_unlearn/callbacks/anchor.py" in names and "lightning_unlearn/datamodules/concept_stream.py" in names
    assert any(n.startswith("lightning_unlearn/weights/") and n.endswith(".safetensors") for n in names)


def test_a_wheel_installed_into_a_clean_venv_serves_the_configs_class_paths(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = Path(run_python(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])", tmp_path).strip())
    # The dependencies (torch, lightning, diffusers...) come from this environment's site-packages,
    # added as a plain path: its .pth files (the editable install of the checkout) are not run.
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    installed = {p.name for p in purelib.iterdir()}
    assert "lightning_unlearn" in installed and not installed & {"callbacks", "datamodules"}, sorted(installed)
    files = run_python(python, PROBE, cwd=tmp_path)
    assert str(purelib / "lightning_unlearn" / "callbacks" / "anchor.py") in files
    # The shipped configs' class paths resolve against the installed package (parsed, not run).
    config = REPO / "configs" / "tinyworld" / "esd_styles_sequential.yaml"
    overlay = REPO / "configs" / "callbacks" / "topk.yaml"
    printed = run_python(python, (
        "import sys; from lightning_unlearn.cli import main; "
        f"main(['unlearn', '--config', {str(config)!r}, '--trainer.callbacks+={overlay}', '--print_config'])"
    ), cwd=tmp_path)
    assert "lightning_unlearn.callbacks.selective_finetuning.SelectiveFineTuning" in printed
