#!/usr/bin/env bash
# Install everything govgate needs on a fresh Debian machine (run as root, or
# with sudo available), then create .venv with govgate and its dev tools.
# Safe to run again: steps that are already done are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

PYTHON=${PYTHON:-python3}
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi

# System packages. python3-venv provides ensurepip for Debian's own python3;
# build-essential and python3-dev let pip build any wheel it cannot download;
# sqlite3 is the CLI for looking inside a ledger by hand; libvirt-dev and
# pkg-config let pip build libvirt-python (which brings libvirt's client library,
# including the built-in test:/// driver the demo and tests use).
# The rest is for the adapter tests against real runtimes: a libvirt daemon with
# QEMU (TCG), qemu-img for qcow2 disks, busybox-static for the test guest's
# initramfs (its kernel is fetched with apt-get download by the tests) and the
# test sandboxes' image, containerd with runc, and the .proto files of
# containerd's API that scripts/gen-containerd-stubs.sh compiles.
# Compliance reports: Pango and HarfBuzz for weasyprint (PDF output; see its docs'
# Debian instructions), DejaVu fonts for the PDF's text, and for the rendering
# tests headless Chromium (the HTML) and poppler-utils (pdftotext on the PDF).
# PostgreSQL: the server binaries (initdb, postgres; /usr/lib/postgresql/*/bin) and the
# postgres system user; the tests start servers of their own (tests/postgres_server.py).
APT_PACKAGES=(python3 python3-venv python3-dev build-essential sqlite3 ca-certificates
    libvirt-dev pkg-config
    libvirt-daemon-system libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils busybox-static
    containerd runc golang-github-containerd-containerd-dev golang-github-gogo-protobuf-dev
    libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core chromium poppler-utils
    postgresql)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        log "installing Debian packages: ${missing[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        log "not a Debian system; make sure these are installed: ${missing[*]}"
    fi
fi

# The libvirt/QEMU tests download the Debian cloud kernel for their guest.
if command -v apt-cache >/dev/null 2>&1 && \
        ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
    log "refreshing the Debian package lists (the test guest's kernel comes from them)"
    $SUDO apt-get update -qq
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    log "govgate needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1)"
    exit 1
fi

stamp=.venv/.govgate-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "virtual environment .venv is up to date"
    exit 0
fi
if [ ! -x .venv/bin/python ]; then
    log "creating virtual environment .venv"
    "$PYTHON" -m venv .venv
fi
log "installing govgate and its development tools into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# constraints.txt pins every package to the versions the suite last passed with.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
echo "$want" > "$stamp"
log "done: $(.venv/bin/govgate --help >/dev/null && echo 'govgate is installed in .venv/bin')"
