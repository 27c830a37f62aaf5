#!/usr/bin/env bash
# Generate the Python gRPC stubs for containerd's API (adapters/kata/_containerd/)
# from the .proto files Debian ships in golang-github-containerd-containerd-dev
# (and gogo.proto from golang-github-gogo-protobuf-dev). Deterministic: the same
# packages and grpcio-tools give the same files; tests/adapters/test_kata_stubs.py
# fails when the committed stubs differ from a fresh generation.
#
# Usage: scripts/gen-containerd-stubs.sh [OUT_ROOT]   (default: the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
out_root=${1:-$PWD}
src=/usr/share/gocode/src/github.com/containerd/containerd/api
gogo=/usr/share/gocode/src/github.com/gogo/protobuf/gogoproto/gogo.proto
python=${PYTHON:-.venv/bin/python}
[ -d "$src" ] || { echo "missing $src: apt-get install golang-github-containerd-containerd-dev" >&2; exit 1; }
[ -f "$gogo" ] || { echo "missing $gogo: apt-get install golang-github-gogo-protobuf-dev" >&2; exit 1; }

pkg=adapters/kata/_containerd
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# Python cannot import a package named "github.com", so the protos move under our
# package and their imports are rewritten to match.
services="containers content events images snapshots tasks version"
mkdir -p "$stage/$pkg/gogoproto"
cp "$gogo" "$stage/$pkg/gogoproto/"
for s in $services; do
    mkdir -p "$stage/$pkg/services/$s/v1"
    cp "$src/services/$s/v1/"*.proto "$stage/$pkg/services/$s/v1/"
done
mkdir -p "$stage/$pkg/protobuf/plugin"
cp "$src/../protobuf/plugin/fieldpath.proto" "$stage/$pkg/protobuf/plugin/"
(cd "$src" && find types events -name '*.proto') | while read -r f; do
    mkdir -p "$stage/$pkg/$(dirname "$f")"
    cp "$src/$f" "$stage/$pkg/$f"
done
find "$stage" -name '*.proto' -exec sed -i \
    -e "s#\"github.com/containerd/containerd/api/#\"$pkg/#" \
    -e "s#\"github.com/containerd/containerd/protobuf/#\"$pkg/protobuf/#" \
    -e "s#\"gogoproto/gogo.proto\"#\"$pkg/gogoproto/gogo.proto\"#" \
    -e "s#\"github.com/gogo/protobuf/gogoproto/gogo.proto\"#\"$pkg/gogoproto/gogo.proto\"#" {} +

include=$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
rm -rf "${out_root:?}/$pkg"
mkdir -p "$out_root/$pkg"
(cd "$stage" && find "$pkg" -name '*.proto' | LC_ALL=C sort) | while read -r f; do
    "$python" -m grpc_tools.protoc -I "$stage" -I "$include" \
        --python_out="$out_root" --grpc_python_out="$out_root" "$stage/$f" 2>&1 |
        { grep -v 'is unused\.$' || true; } >&2
done
# Only the services need gRPC stubs (protoc writes one for every file), and every
# directory is a package.
"$python" - "$out_root/$pkg" <<'PY'
import pathlib, sys
root = pathlib.Path(sys.argv[1])
for stub in root.rglob("*_pb2_grpc.py"):
    if "Stub" not in stub.read_text():
        stub.unlink()
for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
    (d / "__init__.py").touch()
PY
echo "generated $(find "$out_root/$pkg" -name '*.py' | wc -l) files in $out_root/$pkg" >&2
