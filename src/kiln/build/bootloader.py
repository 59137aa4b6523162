"""GRUB for the bootstrap base disk, installed offline: what `grub-install --target=i386-pc`,
`grub-install --target=x86_64-efi --removable` and `update-grub` do on a booted system, done on the root
tree and on the raw disk file, with no VM, no mount and no loop device.

- The images: the tree's own `grub-mkimage`, run in a chroot of the tree (nothing mounted), builds
  core.img and the EFI image with the prefix `(,gptN)/boot/grub` (the disk GRUB was loaded from,
  partition N) and the modules grub-install picks for an ext4 root on a GPT disk, and grub-install's
  grub.efi (the EFI image with an empty prefix). On Debian 12's GRUB 2.06 the three are byte for byte the
  files grub-install writes.
- /boot/grub: both platforms' modules and lists, the font, the translations, an empty grubenv and a
  grub.cfg written from /etc/default/grub as the tree's sh reads it (`grub_cfg`), checked by the tree's
  grub-script-check: a chroot cannot run `update-grub`, which asks the running system which device holds /.
- The disk: boot.img's code in the protective MBR (the partition table and disk signature kept), with the
  sector of core.img and the drive-check jump turned into two nops, as grub-bios-setup writes them; core.img
  in the BIOS boot partition, its blocklist pointing at its own sectors. grub-bios-setup also appends
  Reed-Solomon codes to an embedded core.img; GRUB boots the same without them (it only cannot repair a
  core.img that something later overwrote in part).
- The ESP: EFI/BOOT/BOOTX64.EFI (the removable path: no NVRAM entry), written with mtools.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kiln.artifacts import kernel
from kiln.build.standins import in_tree
from kiln.core import proc
from kiln.core.errors import BuildError, CommandError
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
    # grub.efi: grub-install's "backward-compatibility" copy of the EFI image, with an empty prefix
    for fmt, out, where, modules in (
        ("i386-pc", core, prefix, BIOS_MODULES),
        ("x86_64-efi", efi, prefix, EFI_MODULES),
        ("x86_64-efi", "/boot/grub/x86_64-efi/grub.efi", "", EFI_MODULES),
    ):
        proc.run(
            ["chroot", str(tree), "grub-mkimage", "-O", fmt, "-o", out, "-p", where, *modules],
            env=proc.tree_env(runtime),
            log_file=log_file,
            runtime=runtime,
        )
    (grub / "grubenv").write_bytes(grubenv())
    write_cfg(tree, root_uuid, kernel_version, log_file=log_file, runtime=runtime)
    return Images(tree / core.lstrip("/"), grub / "i386-pc" / "boot.img", tree / efi.lstrip("/"))


def check_cfg(tree: Path, *, log_file: IO[str] | None, runtime: Runtime) -> None:
    """At the end of a chroot stage, before its tree is packed and cached: what finalize writes grub.cfg
    from (write_cfg) is there and usable, a kernel with its initrd and GRUB defaults kiln can write (a
    BuildError naming the key, as finalize would give two stages later), and no /etc/grub.d script whose
    menu entries or settings kiln's grub.cfg would leave out (unrun_scripts). A tree without
    /boot/grub/grub.cfg (not a bootstrap base's) is left alone."""
    if not (tree / "boot" / "grub" / "grub.cfg").is_file():
        return
    grub_cfg(kernel.newest(tree), "00000000-0000-0000-0000-000000000000", read_defaults(
        tree, log_file=log_file, runtime=runtime))  # fmt: skip
    unrun = unrun_scripts(tree)
    if unrun:
        raise BuildError(
            f"{tree}: {', '.join(unrun)}: kiln writes grub.cfg offline from {DEFAULTS_FILES} and runs no "
            "/etc/grub.d script, so the image would boot without what this adds (a menu entry, a GRUB "
            "password, an option of 10_linux)",
            hint="put kernel parameters and GRUB settings in /etc/default/grub.d/*.cfg, or build with "
            "-var provisioner=vm, where update-grub runs every /etc/grub.d script",
        )


# What kiln's grub.cfg stands for, from Debian's GRUB packages: the header, theme and Linux entries it writes
# itself; Xen, os-prober (GRUB_DISABLE_OS_PROBER) and UEFI firmware entries, which a node image has no use
# for; 40_custom and 41_custom as shipped, which add nothing. Any other script a GRUB package (grub-*)
# ships unchanged (a later GRUB's 25_bli) counts as theirs.
STOCK_SCRIPTS = (
    "00_header", "05_debian_theme", "10_linux", "20_linux_xen", "30_os-prober", "30_uefi-firmware",
    "40_custom", "41_custom",
)  # fmt: skip


def unrun_scripts(tree: Path) -> list[str]:
    """The executable /etc/grub.d scripts (what update-grub runs) that kiln's grub.cfg does not stand for:
    one that no GRUB package ships (a role's, or another package's: memtest86+), or one changed from what
    its package shipped (dpkg's conffile checksum: entries or a password in 40_custom, a hardening role's
    edit of 10_linux); and /boot/grub/custom.cfg, which 41_custom would have GRUB read. Links are followed
    inside the tree."""
    grub_d = tree / "etc" / "grub.d"
    shipped = _conffile_sums(tree)
    found = []
    for name in sorted(os.listdir(grub_d)) if grub_d.is_dir() else ():
        path = f"/etc/grub.d/{name}"
        script = _followed(tree, path)
        if _garbage(name) or not script.is_file() or not os.access(script, os.X_OK):
            continue  # what update-grub runs: executable files, not backups, signatures or dpkg's leftovers
        package, digest = shipped.get(path, ("", ""))
        if name not in STOCK_SCRIPTS and not package.startswith("grub"):
            found.append(path)
        elif digest and digest != hashlib.md5(script.read_bytes()).hexdigest():
            found.append(f"{path} (changed)")
    if _followed(tree, "/boot/grub/custom.cfg").is_file():
        found.append("/boot/grub/custom.cfg")
    return found


def _followed(tree: Path, path: str) -> Path:
    """`path` of the tree with its links followed inside the tree (40 at most)."""
    where = in_tree(tree, path)
    for _ in range(40):
        if not where.is_symlink():
            break
        target = os.readlink(where)
        path = target if target.startswith("/") else os.path.join(os.path.dirname(path), target)
        where = in_tree(tree, path)
    return where


def _garbage(name: str) -> bool:
    """A name grub-mkconfig skips in /etc/grub.d (its grub_file_is_not_garbage, the glob's dotfiles, and
    editor backups)."""
    return (
        name.startswith((".", "README"))
        or name.endswith(("~", ".rpmsave", ".rpmnew", ".sig"))
        or (name.startswith("#") and name.endswith("#"))
        or ".dpkg-" in name
    )


def _conffile_sums(tree: Path) -> dict[str, tuple[str, str]]:
    """dpkg's conffiles (var/lib/dpkg/status, Conffiles:): path -> (package, md5 as installed)."""
    status = tree / "var" / "lib" / "dpkg" / "status"
    sums: dict[str, tuple[str, str]] = {}
    package, inside = "", False
    for line in status.read_text(errors="replace").splitlines() if status.is_file() else ():
        if line.startswith("Package:"):
            package, inside = line.partition(":")[2].strip(), False
        elif line.startswith("Conffiles:"):
            inside = True
        elif inside and line.startswith(" "):
            path, _, rest = line.strip().partition(" ")
            sums[path] = (package, rest.split()[0] if rest else "")
        else:
            inside = False
    return sums


def write_cfg(
    tree: Path, root_uuid: str, kernel_version: str, *, log_file: IO[str] | None, runtime: Runtime
) -> Path:
    """`tree`/boot/grub/grub.cfg for `kernel_version` from the tree's /etc/default/grub and grub.d/*.cfg, as
    update-grub writes it (grub_cfg), checked by the tree's grub-script-check. The base disk's boot loader
    gets one; the finished disk made from a chroot stage's tree gets a new one at finalize, for the kernel
    and defaults the stages left (a chroot stage diverts update-grub itself: kiln.build.standins)."""
    defaults = read_defaults(tree, log_file=log_file, runtime=runtime)
    cfg = tree / "boot" / "grub" / "grub.cfg"
    cfg.write_text(grub_cfg(kernel_version, root_uuid, defaults))
    cfg.chmod(0o600)  # as Debian 12's update-grub left it on the base disks it made
    try:
        proc.run(["chroot", str(tree), "grub-script-check", "/boot/grub/grub.cfg"], log_file=log_file,
                 env=proc.tree_env(runtime), runtime=runtime)  # fmt: skip
    except CommandError as exc:
        raise BuildError(
            f"{cfg}: grub-script-check finds a syntax error in the grub.cfg made from {DEFAULTS_FILES}: "
            f"{exc.output_tail.strip()}",
            hint="look at GRUB_CMDLINE_LINUX* and GRUB_SERIAL_COMMAND in the tree's /etc/default/grub",
        ) from exc
    return cfg


def grubenv() -> bytes:
    """An empty GRUB environment block, as `grub-editenv FILE create` writes it: 1024 bytes."""
    head = b"# GRUB Environment Block\n"
    return head + b"#" * (1024 - len(head))


# What grub-mkconfig reads (00_header, 10_linux), sourced by sh in the tree as grub-mkconfig sources it
DEFAULTS = (
    "GRUB_DEFAULT", "GRUB_TIMEOUT", "GRUB_DISTRIBUTOR", "GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT",
    "GRUB_TERMINAL", "GRUB_TERMINAL_INPUT", "GRUB_TERMINAL_OUTPUT", "GRUB_SERIAL_COMMAND",
    "GRUB_DISABLE_RECOVERY",
)  # fmt: skip
DEFAULTS_FILES = "/etc/default/grub and /etc/default/grub.d/*.cfg"
_SOURCE = (
    "set -e; [ ! -e /etc/default/grub ] || . /etc/default/grub; "
    'for f in /etc/default/grub.d/*.cfg; do if [ -e "$f" ]; then . "$f"; fi; done; '
    "printf '%s\\0' " + " ".join(f'"${{{k}-}}"' for k in DEFAULTS) + ' > "$0"'
)
_ANSWER = "tmp/.kiln-grub-defaults"  # in the tree: where the chroot's sh writes what it read


def read_defaults(tree: Path, *, log_file: IO[str] | None, runtime: Runtime) -> dict[str, str]:
    """The GRUB defaults of `tree`, as grub-mkconfig sees them: /etc/default/grub and grub.d/*.cfg sourced by
    the tree's sh in a chroot (comments, quoting, `$VAR`, conditionals and command substitution as sh reads
    them). BuildError, naming the files, when sh fails on them."""
    answer = tree / _ANSWER
    try:
        proc.run(["chroot", str(tree), "/bin/sh", "-c", _SOURCE, "/" + _ANSWER], log_file=log_file,
                 env=proc.tree_env(runtime), runtime=runtime)  # fmt: skip
        values = answer.read_bytes().decode(errors="replace").split("\0")
    except CommandError as exc:
        raise BuildError(f"{tree}: sourcing {DEFAULTS_FILES} failed: {exc.output_tail.strip()}") from exc
    finally:
        answer.unlink(missing_ok=True)
    if len(values) != len(DEFAULTS) + 1:
        raise BuildError(
            f"{tree}: sourcing {DEFAULTS_FILES} gave {len(values) - 1} values, not {len(DEFAULTS)}"
        )
    return {k: v.strip() for k, v in zip(DEFAULTS, values, strict=False)}


_WORD = re.compile(r"[A-Za-z0-9_]+")
_SERIAL = re.compile(r"serial(\s+--?[A-Za-z0-9_-]+(=[A-Za-z0-9_.,:-]+)?)*")


def grub_cfg(kernel_version: str, root_uuid: str, defaults: Mapping[str, str]) -> str:
    """grub.cfg for one kernel on an ext4 root found by UUID, in the shape of Debian's update-grub output:
    grubenv's next_entry (grub-reboot), the terminals and timeout, the default entry and (unless
    GRUB_DISABLE_RECOVERY=true) a recovery entry, with the menu entry ids update-grub gives them. A default
    kiln cannot write as update-grub would (GRUB_DEFAULT=saved, a title) is a BuildError naming the key."""
    simple, recovery_id = f"gnulinux-simple-{root_uuid}", f"gnulinux-{kernel_version}-recovery-{root_uuid}"
    default = defaults.get("GRUB_DEFAULT", "") or "0"
    if not (default.isdigit() or default in (simple, recovery_id)):
        raise BuildError(
            f"{DEFAULTS_FILES}: GRUB_DEFAULT={default!r}: kiln writes grub.cfg offline and takes a menu "
            f"entry number or id ({simple}); `update-grub` on the running node reads the rest"
        )
    timeout = defaults.get("GRUB_TIMEOUT", "") or "5"
    if not timeout.lstrip("-").isdigit():
        raise BuildError(f"{DEFAULTS_FILES}: GRUB_TIMEOUT={timeout!r}: want a number of seconds")
    terminal = defaults.get("GRUB_TERMINAL", "")
    inputs = (defaults.get("GRUB_TERMINAL_INPUT", "") or terminal).split()
    outputs = (defaults.get("GRUB_TERMINAL_OUTPUT", "") or terminal).split()
    for key, words in (("GRUB_TERMINAL_INPUT", inputs), ("GRUB_TERMINAL_OUTPUT", outputs)):
        bad = [w for w in words if not _WORD.fullmatch(w)]
        if bad:
            raise BuildError(f"{DEFAULTS_FILES}: {key} (or GRUB_TERMINAL): {bad[0]!r} is not a terminal name")
    serial = defaults.get("GRUB_SERIAL_COMMAND", "") or "serial"
    on_serial = "serial" in inputs + outputs
    if on_serial and not _SERIAL.fullmatch(serial):
        raise BuildError(
            f"{DEFAULTS_FILES}: GRUB_SERIAL_COMMAND={serial!r}: want `serial --OPTION=VALUE ...`"
        )
    entries = _entries(kernel_version, root_uuid, defaults)
    lines = [
        "# kiln: written with the base disk's boot loader, offline, from /etc/default/grub",
        "# (kiln.build.bootloader). `update-grub` on the running system writes Debian's own.",
        "if [ -s $prefix/grubenv ]; then",
        "  set have_grubenv=true",
        "  load_env",
        "fi",
        'if [ "${next_entry}" ] ; then',
        '   set default="${next_entry}"',
        "   set next_entry=",
        "   save_env next_entry",
        "   set boot_once=true",
        "else",
        f'   set default="{default}"',
        "fi",
    ]
    if on_serial:
        lines.append(serial)
    if inputs:
        lines.append(f"terminal_input {' '.join(inputs)}")
    if outputs:
        lines.append(f"terminal_output {' '.join(outputs)}")
    lines.append(f"set timeout={timeout}")
    for title, ident, params in entries:
        lines += [
            f"menuentry '{_quoted(title)}' --class debian --class gnu-linux --class gnu --class os "
            f"--id '{ident}' {{",
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


def _entries(kernel_version: str, root_uuid: str, defaults: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """grub.cfg's menu entries: (title, id, parameters after `ro`), the default boot's first."""
    distributor = defaults.get("GRUB_DISTRIBUTOR", "")
    name = f"{distributor} GNU/Linux" if distributor else "GNU/Linux"
    always = defaults.get("GRUB_CMDLINE_LINUX", "")
    cmdline = " ".join(p for p in (always, defaults.get("GRUB_CMDLINE_LINUX_DEFAULT", "")) if p)
    entries = [(name, f"gnulinux-simple-{root_uuid}", cmdline)]
    if defaults.get("GRUB_DISABLE_RECOVERY", "") != "true":
        recovery = " ".join(p for p in ("single", always) if p)
        entries.append((f"{name}, with Linux {kernel_version} (recovery mode)",
                        f"gnulinux-{kernel_version}-recovery-{root_uuid}", recovery))  # fmt: skip
    return entries


def proc_cmdline(kernel_version: str, root_uuid: str, defaults: Mapping[str, str]) -> str:
    """The kernel command line of grub_cfg's default entry, as /proc/cmdline shows it in the booted image
    (GRUB puts BOOT_IMAGE first; an entry GRUB_DEFAULT does not name boots the first, as GRUB does)."""
    entries = _entries(kernel_version, root_uuid, defaults)
    default = defaults.get("GRUB_DEFAULT", "") or "0"
    chosen = [e for i, e in enumerate(entries) if default in (str(i), e[1])] or entries[:1]
    line = f"BOOT_IMAGE=/boot/vmlinuz-{kernel_version} root=UUID={root_uuid} ro {chosen[0][2]}"
    return " ".join(line.split())


def image_cmdline(
    tree: Path,
    kernel_version: str | None,
    root_uuid: str | None,
    *,
    log_file: IO[str] | None,
    runtime: Runtime,
) -> str | None:
    """The kernel command line a VM booted from `tree` has: grub.cfg's default entry as finalize writes it
    from the tree's GRUB defaults, for `kernel_version` (the newest kernel, kernel.facts) and `root_uuid`
    (the base disk's root; else the one the tree's /etc/fstab mounts as /). None, and the build host's
    line stays, for a tree without a kernel or a root UUID, or whose GRUB defaults sh cannot read
    (finalize then names them). A chroot stage's /proc/cmdline shows it (kiln.build.chroot), so setup's
    `ansible_cmdline` and a role's `grep apparmor= /proc/cmdline` see the image's, not the build host's."""
    uuid = root_uuid or _root_uuid(tree / "etc" / "fstab")
    if not kernel_version or not uuid:
        return None
    try:
        defaults = read_defaults(tree, log_file=log_file, runtime=runtime)
    except BuildError as exc:
        if log_file is not None:
            log_file.write(f"kiln: /proc/cmdline stays the build host's in this stage: {exc}\n")
        return None
    return proc_cmdline(kernel_version, uuid, defaults)


def _root_uuid(fstab: Path) -> str | None:
    if fstab.is_symlink() or not fstab.is_file():
        return None
    for line in fstab.read_text(errors="replace").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1] == "/" and fields[0].startswith("UUID="):
            return fields[0].removeprefix("UUID=").strip("\"'") or None
    return None


def _quoted(text: str) -> str:
    return text.replace("'", "'\\''")


def mbr(boot_img: bytes, sector0: bytes, core_sector: int) -> bytes:
    """The disk's first sector with GRUB's boot code: boot.img up to the MBR's own data (disk signature and
    partition table kept from `sector0`), the BIOS parameter block kept, where core.img starts, and the
    drive check disabled (a hard disk: some BIOSes pass a wrong drive number)."""
    if len(boot_img) != SECTOR:
        raise BuildError(f"boot.img is {len(boot_img)} bytes, not {SECTOR}")
    if len(sector0) != SECTOR:
        raise BuildError(f"the disk's first sector is {len(sector0)} bytes, not {SECTOR}")
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
    start, count, segment = struct.unpack_from("<QHH", out, BLOCKLIST)
    if (start, count) != (2, sectors - 1):  # what grub-mkimage leaves: a core.img of another layout
        raise BuildError(
            f"core.img's blocklist is ({start}, {count}), not grub-mkimage's (2, {sectors - 1}): "
            "a GRUB whose core.img kiln does not know how to embed"
        )
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
    try:
        core = embedded_core(images.core_img.read_bytes(), first, size)
    except BuildError as exc:
        raise BuildError(f"{images.core_img}: {exc.message}") from exc
    with open(raw, "r+b") as disk:
        sector0 = disk.read(SECTOR)
        if sector0[510:512] != b"\x55\xaa":
            raise BuildError(f"{raw}: no partition table in the first sector")
        try:
            code = mbr(images.boot_img.read_bytes(), sector0, first)
        except BuildError as exc:
            raise BuildError(f"{images.boot_img} on {raw}: {exc.message}") from exc
        disk.seek(0)
        disk.write(code)
        disk.seek(first * SECTOR)
        disk.write(core + bytes(size * SECTOR - len(core)))
    target = f"{raw}@@{esp_offset}"
    env = {"MTOOLS_SKIP_CHECK": "1"}
    for depth in range(1, len(EFI_BOOT_PATH)):
        proc.run(["mmd", "-i", target, "::/" + "/".join(EFI_BOOT_PATH[:depth])], extra_env=env,
                 log_file=log_file, runtime=runtime)  # fmt: skip
    proc.run(["mcopy", "-i", target, str(images.efi_image), "::/" + "/".join(EFI_BOOT_PATH)], extra_env=env,
             log_file=log_file, runtime=runtime)  # fmt: skip
