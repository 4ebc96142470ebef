#!/usr/bin/env bash
# GPU training benchmark: samples/s of the fusion model (GPU widths) in fp32 vs
# bf16-mixed on one NVIDIA GPU, with GPU utilisation sampled by nvidia-smi meanwhile.
#
#   bash bench/gpu_train.sh [OUT_DIR]      (default OUT_DIR: bench/results)
#
# Writes OUT_DIR/gpu_train.json (and gpu_util.csv, the raw samples). Sets up .venv
# with scripts/bootstrap.sh, which installs the CUDA build of torch when nvidia-smi
# works. Every stage has a time limit so the whole run ends within 5 minutes. Where no
# NVIDIA GPU exists it says so, writes a JSON marked "skipped" and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results}
mkdir -p "$OUT"
JSON="$OUT/gpu_train.json"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_train: no NVIDIA GPU (nvidia-smi missing or finds no device): nothing to measure"
    cat >"$JSON" <<JSON
{"skipped": "no NVIDIA GPU on $(hostname 2>/dev/null || echo this machine)", "samples_per_s": {}}
JSON
    exit 0
fi

START=$(date +%s)
# 1. Environment (CUDA torch). Quick when .venv is already set up.
timeout 150 bash scripts/bootstrap.sh
PY=.venv/bin/python
$PY - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_train: torch {torch.__version__} sees no CUDA device; rerun scripts/bootstrap.sh on this machine")
print("gpu_train:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY

# 2. Utilisation sampling in the background (every 200 ms) while training runs.
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 \
    >"$OUT/gpu_util.csv" &
SMI=$!
trap 'kill $SMI 2>/dev/null || true' EXIT

# 3. fp32 then bf16-mixed, same cohort, data path and model (bench/training.py --gpu).
#    Whatever time the setup left, within the 5 minutes.
LEFT=$(( 285 - ($(date +%s) - START) ))
timeout "$LEFT" $PY -m bench.training --gpu --patients 200 --epochs 3 --batch-size 16 --workers 4 \
    --work runs/bench --out "$OUT/gpu_train.json"
kill $SMI 2>/dev/null || true

# 4. Utilisation summary into the same JSON.
$PY - "$OUT" <<'PY'
import csv, json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [r for r in csv.reader(open(out / "gpu_util.csv")) if len(r) == 3]
util = [float(r[1]) for r in rows]
memory = [float(r[2]) for r in rows]
report = json.loads((out / "gpu_train.json").read_text())
report["gpu_utilization_percent"] = {
    "mean": statistics.fmean(util) if util else None,
    "p50": statistics.median(util) if util else None,
    "max": max(util) if util else None,
    "samples": len(util),
    "note": "sampled over the whole run, set-up and cache filling included",
}
report["gpu_memory_used_mib_max"] = max(memory) if memory else None
(out / "gpu_train.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps({k: report[k] for k in ("samples_per_s", "bf16_speedup", "gpu_utilization_percent")}, indent=2))
PY
echo "gpu_train: done in $(( $(date +%s) - START )) s -> $JSON"
