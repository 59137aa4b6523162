"""Live formats from the finished, sysprepped root filesystem (no second provisioning run):

    squashfs   squashfs/filesystem.squashfs + .packages (name, version) + .manifest (every path: type,
               mode, owner, size, sha256 of files) + .hash (sha256)
    iso        NAME.iso: a hybrid live ISO (grub-mkrescue, i.e. xorriso): El Torito for BIOS (GRUB's
               i386-pc eltorito image) and for UEFI (an EFI System Partition image with GRUB), plus an
               MBR/GPT so that it also boots written to a USB stick. Debian live-boot mounts the squashfs
               under a tmpfs overlay.
    netboot    netboot/{vmlinuz, initrd, filesystem.squashfs, boot.ipxe}: the initrd fetches the squashfs
               over HTTP (`fetch=URL` on the kernel command line); `kiln serve` serves the set
    platform   NAME.platform.tgz: platform/etc/version/{platform,os-release,gitstatus} and
               platform/x86_64/{vmlinuz,initrd,initrd.hash,filesystem.squashfs,filesystem.squashfs.hash,
               filesystem.packages,filesystem.manifest}

Reproducible: every tool runs with SOURCE_DATE_EPOCH (the build's source date): mksquashfs clamps file
times and sets its creation time, mkinitramfs writes a reproducible cpio, xorriso gets the volume dates
and UUID from it, and the ISO's EFI image (mformat's) gets a volume serial derived from the build's seed
instead of a random one; the platform tarball has fixed owners, mtimes and gzip header time.

The image carries live-boot in every format (the node role installs it), so the formats never drift apart:
the live initrd is made from the image's own kernel and initramfs-tools with `mkinitramfs` in a chroot of
the image's tree. Needs root (loop device and mount), as the bootstrap base does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from kiln.artifacts import kernel, layers
from kiln.artifacts.layers import make_squashfs, source_date_env, write_manifest  # noqa: F401
from kiln.core import proc
from kiln.core.builddir import sha256_file
from kiln.core.errors import BuildError, InputError
from kiln.core.runtime import Runtime

DISK_FORMATS = ("qcow2", "ova")
LIVE_FORMATS = ("squashfs", "iso", "netboot", "platform", "overlay")
ALL = DISK_FORMATS + LIVE_FORMATS
SQUASHFS_DIR = "squashfs"
NETBOOT_DIR = "netboot"
LIVE_CMDLINE = "boot=live components console=tty0 console=ttyS0,115200n8"


def live_cmdline(kernel_params: str = "") -> str:
    """The live kernel command line, with the image's extra_kernel_boot_params as its disk boot has them."""
    return f"{LIVE_CMDLINE} {kernel_params}".strip()


def live_wanted(formats: Sequence[str]) -> bool:
    return any(f in LIVE_FORMATS for f in formats)


