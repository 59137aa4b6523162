"""The `bootstrap` install method: a bootable GPT base disk made from Debian packages, cached by input hash.

Steps (all as root, no partition loop devices needed):
  1. mmdebstrap the suite into a directory (kernel, systemd, openssh-server, cloud-init, python3, sudo, grub).
  2. Write fstab, hostname and GRUB defaults into that tree, and GRUB's files (its modules, core.img, the
     EFI image and grub.cfg) as grub-install and update-grub would (kiln.build.bootloader).
  3. Make a sparse raw disk with a GPT: BIOS boot partition (1 MiB), ESP (FAT32), root (ext4). The ESP is
     formatted in place (`mkfs.fat --offset`), the root filesystem is created and filled from the tree in
     place (`mkfs.ext4 -E offset=... -d TREE`).
  4. Install GRUB offline: boot.img into the MBR, core.img into the BIOS boot partition, the EFI image to
     the ESP's removable path. The disk now boots by itself on BIOS and on UEFI, and no VM was booted to
     make it. kiln then sets every time on the ESP to the source date.
  5. Convert to qcow2 and publish into the cache atomically (temp dir + rename).

The cache key hashes every input: suite, mirror, package list, disk size, the bootstrap code version
(LAYOUT_VERSION) and the files in bootstrap/. A second build with the same inputs reuses the base
and says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from kiln.artifacts import kernel
from kiln.build import bootloader, cachecheck, fat, stages
from kiln.build.stages import STAGE_SOURCE_DATE
from kiln.config import Config
from kiln.config.settings import BY_NAME
from kiln.core import digests, proc, tempdirs
from kiln.core.errors import BuildError, InputError
from kiln.core.runtime import Runtime

log = logging.getLogger(__name__)

# kiln's bootstrap code version: bump whenever this module changes what ends up on the base disk.
# 2: disk, partition and filesystem ids derived from the key, not random
# 3: the ESP's FAT times set to the source date after the GRUB VM (they were that VM's clock)
# 4: GRUB installed offline (kiln.build.bootloader), no GRUB VM; kiln writes grub.cfg
# 5: grub.cfg from the defaults as sh sources them, with update-grub's ids and next_entry; grub.efi as
#    grub-install makes it
# 6: made under kiln's umask 022 whatever the caller's (a base made from a 077 shell had 0600 files)
# 7: an empty /etc/resolv.conf, not the build host's (mmdebstrap's copy); hostname and hosts 0644
# 8: sources.list names Debian's public mirror, not the mirror the base was made from
LAYOUT_VERSION = 8
PUBLIC_MIRROR = "http://deb.debian.org/debian"  # the image's own apt source (a bootstrap target is Debian)

SECTOR = bootloader.SECTOR
MIB = 1024 * 1024
IN_OWN_MOUNTS = ["unshare", "--mount", "--propagation", "private", "--"]  # kiln.build.chroot.IN_NAMESPACE too
BIOS_BOOT_MIB = 1
ESP_MIB = 100
FIRST_MIB = 1  # the GPT and alignment before partition 1

GUID_BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
GUID_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
GUID_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

# What a base disk needs to boot, reach the network, take a cloud-init seed and be provisioned by Ansible.
# `bootstrap_packages` from the config is added to these.
REQUIRED_PACKAGES = (
    "linux-image-amd64",
    "initramfs-tools",
    # the compressor initramfs.conf names (COMPRESS=zstd; initramfs-tools only recommends it): without it
    # mkinitramfs falls back to gzip: an initrd a fifth larger (a netboot client fetches it; 0.5 s a boot)
    "zstd",
    "systemd-sysv",
    "udev",
    "kmod",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "grub2-common",
    "dosfstools",
    "e2fsprogs",
    "openssh-server",
    "cloud-init",
    "cloud-guest-utils",
    "iproute2",
    "netbase",
    "python3",
    "python3-apt",
    "sudo",
    "ca-certificates",
    "gnupg",
)
# ...and the network stack cloud-init configures at boot, by `bootstrap_network`. networkd needs resolved:
# systemd-networkd hands the name servers DHCP gives to systemd-resolved only, not to /etc/resolv.conf
NETWORK_PACKAGES = {
    "ifupdown": ("ifupdown", "isc-dhcp-client"),
    "networkd": ("systemd-resolved",),
}
RESOLVED_STUB = "../run/systemd/resolve/stub-resolv.conf"  # /etc/resolv.conf as systemd-resolved makes it


@dataclass(frozen=True)
class Partition:
    number: int
    name: str
    start: int  # sectors
    size: int  # sectors
    type_guid: str

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def size_bytes(self) -> int:
        return self.size * SECTOR


def layout(disk_size_mib: int) -> list[Partition]:
    """The partition table of a base disk of `disk_size_mib` MiB: BIOS boot, ESP, root (the rest)."""
    min_mib = FIRST_MIB + BIOS_BOOT_MIB + ESP_MIB + 512 + 1
    if disk_size_mib < min_mib:
        raise InputError(
            f"disk_size: {disk_size_mib} MiB is too small for a bootstrap base (minimum {min_mib})"
        )
    per_mib = MIB // SECTOR
    bios_start = FIRST_MIB * per_mib
    esp_start = bios_start + BIOS_BOOT_MIB * per_mib
    root_start = esp_start + ESP_MIB * per_mib
    # leave the last MiB for the backup GPT (33 sectors) and alignment
    root_size = (disk_size_mib - 1) * per_mib - root_start
    return [
        Partition(1, "bios", bios_start, BIOS_BOOT_MIB * per_mib, GUID_BIOS_BOOT),
        Partition(2, "esp", esp_start, ESP_MIB * per_mib, GUID_ESP),
        Partition(3, "root", root_start, root_size, GUID_LINUX),
    ]


def sfdisk_script(parts: Iterable[Partition], disk_guid: str) -> str:
    """The sfdisk input that writes `parts` as a GPT, every GUID derived from the disk's (sfdisk would draw
    the partitions' at random)."""
    lines = ["label: gpt", f"label-id: {disk_guid}", "unit: sectors", ""]
    for p in parts:
        part_guid = uuid.uuid5(uuid.UUID(disk_guid), f"partition-{p.number}")
        lines.append(f"start={p.start}, size={p.size}, type={p.type_guid}, uuid={part_guid}, name={p.name}")
    return "\n".join(lines) + "\n"


