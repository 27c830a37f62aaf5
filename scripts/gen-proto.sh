#!/usr/bin/env bash
# Generate govgate's Python gRPC stubs (gateway/_proto/) from proto/govgate/v1/*.proto.
# Deterministic for a given grpcio-tools (pinned in constraints.txt);
# tests/gateway/test_proto_stubs.py fails when the committed stubs are stale.
#
# Usage: scripts/gen-proto.sh [OUT_ROOT]   (default: the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
out_root=${1:-$PWD}
python=${PYTHON:-.venv/bin/python}
out="$out_root/gateway/_proto"
rm -rf "$out"
mkdir -p "$out"
"$python" -m grpc_tools.protoc -I proto \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    $(cd proto && find govgate -name '*.proto' | LC_ALL=C sort | sed 's#^#proto/#')
# The stubs import each other as top-level "govgate.v1"; they live in our package.
# (The .proto file names inside the descriptors stay "govgate/v1/...", as clients see them.)
"$python" - "$out" <<'PY'
import pathlib, sys
root = pathlib.Path(sys.argv[1])
for f in sorted(root.rglob("*.py*")):
    text = f.read_text()
    fixed = text.replace("from govgate.v1 import", "from gateway._proto.govgate.v1 import")
    if fixed != text:
        f.write_text(fixed)
for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
    (d / "__init__.py").touch()
PY
echo "generated $(find "$out" -name '*.py' | wc -l) files in $out" >&2
