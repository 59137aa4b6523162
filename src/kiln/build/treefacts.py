"""The facts of a chroot stage that would describe the build host, as a build VM booted from the base disk
reports them instead. kiln reads them off the tree before each playbook and passes them in KILN_TREE_FACTS;
fact gathering runs `setup` and then ansible/library/kiln_tree_facts.py, whose facts are merged over setup's
(kiln.build.chroot):
- `ansible_kernel`, `ansible_kernel_version`: the kernel the image boots (kiln.artifacts.kernel.facts);
- no swap: that VM has none, and the node role keeps it off;
- `ansible_mounts` gains the image's own file systems, from its /etc/fstab, as that VM lists them: `/`
  (ext4) and `/boot/efi` (vfat) on kiln's base. setup lists what a stage has mounted from a device (its
  /run, bound from kiln's work dir), which stays, as Ansible appends a module's list to setup's. A role that
  decides from the mounts which file systems the image uses found none: dev-sec's os_hardening then
  blacklisted vfat, and the image's boot stopped in emergency mode for want of its ESP."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from kiln.artifacts import kernel
from kiln.build import bootstrap

# a build VM booted from the base disk has no swap (and the node role keeps it off): a role's `swapoff -a`
# when ansible_swaptotal_mb > 0 (image-builder's node role) is skipped here as there, instead of failing on
# the build host's swap
_SWAP = {"total": 0, "free": 0, "used": 0, "cached": 0}
NO_SWAP = {"swaptotal_mb": 0, "swapfree_mb": 0, "memory_mb": {"swap": _SWAP}}
BLOCK = 4096  # the root file system's block size (kiln.build.bootstrap.make_root_fs)
BYTES_PER_INODE = 16384  # mke2fs's default ratio, for the inode counts of /
_BY = {"UUID": "by-uuid", "LABEL": "by-label", "PARTUUID": "by-partuuid", "PARTLABEL": "by-partlabel"}


def facts(tree: Path, disk_size: int | None) -> dict[str, Any]:
    """What KILN_TREE_FACTS carries for a playbook on `tree` (names without the ansible_ prefix), the
    image's disk `disk_size` bytes (its root file system's size comes from it; None: no sizes)."""
    return {**kernel.facts(tree), **NO_SWAP, "mounts": mounts(tree, disk_size)}


def mounts(tree: Path, disk_size: int | None) -> list[dict[str, Any]]:
    """The image's file systems that a booted image has mounted from a device, as setup lists them: each
    /etc/fstab entry whose source is a device (UUID=, LABEL=, PARTUUID=, PARTLABEL=, /dev/...), not swap and
    not noauto; the device as udev names it (/dev/disk/by-uuid/...). `/` also gets its sizes: the root
    partition of a disk of `disk_size` bytes, and what the tree holds."""
    try:
        lines = (tree / "etc" / "fstab").read_text(errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) < 3:
            continue
        source, mount, fstype = fields[:3]
        options = fields[3] if len(fields) > 3 else "defaults"
        if fstype in ("swap", "none") or not mount.startswith("/") or "noauto" in options.split(","):
            continue
        kind, _, value = source.partition("=")
        if kind in _BY and value:
            device, uuid = f"/dev/disk/{_BY[kind]}/{value}", value if kind == "UUID" else "N/A"
        elif source.startswith("/"):
            device, uuid = source, "N/A"
        else:  # tmpfs, proc, ...: setup lists no such mount
            continue
        info: dict[str, Any] = {
            "mount": mount, "device": device, "fstype": fstype, "options": options, "uuid": uuid,
            "dump": _number(fields, 4), "passno": _number(fields, 5),
        }  # fmt: skip
        if mount == "/" and disk_size:
            info.update(_root_sizes(tree, disk_size))
        out.append(info)
    return out


def _number(fields: list[str], at: int) -> int:
    return int(fields[at]) if len(fields) > at and fields[at].isdigit() else 0


def _root_sizes(tree: Path, disk_size: int) -> dict[str, int]:
    """setup's size facts for the image's root file system: the base's root partition on a disk of
    `disk_size` bytes (all but the partitions before it), with what the tree holds in it."""
    before = (bootstrap.FIRST_MIB + bootstrap.BIOS_BOOT_MIB + bootstrap.ESP_MIB) << 20
    total = max(disk_size - before, 0) // BLOCK
    used = files = 0
    linked: set[tuple[int, int]] = set()  # a hard-linked file's blocks and inode count once, as in df
    for top, dirs, names in os.walk(tree):
        for name in [*dirs, *names]:
            st = os.lstat(os.path.join(top, name))
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in linked:
                    continue
                linked.add((st.st_dev, st.st_ino))
            used += st.st_blocks * 512
            files += 1
    used_blocks = min(-(-used // BLOCK), total)
    inodes = total * BLOCK // BYTES_PER_INODE
    return {
        "block_size": BLOCK, "block_total": total, "block_used": used_blocks,
        "block_available": total - used_blocks, "size_total": total * BLOCK,
        "size_available": (total - used_blocks) * BLOCK, "inode_total": inodes,
        "inode_used": min(files, inodes), "inode_available": max(inodes - files, 0),
    }  # fmt: skip
