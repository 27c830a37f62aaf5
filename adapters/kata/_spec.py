"""The OCI runtime spec for a sandbox: the image's process, default Linux isolation, limits.

The defaults follow what ``runc spec`` and containerd's own defaults give a
container: its own PID, IPC, UTS, mount and network namespaces, the usual
pseudo-filesystems, a small capability set, masked and read-only kernel paths.
"""

from __future__ import annotations

from typing import Any

__all__ = ["oci_spec"]

# fmt: off
_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
_MASKED = [
    "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
]
_READONLY = [
    "/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
]
# fmt: on


def oci_spec(
    cid: str,
    image_config: dict[str, Any],
    *,
    vcpus: int | None,
    memory_mib: int | None,
    cpu_period: int,
    cgroups_path: str,
) -> dict[str, Any]:
    """A runtime spec running the image's entrypoint and command under the given limits."""
    args = list(image_config.get("Entrypoint") or []) + list(image_config.get("Cmd") or [])
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if vcpus:
        resources["cpu"] = {"quota": vcpus * cpu_period, "period": cpu_period}
    if memory_mib:
        resources["memory"] = {"limit": memory_mib << 20}
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args or ["sh"],
            "env": list(image_config.get("Env") or ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"]),
            "cwd": image_config.get("WorkingDir") or "/",
            "capabilities": dict.fromkeys(("bounding", "effective", "permitted"), _CAPS),
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": cid[:63],
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",  # noqa: S108 - the container's own /dev/shm
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
        ],
        "linux": {
            "resources": resources,
            "cgroupsPath": cgroups_path,
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": _MASKED,
            "readonlyPaths": _READONLY,
        },
    }
