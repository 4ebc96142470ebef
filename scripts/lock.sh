#!/usr/bin/env bash
# Rewrite requirements/lock.txt from the bootstrapped environment: the exact version of
# every package the extras installed (cpu, train, serve, dev, cluster, tracking), which
# scripts/bootstrap.sh then installs as constraints, so a fresh clone gets the versions
# the figures in docs/ and the tests were measured with. Upgrading is a deliberate commit:
# `RADFUSION_UNLOCKED=1 make venv` (resolves today's versions), re-measure, `make lock`.
# torch is left out: bootstrap pins it itself, as the CPU or the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
LOCK=${LOCK:-requirements/lock.txt}  # requirements/federate-lock.txt for .venv-federate
{
    echo "# Constraints for scripts/bootstrap.sh, written by scripts/lock.sh (make lock): do not edit."
    "$VENV/bin/python" -m pip freeze --exclude-editable | grep -v -E '^(torch==|-e |#)' | LC_ALL=C sort -f
} > "$LOCK"
echo "lock: $(grep -c '==' "$LOCK") packages -> $LOCK"
