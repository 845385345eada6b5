"""``benchmarks/sd_scale.py --quick``: the three settings serve a request and the table says so."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # bf16 runs ~20x slower than fp32 on a CPU without bf16 instructions
def test_sd_scale_quick_prints_one_row_per_setting_with_8bit_state_where_asked():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sd_scale.py"), "--quick", "--threads", "1",
                           "--settings", "fp32", "bf16", "bf16 + AdamW8bit + ckpt"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in done.stdout.splitlines()
            if line.startswith("| ") and not line.startswith(("| setting", "| ---"))]
    assert [r[0] for r in rows] == ["fp32", "bf16", "bf16 + AdamW8bit + ckpt"]
    assert all(float(r[1]) > 0 and float(r[5]) > 0 for r in rows)
    assert rows[0][9] == "float32" and "uint8" in rows[2][9]  # optimizer state
    assert float(rows[0][10]) > 0  # achieved TFLOP/s from the counted step FLOPs


@pytest.mark.slow  # two model builds and requests in subprocesses (about a minute on a quiet 2-core CPU)
def test_sd_scale_quick_compares_lora_with_the_full_kv_set():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sd_scale.py"), "--quick", "--threads", "1",
                           "--settings", "fp32", "--trainable", "kv-xattn", "lora"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in done.stdout.splitlines()
            if line.startswith("| ") and not line.startswith(("| setting", "| ---"))]
    assert [r[0] for r in rows] == ["fp32, kv-xattn", "fp32, lora r4"]
    # The trained state (parameters + gradients + Adam's two moments) is exact: LoRA's is far smaller.
    assert 0 < float(rows[1][12]) < float(rows[0][12]) / 2