@contextlib.contextmanager
def root_tree(disk: Path, work: Path, runtime: Runtime, log_file: IO[str] | None) -> Iterator[Path]:
    """The image's root file system, mounted read-write from a throwaway raw copy of `disk`."""
    if os.geteuid() != 0:
        raise InputError("formats squashfs/iso/netboot/platform: reading the image's root needs root (mount)")
    raw = work / "root.raw"
    mnt = work / "root"
    mnt.mkdir(parents=True)
    proc.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], log_file=log_file, runtime=runtime)
    table = json.loads(proc.output(["sfdisk", "--json", str(raw)], runtime=runtime))["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    root = table["partitions"][-1]
    # mount's own loop device, which the kernel frees with the mount (autoclear): after a kill -9, the next
    # run's collection of dead runs' temp dirs (kiln.core.tempdirs) unmounts it, and no loop device stays
    where = f"loop,offset={root['start'] * sector},sizelimit={root['size'] * sector}"
    try:
        proc.run(["mount", "-o", where, str(raw), str(mnt)], log_file=log_file, runtime=runtime)
        yield mnt
    finally:  # asked of the kernel: an interrupt between mount and its return leaves it mounted too
        if os.path.ismount(mnt):
            proc.run(["umount", "-l", str(mnt)], check=False, log_file=log_file, runtime=runtime)
        raw.unlink(missing_ok=True)


def live_fstab(tree: Path) -> None:
    """The disk's own file systems (root and ESP by UUID) do not exist in a live boot: live-boot mounts the
    squashfs under an overlay and adds its own entries. Comment the disk's entries out in the live root."""
    fstab = tree / "etc" / "fstab"
    if not fstab.is_file():
        return
    out = []
    for line in fstab.read_text().splitlines():
        if line.strip().startswith(("UUID=", "LABEL=", "PARTUUID=", "/dev/")):
            out.append(f"# kiln live: a disk entry, not used in a live boot: {line}")
        else:
            out.append(line)
    fstab.write_text("\n".join(out) + "\n")


def write_hash(path: Path) -> str:
    digest = sha256_file(path)
    Path(f"{path}.hash").write_text(f"{digest}\n")
    return digest


# /proc, /sys and /dev bound into the tree for mkinitramfs (it reads the host's devices and modules), in a
# mount namespace of the command's own: they go when it ends, however kiln ends
_WITH_HOST_DEVICES = """set -eu
t="$1"; shift
for d in proc sys dev; do mount --bind "/$d" "$t/$d"; done
"$@"
"""


# what live-boot loads to boot the live root: the squashfs, the overlay over it, the ISO's file system and the
# loop device it mounts the image through; and where modprobe reads its configuration (the initrd copies it)
LIVE_MODULES = ("squashfs", "overlay", "isofs", "loop")
MODPROBE_DIRS = ("etc/modprobe.d", "lib/modprobe.d", "usr/lib/modprobe.d")
_NO_LOAD = ("/bin/true", "/bin/false", "/usr/bin/true", "/usr/bin/false", "true", "false")


def modules_kept_from_loading(tree: Path) -> list[str]:
    """The modprobe.d lines of `tree` that keep a module live-boot needs (LIVE_MODULES) from loading
    (`install squashfs /bin/true`, as hardening roles write to disable unused file systems), for modules
    that the kernel the image boots does not have built in; each as "FILE:LINE: TEXT". `blacklist` only
    stops aliases from loading a module, not live-boot's modprobe, so it is no such line."""
    builtin = tree / "lib" / "modules" / kernel.newest(tree) / "modules.builtin"
    try:
        listed = builtin.read_text().split()
        built_in = {Path(ln).name.split(".ko")[0].replace("-", "_") for ln in listed}
    except OSError:
        built_in = set()
    found = []
    for folder in MODPROBE_DIRS:
        d = tree / folder
        if d.is_symlink() or not d.is_dir():
            continue
        for conf in sorted(d.glob("*.conf")):
            try:
                lines = conf.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for number, line in enumerate(lines, 1):
                words = line.split("#", 1)[0].split()
                if len(words) >= 3 and words[0] == "install" and words[2] in _NO_LOAD:
                    name = words[1].replace("-", "_")
                    if name in LIVE_MODULES and name not in built_in:
                        found.append(f"/{folder}/{conf.name}:{number}: {line.strip()}")
    return found


def live_initrd(tree: Path, out: Path, runtime: Runtime, log_file: IO[str] | None, epoch: int = 0) -> str:
    """An initrd with live-boot, made by the image's own mkinitramfs in a chroot of its tree."""
    if (
        not (tree / "usr/share/initramfs-tools/scripts/live").exists()
        and not (tree / "lib/live/boot").exists()
    ):
        raise BuildError(f"{tree}: live-boot is not installed in the image (the node role installs it)")
    kver = kernel.newest(tree)  # the kernel the disk boots
    proc.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _WITH_HOST_DEVICES, "sh",
         str(tree), "chroot", str(tree), "mkinitramfs", "-o", "/tmp/kiln-live-initrd", kver],
        env=proc.tree_env(runtime), extra_env=source_date_env(epoch), log_file=log_file, runtime=runtime,
    )  # fmt: skip
    shutil.move(str(tree / "tmp" / "kiln-live-initrd"), out)
    return kver


