"""Every benchmark's ``--quick`` smoke run: it runs with one command and prints its table.

All are marked ``slow`` (``pytest -m slow``): each is a subprocess of 10-30 s on 2 cores, and
the default suite stays under 10 minutes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_quick(script: str, *extra: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *extra, "--quick", "--threads", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def table_rows(output: str, header_start: str) -> list[list[str]]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_evaluation_benchmark_quick():
    out = run_quick("evaluation.py")
    rows = table_rows(out, "| solver | steps |")
    assert [(r[0], r[1], r[2]) for r in rows] == [("ddim", "4", "12"), ("dpm++", "3", "12")]
    assert all(float(r[4]) > 0 for r in rows)  # images per second
    assert "base evaluation reused from the cache" in out


@pytest.mark.slow
def test_callback_overhead_benchmark_quick():
    rows = table_rows(run_quick("callback_overhead.py"), "| callback |")
    assert [r[0] for r in rows] == ["plain", "L1 (anchor)", "L2 (anchor)", "top-k", "projection gradient",
                                    "projection update", "projection + top-k"]
    assert rows[0][2] == "1.00"


@pytest.mark.slow
def test_esd_bank_vs_online_benchmark_quick():
    out = run_quick("esd_bank_vs_online.py")
    assert [r[0] for r in table_rows(out, "| x_t source |")] == ["bank", "online"]
    assert "online / bank train time" in out


@pytest.mark.slow
def test_stream_benchmark_quick():
    rows = table_rows(run_quick("stream.py"), "| run | requests |")
    assert len(rows) == 1 and rows[0][1] == "2"


@pytest.mark.slow
def test_esd_bank_vs_reference_benchmark_quick():
    for mode, header, ratio in (("steps", "| x_t source | step wall", "reference / bank per step"),
                                ("stream", "| x_t source | train s", "reference / bank train time")):
        out = run_quick("esd_bank_vs_reference.py", mode)
        assert [r[0] for r in table_rows(out, header)] == ["bank", "reference"]
        assert ratio in out


@pytest.mark.slow
def test_evaluation_seeds_benchmark_quick():
    out = run_quick("evaluation_seeds.py")
    rows = table_rows(out, "| seeds_per_prompt |")
    assert [(r[0], r[1]) for r in rows] == [("1", "12"), ("3", "36")]
    # Three times the images: a narrower interval on the same base model (100% of 12 vs of 36).
    assert float(rows[1][7]) < float(rows[0][7])


@pytest.mark.slow
def test_attacks_benchmark_quick():
    out = run_quick("attacks.py")
    rows = table_rows(out, "| request | train s |")
    assert [r[0] for r in rows] == ["Van Gogh"]
    assert float(rows[0][3]) > 0 and float(rows[0][5]) > 1  # attack seconds; request time with attacks (x)


@pytest.mark.slow
def test_dit_vs_unet_step_benchmark_quick():
    out = run_quick("dit_vs_unet_step.py")
    rows = table_rows(out, "| method | backbone |")
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("ESD", "tinyworld", "epsilon"), ("ESD", "tinyworld-dit", "flow-matching"), ("ESD", "tinyworld-dit-12", "flow-matching"),
        ("CA", "tinyworld", "epsilon"), ("CA", "tinyworld-dit", "flow-matching"), ("CA", "tinyworld-dit-12", "flow-matching"),
    ]
    for name in ("ESD", "CA"):
        assert f"{name}: DiT / UNet per step = " in out and f"{name}: DiT-12 / UNet per step = " in out
