"""The live formats of the session's image (built with every format): the ISO boots on BIOS and on UEFI
from the ISO alone plus a cidata seed, the netboot set boots through QEMU's iPXE ROM from `kiln serve`, and
each boot passes `kiln verify --format ...`. Also: the ISO's El Torito catalogue (read with xorriso) has a
BIOS and an EFI entry, and the platform tarball has the Triton layout with every .hash matching its file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[1]
FIGURES: dict[str, float] = {}


def kiln(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PACKER_VAR_FILES": ""}
    return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, env=env,
                          timeout=1800, cwd=REPO)  # fmt: skip


def test_el_torito_catalogue_has_bios_and_efi_entries(built_image):
    iso = built_image.path / f"{built_image.dir.name}.iso"
    out = subprocess.run(["xorriso", "-indev", str(iso), "-report_el_torito", "plain"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    text = out.stdout + out.stderr
    entries = [ln for ln in text.splitlines() if ln.startswith("El Torito boot img")]
    platforms = " ".join(entries)
    assert "BIOS" in platforms and "UEFI" in platforms, text
    mbr = subprocess.run(["xorriso", "-indev", str(iso), "-report_system_area", "plain"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert "MBR" in mbr.stdout + mbr.stderr, "isohybrid: an MBR for USB sticks"


def test_platform_tarball_layout_and_hashes(built_image, tmp_path):
    tgz = built_image.path / f"{built_image.dir.name}.platform.tgz"
    with tarfile.open(tgz) as tar:
        names = set(tar.getnames())
        wanted = [f"platform/etc/version/{n}" for n in ("platform", "os-release", "gitstatus")] + [
            f"platform/x86_64/{n}"
            for n in ("vmlinuz", "initrd", "initrd.hash", "filesystem.squashfs", "filesystem.squashfs.hash",
                      "filesystem.packages", "filesystem.manifest")
        ]  # fmt: skip
        for n in wanted:
            assert n in names, n
        tar.extractall(tmp_path, filter="data")
    x86 = tmp_path / "platform" / "x86_64"
    for hashed in x86.glob("*.hash"):
        target = hashed.with_suffix("")
        assert hashlib.sha256(target.read_bytes()).hexdigest() == hashed.read_text().strip(), target
    assert "debian" in (tmp_path / "platform/etc/version/os-release").read_text().lower()
    manifest = (x86 / "filesystem.manifest").read_text().splitlines()
    # containerd from its release tarball (the http source) or the distro's package
    assert any(
        line.startswith(("/usr/local/bin/containerd\tf\t", "/usr/bin/containerd\tf\t")) for line in manifest
    )
    iso = built_image.path / f"{built_image.dir.name}.iso"
    squash = built_image.path / "squashfs" / "filesystem.squashfs"
    sizes = {p.name: p.stat().st_size for p in (built_image.dir.qcow2, tgz, iso, squash)}
    print("\nsizes (bytes): " + json.dumps(sizes))


def test_squashfs_root_is_the_finished_disks_root(built_image, tmp_path):
    """The chroot runner makes the live formats from the tree the disk was made from, not from the disk:
    the squashfs's manifest must list what the finished qcow2's root holds, path by path (type, mode,
    owner, size, sha256, link target; no directory's size, which is each file system's own), with the
    live fstab, and neither with the file system's lost+found.
    This reads the disk the way the VM runner's live formats do (formats.root_tree)."""
    from kiln.artifacts import formats, layers
    from kiln_runtime import RUNTIME

    with formats.root_tree(built_image.dir.qcow2, tmp_path / "work", RUNTIME, None) as root:
        formats.live_fstab(root)
        layers.write_manifest(root, tmp_path / "disk.manifest")
    disk = (tmp_path / "disk.manifest").read_text().splitlines()
    live = (built_image.path / "squashfs" / "filesystem.manifest").read_text().splitlines()
    assert len(disk) > 10000, len(disk)
    assert live == disk, "\n".join(sorted(set(live).symmetric_difference(disk))[:40])


@pytest.mark.parametrize("firmware", ["bios", "efi"])
def test_iso_boots_and_passes_verify(built_image, tmp_path, firmware):
    started = time.monotonic()
    r = kiln("verify", str(built_image.path), "--format", "iso", "--firmware", firmware, "--accelerator",
             os.environ.get("KILN_TEST_ACCELERATOR", "tcg"))  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    report = json.loads((built_image.path / "goss" / f"iso-{firmware}" / "report.json").read_text())
    FIGURES[f"iso-{firmware}"] = time.monotonic() - started
    print(f"\nISO {firmware}: verify {FIGURES[f'iso-{firmware}']:.0f}s; {r.stdout.strip().splitlines()[-1]}")
    assert report


def test_netboot_through_ipxe_from_kiln_serve_passes_verify(built_image):
    started = time.monotonic()
    r = kiln("verify", str(built_image.path), "--format", "netboot", "--accelerator",
             os.environ.get("KILN_TEST_ACCELERATOR", "tcg"))  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    print(f"\nnetboot: verify {time.monotonic() - started:.0f}s; {r.stdout.strip().splitlines()[-1]}")