GRUB_CFG = """# kiln live ISO: {name}
set timeout=1
set default=0
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
menuentry "{name} (live)" {{
  linux /live/vmlinuz {cmdline}
  initrd /live/initrd.img
}}
"""

IPXE = """#!ipxe
# kiln netboot set for {name}. `kiln serve BUILD_DIR` serves these files and writes the URL it is
# reached at into `base`; any other HTTP server works too: set base to where the files are served.
isset ${{base}} || set base {base}
kernel ${{base}}/vmlinuz {cmdline} fetch=${{base}}/filesystem.squashfs ip=dhcp ${{extra}}
initrd ${{base}}/initrd
boot
"""


# Fixed-size files in every live ISO that `kiln hosts` overwrites in place for a per-host ISO (the file
# system's layout stays as written; only these extents differ): the GRUB config, whose kernel command line
# then points cloud-init at the NoCloud seed beside it, and the seed. YAML and grub.cfg both end in blank
# lines, which is the padding.
ISO_GRUB_CFG = "boot/grub/grub.cfg"
ISO_SEED_DIR = "kiln/seed"
ISO_SLOTS = {ISO_GRUB_CFG: 8192, f"{ISO_SEED_DIR}/meta-data": 4096, f"{ISO_SEED_DIR}/user-data": 262144}
ISO_MEDIUM = "/run/live/medium"  # where live-boot leaves the ISO mounted


def grub_cfg(name: str, kernel_params: str = "", extra: str = "") -> str:
    cmdline = f"{live_cmdline(kernel_params)} {extra}".strip()
    return GRUB_CFG.format(name=name, cmdline=cmdline)


def padded(text: str, size: int, what: str) -> bytes:
    data = text.encode()
    if len(data) > size:
        raise InputError(f"{what}: {len(data)} bytes, more than the {size} its place in the ISO holds")
    return data + b"\n" * (size - len(data))


def placeholder(path: str) -> str:
    if path == ISO_GRUB_CFG:
        raise ValueError(path)
    head = "#cloud-config\n" if path.endswith("user-data") else ""
    return (
        head + "# the place of a per-host NoCloud seed: `kiln hosts` writes one here in a copy of this ISO\n"
    )


IPXE_LAYERED = """#!ipxe
# kiln netboot set for {name}: the base and the overlay squashfs, stacked by live-boot. `kiln serve
# BUILD_DIR` serves these files and writes the URL it is reached at into `base`; any other HTTP server
# works too: set base to where the files are served. iPXE puts each image into the initramfs under
# {medium}/live/ (kiln-live.cpio makes that directory and the stack's module file first).
isset ${{base}} || set base {base}
kernel ${{base}}/vmlinuz {cmdline} live-media=/{medium} ${{extra}}
initrd ${{base}}/initrd
initrd ${{base}}/{cpio}
{images}
boot
"""


def netboot_images(netboot: Path) -> list[str] | None:
    """The images a netboot set stacks, bottom first (a layered set has kiln-live.cpio), or None."""
    if not (netboot / layers.NETBOOT_CPIO).is_file():
        return None
    return [layers.BASE, layers.OVERLAY]


def ipxe_script(
    name: str, base: str, extra: str = "", kernel_params: str = "", images: Sequence[str] | None = None
) -> str:
    """The netboot set's iPXE script; `images` (bottom first) for a base + overlay set."""
    if images:
        lines = "\n".join(f"initrd ${{base}}/{f} {n}" for f, n in layers.netboot_initrds(images))
        text = IPXE_LAYERED.format(
            name=name, base=base, cmdline=live_cmdline(kernel_params), medium=layers.NETBOOT_MEDIUM,
            cpio=layers.NETBOOT_CPIO, images=lines,
        )  # fmt: skip
    else:
        text = IPXE.format(name=name, base=base, cmdline=live_cmdline(kernel_params))
    return text.replace("${extra}", extra).replace(" \n", "\n")


