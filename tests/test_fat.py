"""The FAT32 time rewrite that makes the base disk's ESP the same bytes in two builds, on real filesystems
made by mkfs.fat and filled by mtools (the tools the ESP's own files never see, but whose entries are the
same on-disk format grub-install's kernel writes)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.build.fat import fat_datetime, set_fat_times
from kiln.core.errors import BuildError

pytestmark = pytest.mark.skipif(
    not (shutil.which("mkfs.fat") and shutil.which("mcopy")), reason="needs dosfstools and mtools"
)
OFFSET = 1 << 20
EPOCH = 1704067200  # 2024-01-01 00:00:00 UTC


def _esp(tmp: Path, name: str, mtime: int) -> Path:
    """A disk image with a FAT32 filesystem at 1 MiB holding a nested tree whose files carry `mtime`."""
    image = tmp / f"{name}.img"
    with open(image, "wb") as f:
        f.truncate(OFFSET + (64 << 20))
    subprocess.run(
        ["mkfs.fat", "-F", "32", "-s", "1", "-n", "EFI", "-i", "1234ABCD", f"--offset={OFFSET // 512}",
         str(image), str(64 << 10)],
        check=True, capture_output=True,
    )  # fmt: skip
    src = tmp / f"{name}-src"
    for rel in ("EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grub.cfg", "EFI/debian/a-long-file-name.efi", "x"):
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode() * 300)
        os.utime(path, (mtime, mtime))
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    target = f"{image}@@{OFFSET}"
    for entry in sorted(src.iterdir()):
        subprocess.run(["mcopy", "-s", "-m", "-i", target, str(entry), "::/"], check=True, env=env)
    subprocess.run(["mdel", "-i", target, "::/x"], check=True, env=env)  # a deleted entry keeps its times
    return image


def test_two_esps_written_at_different_times_become_the_same_bytes(tmp_path: Path) -> None:
    a = _esp(tmp_path, "a", 1_800_000_000)
    b = _esp(tmp_path, "b", 1_900_000_000)
    assert a.read_bytes() != b.read_bytes()
    touched = set_fat_times(a, OFFSET, EPOCH)
    assert set_fat_times(b, OFFSET, EPOCH) == touched
    # the label, 3 directories with "." and "..", 4 files (one deleted)
    assert touched >= 1 + 3 * 3 + 4
    assert a.read_bytes() == b.read_bytes()
    listing = subprocess.run(
        ["mdir", "-i", f"{a}@@{OFFSET}", "::/EFI/BOOT"], check=True, capture_output=True, text=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout  # fmt: skip
    assert "2024-01-01" in listing and "2027" not in listing and "2030" not in listing
    alone = tmp_path / "esp-alone.img"  # fsck.fat takes no offset: the filesystem on its own
    alone.write_bytes(a.read_bytes()[OFFSET:])
    fsck = subprocess.run(["fsck.fat", "-n", str(alone)], capture_output=True)
    assert fsck.returncode in (0, 1), fsck.stderr  # fsck.fat may only note the dirty bit of mtools' writes


def test_fat_datetime_counts_from_1980_in_two_second_steps() -> None:
    date, clock = fat_datetime(EPOCH + 3661)  # 01:01:01
    assert date == ((2024 - 1980) << 9) | (1 << 5) | 1
    assert clock == (1 << 11) | (1 << 5) | 0
    assert fat_datetime(0) == ((0 << 9) | (1 << 5) | 1, 0)


def test_a_disk_without_fat_at_the_offset_is_named(tmp_path: Path) -> None:
    image = tmp_path / "blank.img"
    image.write_bytes(b"\0" * (OFFSET + 4096))
    with pytest.raises(BuildError, match="no FAT boot sector at byte 1048576"):
        set_fat_times(image, OFFSET, EPOCH)
