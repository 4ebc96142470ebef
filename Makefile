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
bench: venv
	$(PY) -m bench.scoring

clean:
	rm -rf runs .bentoml .cache .pytest_cache
