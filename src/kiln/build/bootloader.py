"""GRUB for the bootstrap base disk, installed offline: what `grub-install --target=i386-pc`,
`grub-install --target=x86_64-efi --removable` and `update-grub` do on a booted system, done on the root
tree and on the raw disk file, with no VM, no mount and no loop device.

- The images: the tree's own `grub-mkimage`, run in a chroot of the tree (nothing mounted), builds
  core.img and the EFI image with the prefix `(,gptN)/boot/grub` (the disk GRUB was loaded from,
  partition N) and the modules grub-install picks for an ext4 root on a GPT disk. On Debian 12's GRUB 2.06
  both are byte for byte the files grub-install writes.
- /boot/grub: both platforms' modules and lists, the font, the translations, an empty grubenv and a
  grub.cfg written from /etc/default/grub (`grub_cfg`): a chroot cannot run `update-grub`, which asks the
  running system which device holds /.
- The disk: boot.img's code in the protective MBR (the partition table and disk signature kept), with the
  sector of core.img and the drive-check jump turned into two nops, as grub-bios-setup writes them; core.img
  in the BIOS boot partition, its blocklist pointing at its own sectors. grub-bios-setup also appends
  Reed-Solomon codes to an embedded core.img; GRUB boots the same without them (it only cannot repair a
  core.img that something later overwrote in part).
- The ESP: EFI/BOOT/BOOTX64.EFI (the removable path: no NVRAM entry), written with mtools.
"""

from __future__ import annotations

import shlex
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kiln.core import proc
from kiln.core.errors import BuildError
from kiln.core.runtime import Runtime

SECTOR = 512
# grub-install's modules for an ext4 root on a GPT disk, in its order (the order is in the image's bytes)
BIOS_MODULES = ("ext2", "part_gpt", "biosdisk")
EFI_MODULES = ("ext2", "part_gpt")
PLATFORMS = ("i386-pc", "x86_64-efi")
EFI_BOOT_PATH = ("EFI", "BOOT", "BOOTX64.EFI")

# boot.img (GRUB's include/grub/i386/pc/boot.h): a BIOS parameter block a disk may carry, where core.img's
# first sector is, the drive-check jump, and where the MBR's own data starts (disk signature, partitions)
BPB_START, BPB_END = 0x03, 0x5A
KERNEL_SECTOR = 0x5C
DRIVE_CHECK = 0x66
MBR_DATA = 0x1B8
# core.img's first sector (diskboot.img) ends with its blocklist: first sector (u64), count (u16), segment
BLOCKLIST = SECTOR - 12


@dataclass(frozen=True)
class Images:
    """What `prepare_tree` made for the disk: core.img for the BIOS boot partition, boot.img for the MBR and
    the EFI image for the ESP (the same files are in the tree's /boot/grub)."""

    core_img: Path
    boot_img: Path
    efi_image: Path


def prepare_tree(
    tree: Path,
    root_partition: int,
    root_uuid: str,
    kernel_version: str,
    *,
    log_file: IO[str] | None,
    runtime: Runtime,
) -> Images:
    """Fill `tree`/boot/grub as grub-install and update-grub would, for a root filesystem `root_uuid` on
    partition `root_partition` of a GPT disk. Raises BuildError when the tree has no GRUB to install."""
    lib = tree / "usr" / "lib" / "grub"
    missing = [p for p in PLATFORMS if not (lib / p / "kernel.img").is_file()]
    if missing:
        raise BuildError(
            f"{lib}: no GRUB for {', '.join(missing)} in the tree",
            hint="the base needs grub-pc-bin and grub-efi-amd64-bin (kiln.build.bootstrap.REQUIRED_PACKAGES)",
        )
    grub = tree / "boot" / "grub"
    for platform in PLATFORMS:
        dest = grub / platform
        dest.mkdir(parents=True, exist_ok=True)
        for src in sorted((lib / platform).iterdir()):
            if src.suffix in (".mod", ".lst", ".o") or src.name in ("modinfo.sh", "boot.img"):
                shutil.copy2(src, dest / src.name)
    font = tree / "usr" / "share" / "grub" / "unicode.pf2"
    if font.is_file():
        (grub / "fonts").mkdir(exist_ok=True)
        shutil.copy2(font, grub / "fonts" / font.name)
    translations = sorted((tree / "usr" / "share" / "locale").glob("*/LC_MESSAGES/grub.mo"))
    if translations:
        (grub / "locale").mkdir(exist_ok=True)
        for mo in translations:
            shutil.copy2(mo, grub / "locale" / f"{mo.parents[1].name}.mo")
    prefix = f"(,gpt{root_partition})/boot/grub"
    core = "/boot/grub/i386-pc/core.img"
    efi = "/boot/grub/x86_64-efi/core.efi"
    for fmt, out, modules in (("i386-pc", core, BIOS_MODULES), ("x86_64-efi", efi, EFI_MODULES)):
        proc.run(
            ["chroot", str(tree), "grub-mkimage", "-O", fmt, "-o", out, "-p", prefix, *modules],
            log_file=log_file,
            runtime=runtime,
        )
    shutil.copy2(tree / efi.lstrip("/"), grub / "x86_64-efi" / "grub.efi")
    (grub / "grubenv").write_bytes(grubenv())
    defaults = read_defaults(tree)
    cfg = grub / "grub.cfg"
    cfg.write_text(grub_cfg(os_name(tree), kernel_version, root_uuid, defaults))
    cfg.chmod(0o600)  # as grub-mkconfig writes it (it may hold a password)
    return Images(tree / core.lstrip("/"), grub / "i386-pc" / "boot.img", tree / efi.lstrip("/"))