def make_iso(
    name: str,
    kernel: Path,
    initrd: Path,
    squashfs: Path | Sequence[Path],
    out: Path,
    work: Path,
    runtime: Runtime,
    log_file: IO[str] | None,
    kernel_params: str = "",
    epoch: int = 0,
    seed: str = "",
) -> Path:
    """The hybrid live ISO. With `epoch` (and `seed`), two runs on the same files make the same bytes.
    `squashfs` is the root, or the images of a base + overlay stack (bottom first), which go into /live/
    under their own names with the module file that stacks them."""
    stage = work / "iso"
    (stage / "live").mkdir(parents=True)
    (stage / "boot" / "grub").mkdir(parents=True)
    shutil.copyfile(kernel, stage / "live" / "vmlinuz")
    shutil.copyfile(initrd, stage / "live" / "initrd.img")
    if isinstance(squashfs, Path):
        os.link(squashfs, stage / "live" / "filesystem.squashfs")
    else:
        for image in squashfs:
            os.link(image, stage / "live" / image.name)
        (stage / "live" / layers.MODULE).write_text(layers.module_text([i.name for i in squashfs]))
    for path, size in ISO_SLOTS.items():
        text = grub_cfg(name, kernel_params) if path == ISO_GRUB_CFG else placeholder(path)
        (stage / path).parent.mkdir(parents=True, exist_ok=True)
        (stage / path).write_bytes(padded(text, size, path))
    dates = []
    if epoch:
        stamp = time.strftime("%Y%m%d%H%M%S00", time.gmtime(epoch))
        dates = ["-volume_date", "uuid", stamp, "-volume_date", "all_file_dates", f"={epoch}",
                 "-volume_date", "c", f"={epoch}", "-volume_date", "m", f"={epoch}"]  # fmt: skip
    proc.run(
        ["grub-mkrescue", "-o", str(out), str(stage), "--", "-volid", "KILN_LIVE", *dates],
        extra_env=source_date_env(epoch),
        log_file=log_file,
        runtime=runtime,
    )
    if epoch and not runtime.dry_run:
        set_efi_serial(out, hashlib.sha256(f"kiln-iso-esp:{seed}".encode()).digest()[:4])
    shutil.rmtree(stage)
    return out


def set_efi_serial(iso: Path, serial: bytes) -> bool:
    """Give the FAT file system of the ISO's EFI El Torito image the volume serial `serial` (mformat
    picks a random one, the one byte-for-byte difference left between two grub-mkrescue runs). The image
    is found through the El Torito boot catalog; returns False when the ISO has no EFI FAT image."""
    sector = 2048
    with iso.open("r+b") as f:
        f.seek(17 * sector)
        record = f.read(sector)
        if record[0:1] != b"\x00" or record[1:6] != b"CD001" or not record[7:30].startswith(b"EL TORITO"):
            return False
        f.seek(int.from_bytes(record[0x47:0x4B], "little") * sector)
        catalog = f.read(sector)
        platform = catalog[1]  # the validation entry's platform, for the default entry
        for at in range(32, sector, 32):
            entry = catalog[at : at + 32]
            if entry[0] in (0x90, 0x91):  # a section header: its entries are for this platform
                platform = entry[1]
                continue
            if entry[0] in (0x88, 0x00) and platform == 0xEF and any(entry[8:12]):
                start = int.from_bytes(entry[8:12], "little") * sector
                f.seek(start)
                boot = f.read(512)
                if boot[510:512] != b"\x55\xaa":
                    continue
                fat32 = boot[0x42] in (0x28, 0x29) and boot[0x52:0x57] == b"FAT32"
                offset = 0x43 if fat32 else 0x27
                if boot[offset - 1] not in (0x28, 0x29):  # no extended boot signature: no serial to set
                    continue
                f.seek(start + offset)
                f.write(serial)
                backup = int.from_bytes(boot[0x32:0x34], "little") if fat32 else 0
                if backup not in (0, 0xFFFF):  # FAT32 keeps a copy of the boot sector
                    f.seek(start + backup * int.from_bytes(boot[0x0B:0x0D], "little") + offset)
                    f.write(serial)
                return True
    return False


