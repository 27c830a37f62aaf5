"""A tiny real guest for the libvirt + QEMU tests, built offline from Debian packages.

* kernel: the Debian cloud kernel, from ``apt-get download linux-image-<ver>-cloud-amd64``
  (the package ``linux-image-cloud-amd64`` depends on);
* initramfs: ``busybox-static`` plus the kernel's virtio, ACPI button and evdev modules,
  and an ``/init`` that loads them, says ``GOVGATE-GUEST-READY`` on the serial console,
  and powers off when the ACPI power button is pressed (what libvirt's shutdown does);
* disk: a small qcow2 image, so that libvirt can take internal snapshots.

Everything is cached under one directory and rebuilt only when missing.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["Guest", "build_guest", "load_order"]

MODULES = (  # loaded in dependency order, read from each module (kernels change it)
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/virtio/virtio_balloon.ko",
    "drivers/acpi/button.ko",
    "drivers/input/evdev.ko",
)

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /lib/modules/*.ko; do
    insmod "$m" 2>/dev/ttyS0 || echo "GOVGATE-GUEST-INSMOD-FAILED $m" > /dev/ttyS0
done
sleep 0.2
button=""
for d in /sys/class/input/event*; do
    [ "$(cat "$d/device/name" 2>/dev/null)" = "Power Button" ] && button=/dev/input/${d##*/}
done
echo "GOVGATE-GUEST-READY button=${button:-none}" > /dev/ttyS0
# Bring hot-plugged vCPUs online, as udev would.
( while true; do
    for c in /sys/devices/system/cpu/cpu*/online; do
        [ -f "$c" ] && [ "$(cat "$c")" = 0 ] && echo 1 > "$c"
    done
    sleep 0.5
done ) &
if [ -n "$button" ]; then
    dd if="$button" of=/dev/null bs=24 count=1 2>/dev/null
    echo "GOVGATE-GUEST-POWEROFF" > /dev/ttyS0
    poweroff -f
fi
while true; do sleep 3600; done
"""


class Guest:
    def __init__(self, kernel: Path, initrd: Path, root: Path) -> None:
        self.kernel = kernel
        self.initrd = initrd
        self.root = root

    def new_disk(self, name: str) -> Path:
        disk = self.root / f"{name}.qcow2"
        disk.unlink(missing_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
        return disk

    def domain_xml(self, name: str, disk: Path, serial_log: Path) -> str:
        return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>512</memory>
  <currentMemory unit='MiB'>384</currentMemory>
  <vcpu placement='static' current='1'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{self.kernel}</kernel>
    <initrd>{self.initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <metadata><govgate:labels xmlns:govgate='https://govgate.dev/xmlns/labels/1'>
    <label key='environment'>test</label></govgate:labels></metadata>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='{serial_log}'/><target port='0'/></serial>
    <memballoon model='virtio'><stats period='1'/></memballoon>
  </devices>
</domain>"""


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A ``newc`` cpio archive of (path, mode, data); directories have empty data."""
    out = io.BytesIO()

    def header(name: str, mode: int, size: int, ino: int) -> None:
        fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name) + 1, 0]
        out.write(b"070701" + b"".join(f"{f:08X}".encode() for f in fields))
        out.write(name.encode() + b"\0")
        out.write(b"\0" * (-out.tell() % 4))

    for ino, (name, mode, data) in enumerate(entries, 1):
        header(name, mode, len(data), ino)
        out.write(data)
        out.write(b"\0" * (-out.tell() % 4))
    header("TRAILER!!!", 0, 0, 0)
    out.write(b"\0" * (-out.tell() % 512))
    return out.getvalue()


def _depends(module: bytes) -> list[str]:
    """The modules a kernel module needs, from its ``.modinfo`` (``depends=a,b``)."""
    for field in module.split(b"\0"):
        if field.startswith(b"depends="):
            return [name.replace("-", "_") for name in field[8:].decode().split(",") if name]
    return []


def load_order(modules: dict[str, bytes]) -> list[str]:
    """``modules`` (name: contents) ordered so that each comes after those it needs; raises
    if one needs a module that is not among them (the guest could not load it)."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise ValueError(f"kernel modules depend on each other in a cycle: {path}")
        if name not in modules:
            raise ValueError(f"kernel module {path[-1]} needs {name}, which the guest lacks")
        for dep in _depends(modules[name]):
            visit(dep, (*path, name))
        order.append(name)

    for name in modules:
        visit(name, ())
    return order


def build_guest(root: Path) -> Guest:
    """Fetch and build the guest's parts in ``root`` (a cache); raises if a tool is missing."""
    root.mkdir(parents=True, exist_ok=True)
    kernel, initrd = root / "vmlinuz", root / "initrd.gz"
    if not kernel.exists() or not initrd.exists():
        pkg_dir = root / "pkg"
        shutil.rmtree(pkg_dir, ignore_errors=True)
        pkg_dir.mkdir()
        deps = subprocess.run(
            ["apt-cache", "depends", "linux-image-cloud-amd64"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        name = next(
            line.split()[-1] for line in deps.splitlines() if "Depends: linux-image-" in line
        )
        subprocess.run(["apt-get", "download", "-qq", name], cwd=pkg_dir, check=True)
        deb = next(pkg_dir.glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(pkg_dir / "x")], check=True)
        shutil.copy(next((pkg_dir / "x" / "boot").glob("vmlinuz-*")), kernel)
        moddir = next((pkg_dir / "x" / "lib" / "modules").iterdir()) / "kernel"
        busybox = Path("/bin/busybox")
        if not busybox.exists():
            raise FileNotFoundError("busybox-static is not installed (/bin/busybox)")
        entries: list[tuple[str, int, bytes]] = [
            (d, 0o40755, b"") for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules")
        ]
        entries.append(("bin/busybox", 0o100755, busybox.read_bytes()))
        entries.append(("init", 0o100755, INIT.encode()))
        modules = {Path(mod).stem: (moddir / mod).read_bytes() for mod in MODULES}
        for i, name in enumerate(load_order(modules)):
            entries.append((f"lib/modules/{i:02d}-{name}.ko", 0o100644, modules[name]))
        tmp = initrd.with_suffix(".tmp")
        tmp.write_bytes(gzip.compress(_cpio(entries), compresslevel=6))
        os.replace(tmp, initrd)
        shutil.rmtree(pkg_dir, ignore_errors=True)
    return Guest(kernel, initrd, root)