def grubenv() -> bytes:
    """An empty GRUB environment block, as `grub-editenv FILE create` writes it: 1024 bytes."""
    head = b"# GRUB Environment Block\n"
    return head + b"#" * (1024 - len(head))


def read_defaults(tree: Path) -> dict[str, str]:
    """/etc/default/grub and /etc/default/grub.d/*.cfg as update-grub reads them, for the plain
    `KEY=value` lines (a value may be quoted and may use `$KEY` of a key set before it); lines with command
    substitution are skipped."""
    values: dict[str, str] = {}
    files = [tree / "etc" / "default" / "grub", *sorted((tree / "etc" / "default" / "grub.d").glob("*.cfg"))]
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line or "`" in line or "$(" in line:
                continue
            key, _, raw = line.partition("=")
            if not key.isidentifier():
                continue
            try:
                words = shlex.split(raw)
            except ValueError as exc:
                raise BuildError(f"{path}: {key}: cannot read the value {raw!r}: {exc}") from exc
            value = " ".join(words)
            for name, known in values.items():
                value = value.replace(f"${{{name}}}", known).replace(f"${name}", known)
            values[key] = value.strip()
    return values


def os_name(tree: Path) -> str:
    """The menu entry's title: NAME from the tree's os-release, as update-grub's GRUB_DISTRIBUTOR gives it."""
    for path in (tree / "etc" / "os-release", tree / "usr" / "lib" / "os-release"):
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("NAME="):
                    return " ".join(shlex.split(line.partition("=")[2])) or "Linux"
    return "Linux"


