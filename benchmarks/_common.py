"""Shared pieces of the benchmarks: repository on the path, arguments, medians, Markdown tables."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

QUICK_STYLES = ["Van Gogh", "Cartoon", "Monet", "Pop Art"]
QUICK_OBJECTS = ["circle", "star", "house"]
"""The 4 x 3 corner of the tiny world that ``--quick`` runs evaluate (12 images)."""


def parser(description: str, repeats: int) -> argparse.ArgumentParser:
    """An argument parser with ``--repeats``, ``--quick`` and ``--threads``."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=repeats, help=f"repetitions per variant (default {repeats})")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one repetition; numbers mean nothing")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return p


def setup_torch(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats with 2 decimals (3 significant below 1)."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return "nan" if v != v else (f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}")
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line() -> str:
    """Where the numbers were measured (printed above every table)."""
    import platform

    import torch

    return (f"{platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"load average {os.getloadavg()[0]:.1f} at start, {time.strftime('%Y-%m-%d %H:%M')}")


def quiet_lightning() -> None:
    """Keep Lightning's per-fit banners ("GPU available", tips) out of the tables."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")


def measure_in_own_process(script: str, setting: str, child_args: list[str]) -> dict:
    """Run ``script --_measure SETTING CHILD_ARGS`` in a new process (its peak memory is its own)
    and return the JSON its ``RESULT`` line holds; also printed, so that a run cut off later keeps it."""
    cmd = [sys.executable, script, "--_measure", setting, *child_args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{setting} failed:\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    print(f"measured {setting}: {json.dumps(result)}", flush=True)
    return result
