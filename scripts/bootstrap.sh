#!/usr/bin/env bash
# Create .venv (if missing) and install radfusion with everything the demo and the
# tests need. Torch first and pinned: a bare `torch` pulls a multi-GB CUDA build.
# On a machine with a working NVIDIA GPU take the CUDA build of torch and
# onnxruntime-gpu instead of the CPU ones. Every other package is installed at the
# version in requirements/lock.txt (scripts/lock.sh): what the figures in docs/ were
# measured with; RADFUSION_UNLOCKED=1 resolves today's versions instead.
#
# `bootstrap.sh federate` makes .venv-federate instead: radfusion's training with
# Flower (`radfusion federate`), whose pins (protobuf < 7, older Starlette and Uvicorn)
# BentoML's stack cannot share; locked by requirements/federate-lock.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if [[ "${1:-}" == federate ]]; then
    VENV=${FEDERATE_VENV:-.venv-federate}
    LOCK=requirements/federate-lock.txt
    EXTRAS=train,federate
else
    VENV=${VENV:-.venv}
    LOCK=requirements/lock.txt
    EXTRAS=serve,dev,cluster,tracking,train
fi
STAMP="$VENV/.radfusion-installed"

if [[ -f "$STAMP" && "$STAMP" -nt pyproject.toml && "$STAMP" -nt "$LOCK" ]]; then
    exit 0
fi
CONSTRAINTS=(-c "$LOCK")
[[ "${RADFUSION_UNLOCKED:-0}" == 1 ]] && CONSTRAINTS=()

[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "bootstrap: NVIDIA GPU found: CUDA torch + onnxruntime-gpu"
    # --isolated ignores local wheel folders that hold only the CPU build.
    $PIP install --isolated --quiet "torch==${TORCH_VERSION}"
    ORT_EXTRA=gpu,
else
    echo "bootstrap: no GPU: CPU torch + onnxruntime"
    $PIP install --quiet "torch==${TORCH_VERSION}"
    ORT_EXTRA=cpu,
fi
# The federation's environment trains only: no ONNX Runtime.
[[ "${1:-}" == federate ]] && ORT_EXTRA=

# ${a[@]+...}: an empty array under set -u on bash < 4.4 (macOS).
$PIP install --quiet ${CONSTRAINTS[@]+"${CONSTRAINTS[@]}"} -e ".[${ORT_EXTRA}${EXTRAS}]"
touch "$STAMP"
echo "bootstrap: $VENV ready"