def gitstatus(repo_root: Path, runtime: Runtime) -> str:
    if not (repo_root / ".git").exists():
        return "unknown (not a git checkout)\n"
    rev = proc.run(["git", "-C", str(repo_root), "rev-parse", "HEAD"], check=False, runtime=runtime).output
    dirty = proc.run(
        ["git", "-C", str(repo_root), "status", "--porcelain"], check=False, runtime=runtime
    ).output
    return f"{rev.strip() or 'unknown'}{' dirty' if dirty.strip() else ''}\n"


def make_platform(out: Path, files: Mapping[str, Path], os_release: str, built: float, git: str) -> Path:
    """The Triton-style platform tarball; every file under x86_64/ that has a .hash gets one. Members are
    in a fixed order with owner root, mode 0644 and mtime `built` (the source date), and the gzip header
    carries `built` too."""
    import gzip

    tmp = out.with_name(f".{out.name}.tmp")

    def fixed(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = int(built), 0, 0, "root", "root"
        info.mode = 0o644
        return info

    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=int(built)) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):

        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            import io

            tar.addfile(fixed(info), io.BytesIO(data))

        add_bytes(
            "platform/etc/version/platform",
            time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(built)).encode() + b"\n",
        )
        add_bytes("platform/etc/version/os-release", os_release.encode())
        add_bytes("platform/etc/version/gitstatus", git.encode())
        for name, path in files.items():
            tar.add(path, arcname=f"platform/x86_64/{name}", recursive=False, filter=fixed)
            if name in ("initrd", "filesystem.squashfs"):
                add_bytes(f"platform/x86_64/{name}.hash", (sha256_file(path) + "\n").encode())
    tmp.replace(out)
    return out