def grub_cfg(name: str, kernel_version: str, root_uuid: str, defaults: dict[str, str]) -> str:
    """grub.cfg for one kernel on an ext4 root found by UUID: the default entry and a recovery entry, with
    the timeout, terminals and kernel parameters of /etc/default/grub (`read_defaults`)."""
    always = defaults.get("GRUB_CMDLINE_LINUX", "")
    cmdline = " ".join(p for p in (always, defaults.get("GRUB_CMDLINE_LINUX_DEFAULT", "")) if p)
    recovery = " ".join(p for p in ("single", always) if p)
    entries = ((name, cmdline), (f"{name}, with Linux {kernel_version} (recovery mode)", recovery))
    lines = [
        "# kiln: written with the base disk's boot loader, offline, from /etc/default/grub",
        "# (kiln.build.bootloader). `update-grub` on the running system writes Debian's own.",
        f"set default={_grub_word(defaults.get('GRUB_DEFAULT', '0'))}",
        "if [ -s $prefix/grubenv ]; then",
        "  load_env",
        "fi",
    ]
    terminals = defaults.get("GRUB_TERMINAL", "")
    if "serial" in terminals.split():
        lines.append(defaults.get("GRUB_SERIAL_COMMAND", "serial"))
    if terminals:
        lines += [f"terminal_input {terminals}", f"terminal_output {terminals}"]
    lines.append(f"set timeout={_grub_word(defaults.get('GRUB_TIMEOUT', '5'))}")
    for title, params in entries:
        lines += [
            f"menuentry '{_quoted(title)}' --class debian --class gnu-linux --class gnu --class os {{",
            "\tinsmod gzio",
            "\tinsmod part_gpt",
            "\tinsmod ext2",
            f"\tsearch --no-floppy --fs-uuid --set=root {root_uuid}",
            f"\techo\t'Loading Linux {kernel_version} ...'",
            f"\tlinux\t/boot/vmlinuz-{kernel_version} root=UUID={root_uuid} ro {params}".rstrip(),
            "\techo\t'Loading initial ramdisk ...'",
            f"\tinitrd\t/boot/initrd.img-{kernel_version}",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return text.replace("'", "'\\''")


def _grub_word(text: str) -> str:
    word = text.strip() or "0"
    if not all(c.isalnum() or c in "-_.>" for c in word):
        raise BuildError(f"/etc/default/grub: {word!r} is not a GRUB menu entry or timeout kiln can write")
    return word


def mbr(boot_img: bytes, sector0: bytes, core_sector: int) -> bytes:
    """The disk's first sector with GRUB's boot code: boot.img up to the MBR's own data (disk signature and
    partition table kept from `sector0`), the BIOS parameter block kept, where core.img starts, and the
    drive check disabled (a hard disk: some BIOSes pass a wrong drive number)."""
    if len(boot_img) != SECTOR or len(sector0) != SECTOR:
        raise BuildError(f"boot.img and the disk's first sector must be {SECTOR} bytes")
    out = bytearray(boot_img[:MBR_DATA]) + bytearray(sector0[MBR_DATA:])
    out[BPB_START:BPB_END] = sector0[BPB_START:BPB_END]
    out[KERNEL_SECTOR : KERNEL_SECTOR + 8] = struct.pack("<Q", core_sector)
    out[DRIVE_CHECK : DRIVE_CHECK + 2] = b"\x90\x90"
    return bytes(out)


def embedded_core(core_img: bytes, first_sector: int, room_sectors: int) -> bytes:
    """core.img to write at `first_sector`, its blocklist naming the sectors after its first; BuildError
    when it does not fit in `room_sectors`."""
    sectors = -(-len(core_img) // SECTOR)
    if sectors > room_sectors:
        raise BuildError(f"core.img is {sectors} sectors; the BIOS boot partition holds {room_sectors}")
    if len(core_img) < SECTOR:
        raise BuildError("core.img is shorter than one sector")
    out = bytearray(core_img) + bytes(sectors * SECTOR - len(core_img))
    segment = struct.unpack_from("<H", out, BLOCKLIST + 10)[0]
    struct.pack_into("<QHH", out, BLOCKLIST, first_sector + 1, sectors - 1, segment)
    return bytes(out)


def install_disk(
    raw: Path,
    images: Images,
    *,
    bios_boot: tuple[int, int],
    esp_offset: int,
    log_file: IO[str] | None,
    runtime: Runtime,
) -> None:
    """Write GRUB into the raw disk: boot.img into the MBR, core.img into the BIOS boot partition
    (`bios_boot`: first sector and size in sectors) and the EFI image to EFI/BOOT/BOOTX64.EFI on the FAT
    ESP at byte `esp_offset`."""
    first, size = bios_boot
    core = embedded_core(images.core_img.read_bytes(), first, size)
    with open(raw, "r+b") as disk:
        sector0 = disk.read(SECTOR)
        if sector0[510:512] != b"\x55\xaa":
            raise BuildError(f"{raw}: no partition table in the first sector")
        disk.seek(0)
        disk.write(mbr(images.boot_img.read_bytes(), sector0, first))
        disk.seek(first * SECTOR)
        disk.write(core + bytes(size * SECTOR - len(core)))
    target = f"{raw}@@{esp_offset}"
    env = {"MTOOLS_SKIP_CHECK": "1"}
    parts: Sequence[str] = EFI_BOOT_PATH
    for depth in range(1, len(parts)):
        proc.run(["mmd", "-i", target, "::/" + "/".join(parts[:depth])], extra_env=env,
                 log_file=log_file, runtime=runtime)  # fmt: skip
    proc.run(["mcopy", "-i", target, str(images.efi_image), "::/" + "/".join(parts)], extra_env=env,
             log_file=log_file, runtime=runtime)  # fmt: skip
