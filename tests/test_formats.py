"""Live-format boot entries carry the image's extra kernel parameters (the VM tests boot them); the ISO and
the platform tarball are the same bytes whenever they are made from the same files."""

from __future__ import annotations

import os
import random
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from kiln.artifacts import formats
from kiln_runtime import RUNTIME


def test_live_command_line_adds_the_images_extra_kernel_params() -> None:
    assert formats.live_cmdline() == formats.LIVE_CMDLINE
    assert formats.live_cmdline("mitigations=auto nosoftlockup").endswith(" mitigations=auto nosoftlockup")
    script = formats.ipxe_script("n", "http://h:1", "ds=nocloud-net;s=http://h:1/seed/", "mitigations=auto")
    (kernel,) = [line for line in script.splitlines() if line.startswith("kernel ")]
    assert kernel.split()[2:] == [
        *formats.LIVE_CMDLINE.split(), "mitigations=auto", "fetch=${base}/filesystem.squashfs", "ip=dhcp",
        "ds=nocloud-net;s=http://h:1/seed/",
    ]  # fmt: skip
    plain = formats.ipxe_script("n", "http://h:1")
    assert "mitigations" not in plain and not any(line.endswith(" ") for line in plain.splitlines())


def _live_parts(root: Path) -> tuple[Path, Path, Path]:
    root.mkdir()
    parts = []
    for name, size in (("vmlinuz", 300_000), ("initrd", 200_000), ("filesystem.squashfs", 500_000)):
        path = root / name
        path.write_bytes(random.Random(name).randbytes(size))
        parts.append(path)
    return parts[0], parts[1], parts[2]


@pytest.mark.skipif(shutil.which("grub-mkrescue") is None, reason="grub-mkrescue (make deps) is missing")
def test_two_isos_from_the_same_files_have_the_same_bytes(tmp_path: Path) -> None:
    """The real grub-mkrescue/xorriso/mformat twice, a second apart: with the source date and seed the
    ISOs are byte-identical (the EFI image's FAT serial was the last random part); without, they differ."""
    kernel, initrd, squash = _live_parts(tmp_path / "in")
    made = []
    for i, epoch in enumerate((1_700_000_000, 1_700_000_000, 0)):
        work = tmp_path / f"work{i}"
        work.mkdir()
        iso = formats.make_iso("n", kernel, initrd, squash, tmp_path / f"{i}.iso", work, RUNTIME, None,
                               epoch=epoch, seed="stage-id")  # fmt: skip
        made.append(iso.read_bytes())
        time.sleep(2.1)  # FAT keeps times to 2 s: a shorter pause could hide a time that is not the epoch
    assert made[0] == made[1]
    assert made[2] != made[0]
    # the serial really is in the EFI image: a different seed gives different bytes in 4 places only
    other = tmp_path / "other.iso"
    other.write_bytes(made[0])
    assert formats.set_efi_serial(other, b"\x01\x02\x03\x04")
    changed = [i for i, (a, b) in enumerate(zip(made[0], other.read_bytes(), strict=True)) if a != b]
    assert 1 <= len(changed) <= 4 and changed[-1] - changed[0] < 4
    # ...at the EFI boot image's FAT serial: sector 17's El Torito record -> catalog -> EFI entry's load RBA
    catalog = int.from_bytes(made[0][17 * 2048 + 0x47 : 17 * 2048 + 0x4B], "little") * 2048
    entries = [made[0][catalog + at : catalog + at + 32] for at in range(32, 2048, 32)]
    header = next(i for i, e in enumerate(entries) if e[0] in (0x90, 0x91) and e[1] == 0xEF)
    rba = int.from_bytes(entries[header + 1][8:12], "little") * 2048
    assert rba + 0x27 <= changed[0] and changed[-1] < rba + 0x27 + 4, (rba, changed)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"\0" * 40_000)
    assert not formats.set_efi_serial(plain, b"\x01\x02\x03\x04")


