# One command per job. Each target creates .venv and installs what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python
export BENTOML_HOME ?= $(CURDIR)/.bentoml
export BENTOML_DO_NOT_TRACK := True
export XDG_CACHE_HOME ?= $(CURDIR)/.cache
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib

.PHONY: demo test test-fast lint bento venv federate-venv lock bench fuzz clean

venv:
	@bash scripts/bootstrap.sh

# Flower's own environment for `radfusion federate` (its pins clash with BentoML's).
federate-venv:
	@bash scripts/bootstrap.sh federate

# requirements/lock.txt from the current environment (after a deliberate upgrade).
lock: venv federate-venv
	bash scripts/lock.sh
	VENV=.venv-federate LOCK=requirements/federate-lock.txt bash scripts/lock.sh

demo: venv
	$(PY) -m radfusion.cli demo --out runs/demo

# The full suite (servers, training, the bento build included): what CI runs.
test: venv federate-venv
	$(PY) -m pytest -q --durations=20  # the slowest tests, to keep the suite within its 30 minutes

# Everything not marked slow: the unit tests, for the edit-test loop.
test-fast: venv
	$(PY) -m pytest -q -m "not slow"

# ruff check, ruff format --check, the import contracts and mypy (scripts/lint.sh).
lint: venv
	PY=$(PY) bash scripts/lint.sh

# A bento of the HTTP service from the project's wheel (bentofile.yaml), offline.
bento: venv
	$(PY) scripts/layout.py wheel
	$(VENV)/bin/bentoml build -f bentofile.yaml .

# Archive scorer: decode-only, inference-only and end-to-end throughput in one run
# -> bench/results/scoring.json (pipeline_efficiency, worker_scaling).
# HTTP service: batching on vs off, ONNX Runtime vs PyTorch, in one run
# -> bench/results/serving.json (batching_speedup, ort_vs_torch, p50/p95 latency).
# ONNX Runtime's configurations (exported graph, threads, spinning, optimisation level,
# OpenVINO where installed) each against PyTorch eager -> bench/results/runtimes.json.
# DICOM ingest: radfusion's series loader vs MONAI LoadImage + transforms, training
# DataLoader with vs without its image cache -> bench/results/ingest.json
# (loader_vs_monai, cached_loader_speedup, cached_epoch_speedup); then at the size of real
# studies (512 x 512 x 300, bench/realsize.py; needs dcm2niix): vs_dcm2niix,
# vs_decode_only_j2k, vs_decode_only_jpegls, and the scorer's real_size_pipeline_efficiency,
# real_size_worker_scaling and peak_rss_per_worker_vs_decoded -> scoring.json.
# Training: tuned data path vs decoding DICOM every step, and the time the model waits
# for data -> bench/results/training.json (train_speedup, data_wait_fraction).
# On a GPU machine: bash bench/gpu_train.sh (fp32 vs bf16-mixed, GPU utilisation).
# Real bundled cohorts (scikit-survival, lifelines): radfusion's configuration and each
# classical baseline on the same 5 folds, repeated 5 times -> bench/results/realdata.json
# (deep_vs_best_classical, cv_seconds_ratio).
# Federated training (Flower on loopback, 3 synthetic hospitals): federated vs centralised
# vs each site alone on every site's held-out patients, DP off and on
# -> bench/results/federated.json (federated_vs_central, federated_vs_local_mean, dp_epsilon).
# Evidence over 5 independent synthetic cohort and training seeds, checked against the
# planted truth -> bench/results/evidence.json (treatment_accuracy_min, ece_max, ...).
bench: venv federate-venv
	$(PY) -m bench.realdata
	$(PY) -m bench.evidence
	$(PY) -m bench.scoring
	$(PY) -m bench.serving
	$(PY) -m bench.runtimes
	$(PY) -m bench.training
	$(PY) -m bench.ingest
	$(PY) -m bench.federated

# The fuzz tests' seeded corpus of hostile and odd studies (tests/support/mutations.py),
# its random mutations x8, through the scorer (and its resume), the HTTP service and the
# listener -> bench/results/fuzz.json (counts per path, every broken promise, peak
# memory, log leaks); exits 1 when a promise is broken.
fuzz: venv
	$(PY) -m bench.fuzz

clean:
	rm -rf runs .bentoml .cache .pytest_cache dist