def produce(
    disk: Path,
    build_dir: Path,
    name: str,
    formats: Sequence[str],
    packages_file: Path,
    repo_root: Path,
    work: Path,
    *,
    kernel_params: str = "",
    runtime: Runtime,
    log_file: IO[str] | None = None,
    say: Any = None,
    epoch: int = 0,
    seed: str = "",
    base: Path | None = None,
    tree: Path | None = None,
) -> list[Path]:
    """Write the live formats in `formats` into build_dir from the finished disk; returns the files made.
    `epoch` is the build's source date (0: now, not reproducible), `seed` what the ISO's ESP serial comes
    from (the stage ID). With `overlay`, `base` is the base squashfs (the os stage's root, made once per os
    stage by kiln.build.finalize): the overlay holds the rest, and the ISO and netboot set boot the stack.
    `tree` is the root the disk was made from (the chroot runner's last tree), used and changed in place
    instead of a raw copy of the disk mounted: the same files, without decompressing the disk again."""
    if not live_wanted(formats):
        return []
    layered = "overlay" in formats
    if layered and base is None:
        raise BuildError(f"{build_dir}: format overlay: no base squashfs to put the overlay on")
    full = any(f in formats for f in ("squashfs", "platform")) or (
        not layered and any(f in formats for f in ("iso", "netboot"))
    )
    made: list[Path] = []
    note = say or (lambda _t: None)
    work.mkdir(parents=True, exist_ok=True)
    sq_dir = build_dir / SQUASHFS_DIR
    squash = sq_dir / "filesystem.squashfs"
    kernel = work / "vmlinuz"
    initrd = work / "initrd"
    manifest = work / "root.manifest"
    built = epoch or time.time()
    stack: list[Path] = []
    root: contextlib.AbstractContextManager[Path] = (
        contextlib.nullcontext(tree) if tree is not None else root_tree(disk, work, runtime, log_file)
    )
    with root as tree:
        kept = modules_kept_from_loading(tree)
        if kept:  # before anything is made: the live initrd would carry these, and its boot fail
            raise BuildError(
                f"{name}: the live formats could not boot: the image's modprobe configuration, "
                "which its initrd carries, keeps a module live-boot loads from loading:\n  "
                + "\n  ".join(kept),
                hint="drop the line, or build without live formats (formats: qcow2 ova); dev-sec's "
                "os_hardening writes one for each file system in os_unused_filesystems",
            )
        live_fstab(tree)
        note("manifest of every path in the root")
        write_manifest(tree, manifest)
        if full:
            note("squashfs: the root file system")
            sq_dir.mkdir(exist_ok=True)
            make_squashfs(tree, squash, runtime, log_file, epoch)
        if layered:
            assert base is not None
            note("overlay: what this version adds to the base, as an overlay squashfs")
            out = build_dir / layers.DIR
            made += layers.make_overlay(tree, base, out, work, manifest, epoch=epoch, runtime=runtime,
                                 log_file=log_file, say=note)  # fmt: skip
            stack = [out / layers.BASE, out / layers.OVERLAY]
        os_release = (
            (tree / "etc" / "os-release").read_text() if (tree / "etc" / "os-release").is_file() else ""
        )
        note("live initrd: mkinitramfs with live-boot in a chroot of the image")
        kver = live_initrd(tree, initrd, runtime, log_file, epoch)
        shutil.copyfile(tree / "boot" / f"vmlinuz-{kver}", kernel)
    if full:
        write_hash(squash)
        shutil.copyfile(manifest, sq_dir / "filesystem.manifest")
        shutil.copyfile(packages_file, sq_dir / "filesystem.packages")
        made += [squash, Path(f"{squash}.hash")]
        made += [sq_dir / "filesystem.manifest", sq_dir / "filesystem.packages"]
    if "iso" in formats:
        note("iso: hybrid BIOS/UEFI live ISO (grub-mkrescue, xorriso)" + (", stacked" if layered else ""))
        iso = build_dir / f"{name}.iso"
        made.append(make_iso(name, kernel, initrd, stack or squash, iso, work, runtime, log_file,
                             kernel_params, epoch=epoch, seed=seed))  # fmt: skip
        made.append(Path(f"{iso}.sha256"))
        Path(f"{iso}.sha256").write_text(sha256_file(iso))
    if "netboot" in formats:
        net = build_dir / NETBOOT_DIR
        net.mkdir(exist_ok=True)
        shutil.copyfile(kernel, net / "vmlinuz")
        shutil.copyfile(initrd, net / "initrd")
        if layered:
            for image in stack:
                os.link(image, net / image.name)
            (net / layers.NETBOOT_CPIO).write_bytes(layers.netboot_cpio([i.name for i in stack]))
            files = [*(i.name for i in stack), layers.NETBOOT_CPIO]
        else:
            os.link(squash, net / "filesystem.squashfs")
            files = ["filesystem.squashfs"]
        images = [i.name for i in stack] or None
        script = ipxe_script(name, "http://SERVER/PATH", kernel_params=kernel_params, images=images)
        (net / "boot.ipxe").write_text(script)
        made += [net / n for n in ("vmlinuz", "initrd", *files, "boot.ipxe")]
    if "platform" in formats:
        note("platform: the Triton-style tarball")
        files_in = {
            "vmlinuz": kernel,
            "initrd": initrd,
            "filesystem.squashfs": squash,
            "filesystem.packages": sq_dir / "filesystem.packages",
            "filesystem.manifest": sq_dir / "filesystem.manifest",
        }
        tgz = build_dir / f"{name}.platform.tgz"
        made.append(make_platform(tgz, files_in, os_release, built, gitstatus(repo_root, runtime)))
    return made
