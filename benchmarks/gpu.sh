#!/usr/bin/env bash
# Serving on one NVIDIA GPU, measured rather than assumed. One script, <= 8 minutes on a fresh machine
# (16 cores, one large GPU, python3 + pip, package registries only):
#   1. a venv with the project (`pip install -e '.[train]'` + onnxruntime-gpu's CUDA/cuDNN wheels);
#   2. a model: `manylabel train` on the voc5 dev set when ../shared/data (or shared/data) has it,
#      else on the bundled sample (training/sample);
#   3. `benchmarks/serve.py --gpu`: manylabel served with MANYLABEL_PROVIDER=cuda in fp32, closed-loop
#      load at concurrency 1 8 32 128 256 with 1 and 16 images per request; images/s, p50/p99, the
#      batch sizes formed (/metrics manylabel_batch_size), GPU utilisation and memory (nvidia-smi
#      -lms 500 in the background); then the in-process CUDA reference (decode in a process pool,
#      batched runs) and the inference-only ceiling.
# Results: gpu.json, gpu.md and nvidia-smi.csv under $OUT, else benchmarks/results/gpu/.
# It fails (exit 1) when the server is not on CUDAExecutionProvider (onnxruntime-gpu falls back to
# the CPU silently when CUDA or cuDNN do not load: GET /model's provider.active tells).
#
#   GPU_DRY_RUN=1 benchmarks/gpu.sh     # on a CPU: no CUDA assertion, tiny durations, reuses .venv
#
# Knobs (environment): GPU_VENV (use this venv, skip the install), GPU_MODEL (serve this model from
# $BENTOML_HOME, skip training), GPU_SECONDS (per cell), GPU_CONCURRENCY, GPU_PER_REQUEST,
# GPU_SIZES (longest image sides), GPU_TRAIN_MINUTES.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
DRY=${GPU_DRY_RUN:-0}
OUT_DIR=${OUT:-$REPO/benchmarks/results/gpu}
WORK=$(mktemp -d /tmp/manylabel-gpu.XXXXXX)
START=$(date +%s)
say() { echo "[gpu.sh +$(($(date +%s) - START))s] $*" >&2; }
trap 'say "work folder: $WORK"' EXIT

if [ "$DRY" = 1 ]; then
    SECONDS_PER_CELL=${GPU_SECONDS:-1}
    CONCURRENCY=${GPU_CONCURRENCY:-"1 8"}
    TRAIN_MINUTES=${GPU_TRAIN_MINUTES:-0.2}
else
    SECONDS_PER_CELL=${GPU_SECONDS:-8}
    CONCURRENCY=${GPU_CONCURRENCY:-"1 8 32 128 256"}
    TRAIN_MINUTES=${GPU_TRAIN_MINUTES:-0.5}
fi
PER_REQUEST=${GPU_PER_REQUEST:-"1 16"}
SIZES=${GPU_SIZES:-256}

# --- 1. the environment ------------------------------------------------------------------------------
if [ -n "${GPU_VENV:-}" ]; then
    PY=$GPU_VENV/bin/python
elif [ "$DRY" = 1 ] && [ -x "$REPO/.venv/bin/python" ]; then
    PY=$REPO/.venv/bin/python
else
    say "installing the project into $WORK/venv"
    python3 -m venv "$WORK/venv"
    PY=$WORK/venv/bin/python
    # uv downloads in parallel (torch + the CUDA wheels are GBs); plain pip when uv cannot be had.
    if "$PY" -m pip install -q uv; then
        "$WORK/venv/bin/uv" pip install -q --python "$PY" -e "$REPO[train]" "onnxruntime-gpu[cuda,cudnn]"
    else
        "$PY" -m pip install -q -e "$REPO[train]" "onnxruntime-gpu[cuda,cudnn]"
    fi
fi
# onnxruntime-gpu finds CUDA and cuDNN through the loader: the pip wheels' lib folders (nvidia/*/lib).
NVIDIA_LIBS=$("$PY" - <<'EOF'
import glob, os, site
dirs = {os.path.dirname(p) for sp in site.getsitepackages() for p in glob.glob(f"{sp}/nvidia/*/lib/*.so*")}
print(":".join(sorted(dirs)))
EOF
)
export LD_LIBRARY_PATH="$NVIDIA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export BENTOML_DO_NOT_TRACK=true
say "python: $("$PY" -c 'import sys, onnxruntime as o; print(sys.version.split()[0], "onnxruntime", o.__version__, o.get_available_providers())')"
if command -v nvidia-smi >/dev/null; then nvidia-smi -L >&2; else say "nvidia-smi: not available"; fi

# --- 2. the model ------------------------------------------------------------------------------------
if [ "$DRY" != 1 ]; then  # a dry run trains on the 55-image sample: quick on 2 cores
    for candidate in "$REPO/../shared/data/voc5_natural_dev" "$REPO/shared/data/voc5_natural_dev"; do
        if [ -f "$candidate/labels.csv" ]; then DATA=$candidate; break; fi
    done
fi
IMAGES=${DATA:-$REPO/training/sample}/images
if [ -n "${GPU_MODEL:-}" ]; then
    MODEL=$GPU_MODEL
else
    export BENTOML_HOME=$WORK/bentoml
    MODEL=gpu-bench
    say "training $MODEL on $IMAGES for $TRAIN_MINUTES min"
    "$PY" -m service train --images "$IMAGES" --labels "$(dirname "$IMAGES")/labels.csv" --name "$MODEL" \
        --minutes "$TRAIN_MINUTES" --cache-dir "$WORK/cache" >"$WORK/train.log" 2>&1 ||
        { tail -40 "$WORK/train.log" >&2; exit 1; }
    tail -3 "$WORK/train.log" >&2
fi

# --- 3. serve and measure ----------------------------------------------------------------------------
say "serving $MODEL on CUDA (dry run: $DRY), results to $OUT_DIR"
# shellcheck disable=SC2086  # word splitting of the number lists is intended
GPU_DRY_RUN=$DRY "$PY" "$HERE/serve.py" --gpu --model "$MODEL" --images "$IMAGES" --out "$OUT_DIR" \
    --sizes $SIZES --concurrency $CONCURRENCY --per-request $PER_REQUEST --seconds "$SECONDS_PER_CELL"
say "done"