def disk_ids(key: str) -> tuple[str, str, str]:
    """(root filesystem UUID, ESP serial, disk GUID) of the base disk with cache key `key`: derived from the
    key, so that two builds of one base from an empty cache make the same disk (never random)."""
    space = uuid.uuid5(uuid.NAMESPACE_URL, f"https://kiln.invalid/bootstrap/{key}")
    esp_serial = hashlib.sha256(f"{space}:esp".encode()).hexdigest()[:8].upper()
    return str(uuid.uuid5(space, "root")), esp_serial, str(uuid.uuid5(space, "disk"))


@dataclass(frozen=True)
class BaseSpec:
    """Every input of a base disk. Its key names the cache entry."""

    suite: str
    mirror: str
    packages: tuple[str, ...]
    disk_size_mib: int
    files_digest: str = ""
    layout_version: int = LAYOUT_VERSION
    network: str = "ifupdown"  # bootstrap_network
    # SOURCE_DATE_EPOCH for mmdebstrap and the maintainer scripts it runs (the kernel's initrd, made by
    # update-initramfs then, was gzip with the run's own times and temp name: two bases, two initrds)
    source_date: int = 0

    def key(self) -> str:
        """What lands on the disk; not where the packages came from (the mirror is left out)."""
        fields = {k: v for k, v in asdict(self).items() if k != "mirror"}
        if stages.as_before("bootstrap_network", self.network):  # the stack before there was a choice
            del fields["network"]
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:24]


