"""kiln.artifacts.kernel: which kernel a root tree boots (update-grub's order), and what `uname -v` says on
it, read from the bzImage's setup header. The real counterpart: test_chroot_vm's kernel install into the
suite image's tree (a Debian kernel package, its hooks, the facts and grub.cfg that follow)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kiln.artifacts import kernel
from kiln.core.errors import BuildError


def _boot(tree: Path, *versions: str, initrd: bool = True) -> None:
    (tree / "boot").mkdir(parents=True, exist_ok=True)
    for v in versions:
        (tree / "boot" / f"vmlinuz-{v}").write_bytes(b"not a kernel")
        if initrd:
            (tree / "boot" / f"initrd.img-{v}").write_bytes(b"")


def test_the_newest_kernel_in_version_order_is_the_one_booted(tmp_path: Path) -> None:
    """As `sort -V` (update-grub's 10_linux) orders them: 50 after 9, the cloud flavour after the generic one
    of the same ABI, a point-release ABI after both; not by name, and not by file time (clamped to one
    date in a reproducible tree)."""
    _boot(tmp_path, "6.1.0-9-amd64", "6.1.0-50-amd64", "6.1.0-50-cloud-amd64", "5.10.0-35-amd64")
    assert kernel.installed(tmp_path) == ["5.10.0-35-amd64", "6.1.0-9-amd64", "6.1.0-50-amd64",
                                          "6.1.0-50-cloud-amd64"]  # fmt: skip
    assert kernel.newest(tmp_path) == "6.1.0-50-cloud-amd64"
    _boot(tmp_path, "6.1.0-51-amd64")
    assert kernel.newest(tmp_path) == "6.1.0-51-amd64"


def test_a_kernel_without_its_initrd_is_not_booted(tmp_path: Path) -> None:
    _boot(tmp_path, "6.1.0-50-amd64")
    _boot(tmp_path, "6.1.0-99-amd64", initrd=False)  # a half-installed package: no initramfs yet
    assert kernel.newest(tmp_path) == "6.1.0-50-amd64"
    # not a bzImage: no build string (and not the build host's either)
    assert kernel.facts(tmp_path) == {"kernel": "6.1.0-50-amd64", "kernel_version": ""}


def test_a_tree_without_a_kernel(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    assert kernel.installed(tmp_path) == [] and kernel.facts(tmp_path) == {}
    with pytest.raises(BuildError, match=r"/boot: no kernel with its initrd"):
        kernel.newest(tmp_path)


def test_the_build_string_comes_from_the_bzimage_setup_header(tmp_path: Path) -> None:
    """x86's boot protocol: "HdrS" at 0x202 and, at 0x20E, where the version string is (less 0x200)."""
    build = b"#1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1 (2026-07-02)"
    text = b"6.1.0-50-amd64 (debian-kernel@lists.debian.org) " + build
    image = bytearray(0x4000)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x20E, 0x3000 - 0x200)
    image[0x3000 : 0x3000 + len(text) + 1] = text + b"\0"
    _boot(tmp_path, "6.1.0-50-amd64")
    (tmp_path / "boot" / "vmlinuz-6.1.0-50-amd64").write_bytes(bytes(image))
    assert kernel.facts(tmp_path) == {
        "kernel": "6.1.0-50-amd64",
        "kernel_version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1 (2026-07-02)",
    }
    assert kernel.build_string(tmp_path / "missing") == ""
