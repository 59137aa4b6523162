"""The kernel a root tree boots: `newest(tree)`, and `facts(tree)` for the Ansible facts of a chroot stage.

One rule for every part of kiln that picks the image's kernel (the base disk's grub.cfg, the finished disk's
grub.cfg made at finalize, the live formats, `ansible_kernel` in a chroot stage): the newest
/boot/vmlinuz-VERSION that has its /boot/initrd.img-VERSION, in version order, as update-grub's 10_linux
sorts them (`sort -V`) and boots the first. So a role that installs another kernel (the cloud flavour, a
backports or a point-release ABI) gets the image booting it, as `update-grub` in a build VM would.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from kiln.core.errors import BuildError

_RUNS = re.compile(r"(\d+)|(\D+)")


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Order as `sort -V` orders kernel versions: runs of digits by value, the rest by character."""
    return tuple((1, int(d), "") if d else (0, 0, s) for d, s in _RUNS.findall(version))


def installed(tree: Path) -> list[str]:
    """The kernel versions in `tree`/boot that can boot (an initrd beside the vmlinuz), oldest first."""
    boot = tree / "boot"
    versions = [
        p.name.removeprefix("vmlinuz-")
        for p in boot.glob("vmlinuz-*")
        if (boot / f"initrd.img-{p.name.removeprefix('vmlinuz-')}").is_file()
    ]
    return sorted(versions, key=version_key)


def newest(tree: Path) -> str:
    """The version of the kernel `tree` boots (module doc); BuildError when it has none."""
    versions = installed(tree)
    if not versions:
        raise BuildError(f"{tree}/boot: no kernel with its initrd (vmlinuz-VERSION and initrd.img-VERSION)")
    return versions[-1]


def build_string(vmlinuz: Path) -> str:
    """What `uname -v` prints on that kernel ("#1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1 (2026-07-02)"), read
    from an x86 bzImage's setup header (its kernel_version pointer); "" for another kind of image."""
    try:
        with open(vmlinuz, "rb") as f:
            head = f.read(0x8000)
    except OSError:
        return ""
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return ""
    start = struct.unpack_from("<H", head, 0x20E)[0] + 0x200
    end = head.find(b"\0", start)
    text = head[start:end].decode(errors="replace") if 0x200 < start < end else ""
    hash_at = text.find("#")
    return text[hash_at:] if hash_at >= 0 else ""


def facts(tree: Path) -> dict[str, str]:
    """`ansible_kernel` and `ansible_kernel_version` as a build VM booted from `tree` reports them (the
    version "" where the image is no bzImage: not the build host's); {} for a tree with no kernel."""
    versions = installed(tree)
    if not versions:
        return {}
    return {"kernel": versions[-1], "kernel_version": build_string(tree / "boot" / f"vmlinuz-{versions[-1]}")}