def test_the_platform_tarball_is_the_same_bytes_whenever_it_is_made(tmp_path: Path) -> None:
    kernel, initrd, squash = _live_parts(tmp_path / "in")
    files = {"vmlinuz": kernel, "initrd": initrd, "filesystem.squashfs": squash}
    one = formats.make_platform(tmp_path / "a.tgz", files, "ID=debian\n", 1_700_000_000, "abc\n")
    time.sleep(1.1)
    os.utime(kernel)  # a newer file: its mtime must not reach the tarball
    two = formats.make_platform(tmp_path / "b.tgz", files, "ID=debian\n", 1_700_000_000, "abc\n")
    assert one.read_bytes() == two.read_bytes()
    with tarfile.open(one) as tar:
        members = tar.getmembers()
    assert {(m.mtime, m.uid, m.gid, m.uname) for m in members} == {(1_700_000_000, 0, 0, "root")}
    assert [m.name for m in members][:3] == [f"platform/etc/version/{n}" for n in ("platform", "os-release",
                                                                                  "gitstatus")]  # fmt: skip


@pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="mksquashfs (make deps) is missing")
def test_two_squashfs_of_one_tree_touched_in_between_have_the_same_bytes(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "fstab").write_text("# live\n")
    (tree / "usr").mkdir()
    (tree / "usr" / "big").write_bytes(random.Random(1).randbytes(2_000_000))
    one = formats.make_squashfs(tree, tmp_path / "one.squashfs", RUNTIME, None, epoch=1_700_000_000)
    time.sleep(1.1)
    (tree / "etc" / "fstab").write_text("# live\n")  # rewritten now, as live_fstab does
    two = formats.make_squashfs(tree, tmp_path / "two.squashfs", RUNTIME, None, epoch=1_700_000_000)
    assert one.read_bytes() == two.read_bytes()


def test_a_module_live_boot_needs_kept_from_loading_is_named(tmp_path: Path) -> None:
    """dev-sec's os_hardening writes `install squashfs /bin/true` (squashfs is in its os_unused_filesystems):
    the live initrd carries modprobe.d, and live-boot could not mount the root. Each such line is named;
    `blacklist` (aliases only), other modules and modules built into the image's kernel are not."""
    tree = tmp_path / "tree"
    kver = "6.1.0-50-amd64"
    (tree / "boot").mkdir(parents=True)
    for name in (f"vmlinuz-{kver}", f"initrd.img-{kver}"):
        (tree / "boot" / name).write_bytes(b"")
    (tree / "lib" / "modules" / kver).mkdir(parents=True)
    (tree / "lib" / "modules" / kver / "modules.builtin").write_text("kernel/drivers/block/loop.ko\n")
    (tree / "etc" / "modprobe.d").mkdir(parents=True)
    (tree / "etc" / "modprobe.d" / "dev-sec.conf").write_text(
        "# Ansible managed\ninstall cramfs /bin/true\ninstall squashfs /bin/true\ninstall udf /bin/true\n"
        "install loop /bin/true\nblacklist overlay\n"
    )
    (tree / "usr" / "lib" / "modprobe.d").mkdir(parents=True)
    (tree / "usr" / "lib" / "modprobe.d" / "site.conf").write_text(
        "install overlay /bin/false  # no overlay\n"
    )
    (tree / "etc" / "modprobe.d" / "notes.txt").write_text("install isofs /bin/true\n")  # not a .conf
    assert formats.modules_kept_from_loading(tree) == [
        "/etc/modprobe.d/dev-sec.conf:3: install squashfs /bin/true",
        "/usr/lib/modprobe.d/site.conf:1: install overlay /bin/false  # no overlay",
    ]
    (tree / "etc" / "modprobe.d" / "dev-sec.conf").write_text("install cramfs /bin/true\n")
    (tree / "usr" / "lib" / "modprobe.d" / "site.conf").unlink()
    assert formats.modules_kept_from_loading(tree) == []
