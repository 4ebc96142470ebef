# One command per job. Each target creates .venv and installs what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python
export BENTOML_HOME ?= $(CURDIR)/.bentoml
export BENTOML_DO_NOT_TRACK := True
export XDG_CACHE_HOME ?= $(CURDIR)/.cache
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib

.PHONY: demo test venv bench clean

venv:
	@bash scripts/bootstrap.sh

demo: venv
	$(PY) -m radfusion.cli demo --out runs/demo

test: venv
	$(PY) -m pytest -q

# Archive scorer: decode-only, inference-only and end-to-end throughput in one run
# -> bench/results/scoring.json (pipeline_efficiency, worker_scaling).
# HTTP service: adaptive batching on vs off, ONNX Runtime vs PyTorch, in one run
# -> bench/results/serving.json (batching_speedup, ort_vs_torch, p50/p95 latency).
bench: venv
	$(PY) -m bench.scoring
	$(PY) -m bench.serving

clean:
	rm -rf runs .bentoml .cache .pytest_cache
