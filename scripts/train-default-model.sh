#!/usr/bin/env bash
# Re-train the bundled default model (explain/models/) from the bootstrap set.
# Run after changing the feature schema, the bootstrap rules or the default
# model shape; commit the new files and delete the old ones. The shape
# (depth 3, 150 trees) was chosen with benchmarks/explain_bench.py --shapes.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
out=explain/models
id=$(.venv/bin/govgate model train --models "$out" --samples 60000 --seed 1 \
    --max-depth 3 --trees 150 --learning-rate 0.1 --holdout 0.2)
for f in "$out"/*.ubj; do
    [ "$(basename "$f" .ubj)" = "$id" ] || rm -f "$f" "${f%.ubj}.card.json" "${f%.ubj}.card.md"
done
echo "$id" > "$out/DEFAULT"
echo "bundled default model: $id" >&2
