#!/usr/bin/env bash
# Set everything up, then run govgate's main job on embedded defaults
# (SQLite ledger in ./demo-data). Extra arguments go to `govgate demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/govgate demo "$@"
