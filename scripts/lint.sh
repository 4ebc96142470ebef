#!/usr/bin/env bash
# The guard rails, all of them, in one run (make lint; pre-commit runs the staged part):
#   ruff check, ruff format --check, the import contracts and mypy.
# `scripts/lint.sh layout` runs only the last two (on the installed layout that
# scripts/layout.py stages). Exit status 1 when any check fails; every check runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

status=0
step() {
    echo "== $*"
    "$@" || status=1
}

case "${1:-all}" in
    all)
        step "$PY" -m ruff check --output-format concise .
        step "$PY" -m ruff format --check --output-format concise .
        step "$PY" scripts/layout.py check
        ;;
    layout)
        step "$PY" scripts/layout.py check
        ;;
    *)
        echo "usage: $0 [all|layout]" >&2
        exit 2
        ;;
esac
exit $status
