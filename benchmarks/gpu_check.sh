#!/usr/bin/env bash
# Every GPU figure of issue 20 in one run (under 8 minutes on one H100/H200): the SD-1.5-sized ESD
# step (fp32 / bf16 / bf16 + compile / bf16 + CUDA graphs + channels-last + fused AdamW) and the
# SD-1.5-sized evaluation (DPM-Solver++ 20 steps, CFG, fp32 / bf16 / bf16 + compile), with peak
# memory and MFU, as the Markdown tables benchmarks/RESULTS.md keeps.
#
#   bash benchmarks/gpu_check.sh prepare   # here, on the CPU machine, once: wheels the GPU image lacks -> .whl/
#   bash benchmarks/gpu_check.sh run       # there: the device tool's run, carry [".whl"], timeout_s 540
#
# `run` writes $OUT/gpu_check.md (the tables, with the card's name) and $OUT/gpu_check.log (all
# output); each benchmark has its own time cap (STEP_CAP_S, EVAL_CAP_S seconds), so a slow one
# leaves the other's figures. Sizes can be changed through the environment: EVAL_IMAGES (100; the
# table projects 1000 images from images/s), EVAL_BATCH (50), ESD_STEPS (30), BANK (4 trajectories).
# Budget: ~30 s setup + 210 s + 230 s caps = 8 minutes at most.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(diffusers==0.42.1 jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 importlib_metadata==10.2.0
        lazy-importer==0.1.0)
PYTHON=${PYTHON:-python3}  # the image's python3 holds torch
DEVICE=${DEVICE:-cuda}     # DEVICE=cpu SIZE=reduced QUICK=1: a smoke run of this script on a CPU
SIZE=${SIZE:-full}
EVAL_SETTINGS=(fp32 bf16 "bf16 + compile")
ESD_SETTINGS=(fp32 bf16 "bf16 + compile")
# CUDA graphs (compile mode reduce-overhead) for the launch-bound batch-1 step: ESD_EXTRA=1 adds it
# (another compilation, about 2 minutes: raise STEP_CAP_S and the run's timeout_s with it).
[ -n "${ESD_EXTRA:-}" ] && ESD_SETTINGS+=("bf16 + CUDA graphs + channels-last + fused")
if [ -n "${QUICK:-}" ]; then EVAL_SETTINGS=(fp32 bf16); ESD_SETTINGS=(fp32 bf16); fi

prepare() {
  local exclude; exclude="$(git rev-parse --git-common-dir)/info/exclude"
  grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
  du -sh .whl
}

run() {
  OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
  local log=$OUT/gpu_check.md full=$OUT/gpu_check.log
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONWARNINGS=ignore
  # The image has torch, lightning, transformers, safetensors, torchmetrics; the rest comes as wheels.
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "wheel install failed" | tee "$log"; return 1; }
  fi
  # The package as setuptools installs it (callbacks/, datamodules/, configs/ inside it), without an
  # install: links in this copy of the checkout, which the benchmarks put first on sys.path.
  for d in callbacks datamodules configs; do [ -e "lightning_unlearn/$d" ] || ln -s "../$d" "lightning_unlearn/$d"; done
  export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  {
    echo "# GPU check $(date -u +%Y-%m-%dT%H:%MZ)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c "import torch, diffusers, lightning; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'lightning', lightning.__version__)"
  } 2>&1 | tee "$log"
  local folder=/tmp/sd_pipeline  # built once (random SD 1.5 weights), shared by both benchmarks

  echo -e "\n## Evaluation: SD 1.5 size, DPM-Solver++ 20 steps, CFG 7.5 (benchmarks/sd_evaluation.py)\n" | tee -a "$log"
  timeout "${EVAL_CAP_S:-210}" "$PYTHON" benchmarks/sd_evaluation.py --device "$DEVICE" --size "$SIZE" --folder "$folder" \
    --images "${EVAL_IMAGES:-100}" --batch "${EVAL_BATCH:-50}" --steps "${EVAL_STEPS:-20}" \
    --settings "${EVAL_SETTINGS[@]}" 2>>"$full" | tee -a "$log"

  echo -e "\n## ESD request: SD 1.5 size, esd-x, batch 1 (benchmarks/sd_scale.py)\n" | tee -a "$log"
  timeout "${STEP_CAP_S:-230}" "$PYTHON" benchmarks/sd_scale.py --device "$DEVICE" --size "$SIZE" --folder "$folder" \
    --steps "${ESD_STEPS:-30}" --bank-trajectories "${BANK:-4}" --ddim-steps "${DDIM_STEPS:-50}" \
    --settings "${ESD_SETTINGS[@]}" 2>>"$full" | tee -a "$log"
  cat "$log" >> "$full"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: bash benchmarks/gpu_check.sh prepare|run" >&2; exit 2 ;;
esac