def files_digest(repo_root: Path) -> str:
    """Hash of the files in bootstrap/ (the GRUB defaults) that shape the base disk.

    Changes to this module's procedure bump LAYOUT_VERSION instead, so that edits which do not change the
    disk (comments, formatting) keep the cache.
    """
    h = hashlib.sha256()
    folder = repo_root / "bootstrap"
    for path in sorted(folder.glob("*")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def spec_from_config(values: Any, repo_root: Path) -> BaseSpec:
    """BaseSpec from a Config (or a plain mapping of config values)."""
    given = values.values if isinstance(values, Config) else values

    def get(key: str) -> Any:  # a Config has every key; a partial mapping takes the table's defaults
        return given.get(key, BY_NAME[key].default)

    extra = get("bootstrap_packages") or []
    if isinstance(extra, str):
        extra = [p for p in extra.replace(",", " ").split() if p]
    network = str(get("bootstrap_network"))
    packages = tuple(
        sorted(set(REQUIRED_PACKAGES) | set(NETWORK_PACKAGES[network]) | {str(p) for p in extra})
    )
    return BaseSpec(
        suite=str(get("bootstrap_suite")),
        mirror=str(get("bootstrap_mirror")),
        packages=packages,
        disk_size_mib=int(get("disk_size")),
        files_digest=files_digest(repo_root),
        source_date=int(get("source_date_epoch") or STAGE_SOURCE_DATE),
        network=network,
    )


@dataclass(frozen=True)
class BaseImage:
    """A finished, cached base disk."""

    key: str
    dir: Path
    cached: bool  # True when reused from the cache
    info: dict[str, object] = field(default_factory=dict)

    @property
    def disk(self) -> Path:
        return self.dir / "base.qcow2"

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def root_uuid(self) -> str:
        return str(self.info.get("root_uuid", ""))


def _used(base: BaseImage) -> BaseImage:
    """Record a reuse: info.json's mtime is the entry's last use (kiln cache ls / prune)."""
    with contextlib.suppress(OSError):
        os.utime(base.dir / stages.BASE_INFO)
    return base


def ensure_base(
    spec: BaseSpec,
    cache_dir: Path,
    repo_root: Path,
    *,
    log_file: IO[str] | None = None,
    say: Callable[[str], None] = print,
    runtime: Runtime,
) -> BaseImage:
    """Return the cached base for `spec`, building it first when the cache has none.

    Concurrent builds of the same key serialise on a lock file; the loser of the race reuses the winner's
    result. A half-built base never becomes visible (built in a temp dir, then renamed).
    """
    root = proc.ensure_dir(cache_dir / stages.BASE_ROOT)
    key = spec.key()
    info, problem = cachecheck.base_check(root / key)
    if info is not None and problem is None and "digests" in info:
        say(f"base: reusing cached base disk {root / key} (key {key}, inputs unchanged)")
        return _used(BaseImage(key, root / key, True, info))
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info, problem = cachecheck.base_check(root / key)
        if info is not None and problem is None:  # made by a concurrent run, or cached before digests
            say(f"base: reusing cached base disk {root / key} (key {key}, inputs unchanged)")
            return _used(BaseImage(key, root / key, True, cachecheck.keep_digests(root / key, info)))
        if os.geteuid() != 0:
            raise InputError(
                "bootstrap: building the base disk needs root (mmdebstrap into a directory, mkfs -d)"
                + (f"; the cached one cannot be used ({problem})" if problem else ""),
                hint="run the build as root, or use install_method installer/cloudimg",
            )
        if problem is not None:  # kiln made it: removed, with the stages built on its disk
            if runtime.dry_run:
                raise BuildError(f"base: the cached base disk is damaged ({problem})",
                                 hint="a build (not a dry run) removes it and builds it again")  # fmt: skip
            gone = cachecheck.evict_base(cache_dir, key)
            say(f"base: the cached base disk is damaged ({problem}): {gone}; building it again")
        say(f"base: no cached base for key {key}; building it ({spec.suite} from {spec.mirror})")
        owned = tempdirs.create(root, key)
        work = owned.path
        try:
            info = _build(spec, work, repo_root, log_file=log_file, say=say, runtime=runtime)
            shutil.rmtree(work / "rootfs", ignore_errors=True)
            # checked on every reuse (kiln.build.cachecheck.base_check)
            info["digests"] = digests.entry_digests(work, stages.BASE_INFO)
            digests.save(work / stages.BASE_INFO, info)
            os.rename(work, root / key)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        finally:
            owned.release()
    say(f"base: cached as {root / key}")
    return BaseImage(key, root / key, False, info)


def _build(
    spec: BaseSpec,
    work: Path,
    repo_root: Path,
    *,
    log_file: IO[str] | None,
    say: Callable[[str], None],
    runtime: Runtime,
) -> dict[str, object]:
    started = time.monotonic()
    tree = work / "rootfs"
    say(f"base: mmdebstrap {spec.suite} ({len(spec.packages)} packages; a few minutes)")
    # mmdebstrap's own temp files (its gpg home, apt's config) in this build's temp dir, not the host's
    # /tmp: after a kill -9 they go with the dir, which the next run collects
    own_tmp = work / "tmp"
    own_tmp.mkdir(mode=0o700, exist_ok=True)
    proc.run(
        [
            # in a mount namespace of its own: the /proc, /sys and /dev mmdebstrap mounts in the tree go with
            # it however it ends (the watchdog's kill -9 included), not only when it unmounts them itself
            *IN_OWN_MOUNTS,
            "mmdebstrap",
            "--variant=apt",
            "--mode=root",
            "--format=directory",
            f"--include={','.join(spec.packages)}",
            '--customize-hook=rm -f "$1"/etc/ssh/ssh_host_*',
            # no fsync per file: a failed or interrupted run's tree is thrown away anyway. mmdebstrap keeps
            # --dpkgopt options in the tree (dpkg.cfg.d/99mmdebstrap): the hook takes it out again
            "--dpkgopt=force-unsafe-io",
            '--customize-hook=rm -f "$1"/etc/dpkg/dpkg.cfg.d/99mmdebstrap',
            *_network_hooks(spec.network),
            spec.suite,
            str(tree),
            spec.mirror,
        ],
        env=proc.tree_env(runtime),
        extra_env={
            "TMPDIR": str(own_tmp),
            **({"SOURCE_DATE_EPOCH": str(spec.source_date)} if spec.source_date else {}),
        },
        log_file=log_file,
        runtime=runtime,
        capture=False,
        tail_lines=60,
    )
    shutil.rmtree(own_tmp, ignore_errors=True)
    root_uuid, esp_serial, disk_guid = disk_ids(spec.key())
    esp_uuid = f"{esp_serial[:4]}-{esp_serial[4:]}"
    _customize_tree(tree, repo_root, spec, root_uuid, esp_uuid)
    vmlinuz, initrd = _kernel_files(tree)
    shutil.copy2(vmlinuz, work / "vmlinuz")
    shutil.copy2(initrd, work / "initrd.img")
    parts = layout(spec.disk_size_mib)
    bios, esp, root = parts
    images = bootloader.prepare_tree(tree, root.number, root_uuid, vmlinuz.name.removeprefix("vmlinuz-"),
                                     log_file=log_file, runtime=runtime)  # fmt: skip

    say("base: partitioning and filling the disk (GPT: bios_grub, ESP, ext4 root)")
    raw = work / "base.raw"
    with open(raw, "wb") as f:
        f.truncate(spec.disk_size_mib * MIB)
    proc.run(
        ["sfdisk", "--quiet", str(raw)],
        input_text=sfdisk_script(parts, disk_guid),
        log_file=log_file,
        runtime=runtime,
    )
    proc.run(
        [
            "mkfs.fat", "-F", "32", "-s", "1", "-n", "EFI", "-i", esp_serial,
            f"--offset={esp.start}", str(raw), str(esp.size_bytes // 1024),
        ],
        log_file=log_file,
        runtime=runtime,
    )  # fmt: skip
    make_root_fs(raw, root, root_uuid, tree, log_file=log_file, runtime=runtime)

    say("base: installing GRUB (BIOS + UEFI) offline: MBR, BIOS boot partition, ESP")
    bootloader.install_disk(raw, images, bios_boot=(bios.start, bios.size), esp_offset=esp.offset,
                            log_file=log_file, runtime=runtime)  # fmt: skip
    # mtools wrote the ESP's entries on this machine's clock: every FAT time to the source date instead
    fat.set_fat_times(raw, esp.offset, spec.source_date)

    say("base: converting to qcow2")
    proc.run(
        ["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "base.qcow2")],
        log_file=log_file,
        runtime=runtime,
    )
    raw.unlink()
    return {
        "key": spec.key(),
        "spec": asdict(spec),
        "root_uuid": root_uuid,
        "esp_uuid": esp_uuid,
        "partitions": [asdict(p) for p in parts],
        "kernel": vmlinuz.name,
        "seconds": round(time.monotonic() - started, 1),
    }


def make_root_fs(
    raw: Path,
    root: Partition,
    root_uuid: str,
    tree: Path,
    *,
    epoch: int | None = None,
    hash_seed: str | None = None,
    log_file: IO[str] | None,
    runtime: Runtime,
) -> None:
    """The root filesystem of a disk, made in place in its partition and filled from `tree` (no mount).

    With `epoch` (reproducible images) the filesystem's own times are `epoch` (E2FSPROGS_FAKE_TIME), its
    directory hash seed is `hash_seed`, and every inode's ctime and atime (mkfs copies them from the tree,
    where no one can set a ctime and mkfs's own reading moves the atime) are rewritten to `epoch` with
    debugfs. The tree's mtimes must be clamped already."""
    extended = f"offset={root.offset}" + (f",hash_seed={hash_seed}" if hash_seed else "")
    proc.run(
        [
            "mkfs.ext4", "-q", "-F", "-L", "root", "-U", root_uuid,
            "-E", extended, "-d", str(tree), str(raw), f"{root.size_bytes // 1024}k",
        ],
        extra_env={"E2FSPROGS_FAKE_TIME": str(epoch)} if epoch is not None else None,
        log_file=log_file,
        runtime=runtime,
    )  # fmt: skip
    if epoch is None:
        return
    script = raw.with_name(raw.name + ".ctimes")
    with open(script, "w") as fh:
        for path in ["/", *_tree_paths(tree)]:
            # ctime from the unpack, atime from mkfs's own reading of the tree: to the epoch, the atime one
            # second after it (relatime writes an atime that is not newer than the ctime on every read: a
            # `find /` in the booted image would write every directory's inode)
            fh.write(f'sif "{path}" ctime @{epoch}\nsif "{path}" atime @{epoch + 1}\n')
    try:
        proc.run(
            ["debugfs", "-w", "-f", str(script), f"{raw}?offset={root.offset}"],
            extra_env={"E2FSPROGS_FAKE_TIME": str(epoch)},  # the superblock's write time
            log_file=None,  # 80,000 lines of "sif": not for the log
            runtime=runtime,
        )
    finally:
        script.unlink(missing_ok=True)


def _tree_paths(tree: Path) -> list[str]:
    """Every path under `tree`, as debugfs names it inside the filesystem; names debugfs cannot quote
    (a double quote or a newline) are left out."""
    out = []
    for top, dirs, files in os.walk(tree):
        rel = "/" + os.path.relpath(top, tree) if top != str(tree) else ""
        for name in dirs + files:
            path = f"{rel}/{name}"
            if '"' not in path and "\n" not in path:
                out.append(path)
    return out


def _network_hooks(network: str) -> list[str]:
    """mmdebstrap hooks for the network stack: systemd-networkd enabled as `systemctl enable` does it, by
    the tree's own systemctl (Debian installs it disabled; systemd-resolved enables itself)."""
    if network != "networkd":
        return []
    return ['--customize-hook=chroot "$1" systemctl enable systemd-networkd.service']


# cloud-init picks the first renderer whose tools it finds; kiln names the one the base was made for
CLOUD_INIT_NETWORKD = """\
# kiln bootstrap (bootstrap_network: networkd): cloud-init writes systemd-networkd's units
system_info:
  network:
    renderers: [networkd]
    activators: [networkd]
"""


def _network_files(etc: Path, network: str) -> None:
    """The network stack's own files: where cloud-init's config goes and where the name servers come from."""
    if network == "networkd":
        # resolved's link (its postinst made it, and kept the build host's resolv.conf it replaced as a
        # backup: gone); the node's resolver fills the stub at boot, and a stage gets the build host's
        # servers there (kiln.build.standins)
        (etc / ".resolv.conf.systemd-resolved.bak").unlink(missing_ok=True)
        (etc / "resolv.conf").unlink(missing_ok=True)
        (etc / "resolv.conf").symlink_to(RESOLVED_STUB)
        (etc / "cloud" / "cloud.cfg.d" / "05_kiln_network.cfg").write_text(CLOUD_INIT_NETWORKD)
        return
    (etc / "resolv.conf").unlink(missing_ok=True)
    (etc / "resolv.conf").write_text("")
    (etc / "resolv.conf").chmod(0o644)
    # cloud-init renders the real network config (ENI) from its datasource; this only sources it
    (etc / "network" / "interfaces").write_text(
        "# kiln bootstrap: cloud-init writes interfaces.d/50-cloud-init\n"
        "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n"
    )
    (etc / "network" / "interfaces.d").mkdir(exist_ok=True)


def _customize_tree(tree: Path, repo_root: Path, spec: BaseSpec, root_uuid: str, esp_uuid: str) -> None:
    etc = tree / "etc"
    (etc / "fstab").write_text(
        "# kiln bootstrap: filesystems by UUID\n"
        f"UUID={root_uuid} / ext4 errors=remount-ro,discard 0 1\n"
        f"UUID={esp_uuid} /boot/efi vfat umask=0077 0 1\n"
    )
    (tree / "boot" / "efi").mkdir(parents=True, exist_ok=True)
    # mmdebstrap copies the build host's /etc/hostname and /etc/resolv.conf into the tree, modes included (and
    # left both there): the image gets its own, and the node's DHCP client or resolver names its servers
    hosts = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
    for name, text in (("hostname", "localhost\n"), ("hosts", hosts)):
        (etc / name).unlink(missing_ok=True)
        (etc / name).write_text(text)
        (etc / name).chmod(0o644)
    _network_files(etc, spec.network)
    # Debian's public mirror, whichever mirror made the base (bootstrap_mirror says where packages come from
    # and is not in the base's key): each stage points apt at its own build's mirror while it runs (the node
    # role's apt-build.yml), and the image keeps this
    (etc / "apt" / "sources.list").write_text(
        f"deb {PUBLIC_MIRROR} {spec.suite} main\ndeb {PUBLIC_MIRROR} {spec.suite}-updates main\n"
    )
    shutil.copy2(repo_root / "bootstrap" / "grub.cfg", etc / "default" / "grub")
    # no identity baked into the base: machine-id empty (systemd fills it at first boot), no host keys
    (etc / "machine-id").write_text("")
    dbus_id = tree / "var" / "lib" / "dbus" / "machine-id"
    if dbus_id.is_file() or dbus_id.is_symlink():
        dbus_id.unlink()
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()


def _kernel_files(tree: Path) -> tuple[Path, Path]:
    if not kernel.installed(tree):
        raise BuildError(
            f"{tree}/boot: no kernel with an initrd after mmdebstrap (is linux-image-amd64 included?)"
        )
    version = kernel.newest(tree)
    return tree / "boot" / f"vmlinuz-{version}", tree / "boot" / f"initrd.img-{version}"
