"""``benchmarks/sd_evaluation.py --quick``: the project's evaluation at SD 1.5 shape, a row per setting with FLOPs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # builds and saves an SD-shaped pipeline and runs each setting in its own process
def test_sd_evaluation_quick_prints_a_row_per_setting_with_images_per_second_and_unet_flops():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sd_evaluation.py"), "--quick", "--threads", "1",
                           "--settings", "fp32", "bf16"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in done.stdout.splitlines()
            if line.startswith("| ") and not line.startswith(("| setting", "| ---"))]
    assert [r[0] for r in rows] == ["fp32", "bf16"]
    assert all(float(r[2]) > 0 and float(r[5]) > 0 and float(r[7]) > 0 for r in rows)  # images/s, memory, TFLOP/s
    assert "UNet FLOPs per image" in done.stdout
