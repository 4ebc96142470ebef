#!/usr/bin/env bash
# GPU serving benchmark: ONNX Runtime's CUDA (and TensorRT, where its libraries load)
# provider vs its CPU provider on the same model and inputs, and the model service's
# batching on vs off, on one NVIDIA GPU, then the real-size ingest and scorer
# on its cores. Budget: under 5 minutes, and up to 10 more for the real-size studies.
#
#     bash bench/gpu_serving.sh OUT_DIR        # writes OUT_DIR/gpu_serving.json,
#                                              # ingest_realsize.json, scoring_realsize.json
#
# Installs what it needs from the repo (scripts/bootstrap.sh picks the CUDA torch and
# onnxruntime-gpu when nvidia-smi works), then runs bench/gpu_serving.py. On a machine
# without a working NVIDIA GPU it says so and exits 0 without installing anything.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-bench/results}
mkdir -p "$OUT"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_serving: no NVIDIA GPU here (nvidia-smi missing or failing): nothing measured"
    exit 0
fi
nvidia-smi -L

VENV=${VENV:-.venv-gpu}
export VENV
if ! "$VENV/bin/python" -c "import onnxruntime" >/dev/null 2>&1 \
        || ! "$VENV/bin/python" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
    # A venv of its own: the CPU venv's onnxruntime and onnxruntime-gpu must never mix.
    bash scripts/bootstrap.sh
fi
# CUDA 12 / cuDNN 9 user-space libraries as wheels (ORT loads them with preload_dlls);
# TensorRT only if its wheel installs, else the TensorRT leg reports why it was skipped.
"$VENV/bin/python" -m pip install --quiet "nvidia-cudnn-cu12>=9,<10" "nvidia-cublas-cu12" "nvidia-cuda-runtime-cu12" \
    "nvidia-cufft-cu12" "nvidia-curand-cu12" "nvidia-cuda-nvrtc-cu12" || echo "gpu_serving: CUDA wheels not installed; relying on system CUDA"
"$VENV/bin/python" -m pip install --quiet "tensorrt-cu12>=10,<11" || echo "gpu_serving: TensorRT wheel not installed; TensorRT leg will be skipped"

export BENTOML_HOME=${BENTOML_HOME:-$PWD/.bentoml} BENTOML_DO_NOT_TRACK=True
timeout 280 "$VENV/bin/python" -m bench.gpu_serving --out "$OUT/gpu_serving.json"
# The real-size ingest and scorer (bench/realsize.py) on this machine's cores: decoding
# stays on the CPU whatever runs the model. dcm2niix must be installed.
# Four studies: up to four workers (more would idle and understate the scaling).
WORKERS=$(( $(nproc) < 4 ? $(nproc) : 4 ))
timeout 600 "$VENV/bin/python" -m bench.realsize --workers "$WORKERS" --work runs/bench-realsize \
    --ingest-out "$OUT/ingest_realsize.json" --scoring-out "$OUT/scoring_realsize.json" \
    || echo "gpu_serving: the real-size ingest did not run (see above)"
