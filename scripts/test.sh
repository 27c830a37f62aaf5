#!/usr/bin/env bash
# Set everything up, then run every check CI runs: lint, format, types, tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k merkle).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "ruff check"
.venv/bin/ruff check .
step "ruff format --check"
.venv/bin/ruff format --check .
step "mypy (strict, on the packages)"
.venv/bin/mypy
step "pytest"
# Exit status 5 (no tests collected) is a failure too: a suite that ran nothing proves nothing.
.venv/bin/pytest "$@"
