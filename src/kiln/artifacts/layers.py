"""Squashfs images of a root (mksquashfs, the root's manifest) and base + overlay: one base squashfs per os
stage, and per Kubernetes version an overlay squashfs with only what that version's kubernetes and finalize
stages changed, stacked by live-boot at boot.

The overlay is the difference between the finished live root and the base root, as overlayfs reads a
stack of lower layers: files, links and devices that are new or differ (content, mode, owner, xattrs, link
target) are in the overlay whole; a directory is in it when something under it is or its own metadata
differs; a path of the base that the finished root no longer has is a whiteout (a 0/0 character device),
which overlayfs honours in every lower layer but the last. Modification times are not compared: both
squashfs images are made with the build's SOURCE_DATE_EPOCH.

live-boot stacks the images a `filesystem.module` file lists (the later one on top); its default module is
`filesystem`, so no kernel argument is needed. A live ISO carries the module file beside the images in
/live/. A netboot client gets the images as extra initrds that iPXE wraps in cpio headers, under a
directory that a small cpio archive (kiln-live.cpio) makes first, and live-boot finds them there through
`live-media=/kiln-live` (a directory is a medium to it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kiln.core import proc
from kiln.core.builddir import sha256_file
from kiln.core.errors import BuildError
from kiln.core.runtime import Runtime

DIR = "overlay"  # in the build dir
BASE = "base.squashfs"
OVERLAY = "overlay.squashfs"
MODULE = "filesystem.module"  # live-boot's default module: the images it stacks, bottom first
INFO = "overlay.json"
NETBOOT_MEDIUM = "kiln-live"  # the directory in the netboot initramfs that live-boot takes as its medium
NETBOOT_CPIO = "kiln-live.cpio"
SKIP = ("lost+found",)  # a file system's own directory, not the root's (mksquashfs leaves it out too)
_BLOCK = 1 << 20

TYPES = (
    (stat.S_ISREG, "f"),
    (stat.S_ISDIR, "d"),
    (stat.S_ISLNK, "l"),
    (stat.S_ISCHR, "c"),
    (stat.S_ISBLK, "b"),
    (stat.S_ISFIFO, "p"),
    (stat.S_ISSOCK, "s"),
)


def source_date_env(epoch: int) -> dict[str, str]:
    return {"SOURCE_DATE_EPOCH": str(epoch)} if epoch else {}


def make_squashfs(tree: Path, out: Path, runtime: Runtime, log_file: IO[str] | None, epoch: int = 0) -> Path:
    """zstd squashfs of `tree`; with `epoch`, file times after it are clamped to it and it is the
    creation time (mksquashfs's SOURCE_DATE_EPOCH rule; its output order is reproducible by default).
    `-no-sparse`: mksquashfs 4.5 writes a file with holes differently from the same bytes written out (an
    extended inode), so the same root made other bytes as a tree a stage wrote (holes where a program
    seeked), unpacked from the stage cache's tar (none), or on the ext4 disk (mkfs.ext4 -d makes holes of
    zero blocks). Without it, zero blocks are stored compressed, a few bytes each."""
    proc.run(
        [
            "mksquashfs",
            str(tree),
            str(out),
            "-noappend",
            "-comp",
            "zstd",
            "-Xcompression-level",
            "6",
            "-wildcards",
            "-no-sparse",
            "-quiet",
            "-e",  # the last option: mksquashfs takes every argument after it as a name to leave out
            "lost+found",
        ],
        extra_env=source_date_env(epoch),
        log_file=log_file,
        runtime=runtime,
    )
    return out


def write_manifest(tree: Path, out: Path) -> Path:
    """Every path of the root as its squashfs holds it (no file system's lost+found): type, mode (octal),
    uid:gid, size ("-" for a directory, whose size is each file system's own: the same root in a directory
    of the build host and on the image's ext4 lists the same), sha256 (files) and link target (symlinks)."""
    lines = []
    for dirpath, dirnames, filenames in os.walk(tree):
        if dirpath == str(tree):
            dirnames[:] = [d for d in dirnames if d not in SKIP]
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = os.lstat(path)
            kind = next((k for test, k in TYPES if test(st.st_mode)), "?")
            rel = "/" + str(path.relative_to(tree))
            digest = sha256_file(path) if kind == "f" else "-"
            extra = f"\t-> {os.readlink(path)}" if kind == "l" else ""
            size = "-" if kind == "d" else str(st.st_size)
            lines.append(
                f"{rel}\t{kind}\t{stat.S_IMODE(st.st_mode):04o}\t{st.st_uid}:{st.st_gid}\t{size}\t{digest}{extra}"
            )
    out.write_text("\n".join(lines) + "\n")
    return out


@dataclass
class Diff:
    """What an overlay holds, counted."""

    files: int = 0  # regular files, links, devices, sockets and pipes that are new or changed
    dirs: int = 0  # directories made in the overlay (new, changed, or on the way to a change)
    whiteouts: int = 0
    bytes: int = 0  # of the regular files copied

    def summary(self) -> str:
        return (
            f"{self.files} files ({self.bytes / 1e6:.1f} MB), {self.whiteouts} whiteouts, "
            f"{self.dirs} directories"
        )


def module_text(images: Sequence[str]) -> str:
    return "\n".join(images) + "\n"


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        with contextlib.suppress(OSError):
            out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


def _same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(_BLOCK), fb.read(_BLOCK)
            if x != y:
                return False
            if not x:
                return True


def _same(a: str, sa: os.stat_result, b: str, sb: os.stat_result) -> bool:
    """Path `a` of the finished root is `b` of the base as overlayfs would show it (times aside)."""
    if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
        return False
    if (sa.st_mode, sa.st_uid, sa.st_gid) != (sb.st_mode, sb.st_uid, sb.st_gid):
        return False
    if _xattrs(a) != _xattrs(b):
        return False
    if stat.S_ISLNK(sa.st_mode):
        return os.readlink(a) == os.readlink(b)
    if stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
        return sa.st_rdev == sb.st_rdev
    if stat.S_ISREG(sa.st_mode):
        return sa.st_size == sb.st_size and _same_bytes(a, b)
    return True  # a directory (its entries are compared one by one), a pipe or a socket


def _copy_meta(src: str, st: os.stat_result, dst: str) -> None:
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    for name, value in _xattrs(src).items():
        os.setxattr(dst, name, value, follow_symlinks=False)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_entry(src: str, st: os.stat_result, dst: str, links: dict[tuple[int, int], str]) -> int:
    """`src` into the overlay at `dst` (a hard link where the root has one between copied files)."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            os.link(links[key], dst)
            return 0
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            while block := fi.read(_BLOCK):
                fo.write(block)
        links[key] = dst
        _copy_meta(src, st, dst)
        return st.st_size
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
        os.mknod(dst, mode, st.st_rdev)
    elif stat.S_ISSOCK(mode):  # a socket left in a tree: overlayfs shows it, so copy it as the node it is
        os.mknod(dst, mode)
    else:
        raise BuildError(f"{src}: a file type the overlay cannot hold ({stat.filemode(mode)})")
    _copy_meta(src, st, dst)
    return 0


def diff_tree(final: Path, base: Path, out: Path) -> Diff:
    """Write into the empty directory `out` the overlay that turns `base` into `final` (see the module's
    docstring). Needs root for owners, devices and the whiteouts."""
    counts = Diff()
    links: dict[tuple[int, int], str] = {}
    out_st = os.lstat(final)
    made: set[str] = {""}  # overlay dirs made, relative paths

    def ensure_dir(rel: str) -> None:
        """Make `rel` and its parents in the overlay, each with the finished root's metadata."""
        if rel in made:
            return
        ensure_dir(os.path.dirname(rel))
        src = os.path.join(final, rel)
        st = os.lstat(src)
        os.mkdir(os.path.join(out, rel))
        _copy_meta(src, st, os.path.join(out, rel))
        made.add(rel)
        counts.dirs += 1

    def walk(rel: str) -> None:
        fdir, bdir = os.path.join(final, rel), os.path.join(base, rel)
        fnames = set(os.listdir(fdir))
        bnames = set(os.listdir(bdir)) if os.path.isdir(bdir) and not os.path.islink(bdir) else set()
        if rel == "":
            fnames -= set(SKIP)
            bnames -= set(SKIP)
        for name in sorted(bnames - fnames):  # gone from the root: a whiteout hides the base's entry
            ensure_dir(rel)
            os.mknod(os.path.join(out, rel, name), stat.S_IFCHR | 0o000, os.makedev(0, 0))
            counts.whiteouts += 1
        for name in sorted(fnames):
            r = os.path.join(rel, name)
            f = os.path.join(final, r)
            sf = os.lstat(f)
            b = os.path.join(base, r)
            sb = os.lstat(b) if name in bnames else None
            if stat.S_ISDIR(sf.st_mode):
                if sb is None or not stat.S_ISDIR(sb.st_mode) or not _same(f, sf, b, sb):
                    ensure_dir(r)  # new, replacing a non-directory, or its own metadata changed
                    if sb is not None and not stat.S_ISDIR(sb.st_mode):
                        _copy_tree(r)  # nothing of the base below it: the whole directory
                        continue
                walk(r)
                continue
            if sb is not None and _same(f, sf, b, sb):
                continue
            ensure_dir(rel)
            counts.bytes += _copy_entry(f, sf, os.path.join(out, r), links)
            counts.files += 1

    def _copy_tree(rel: str) -> None:
        for top, dirs, files in os.walk(os.path.join(final, rel)):
            links_to_dirs = [d for d in dirs if os.path.islink(os.path.join(top, d))]
            dirs[:] = sorted(d for d in dirs if d not in links_to_dirs)
            for name in dirs:
                ensure_dir(os.path.relpath(os.path.join(top, name), final))
            for name in sorted(files + links_to_dirs):
                src = os.path.join(top, name)
                r = os.path.relpath(src, final)
                counts.bytes += _copy_entry(src, os.lstat(src), os.path.join(out, r), links)
                counts.files += 1

    _copy_meta(str(final), out_st, str(out))
    walk("")
    # a directory's times move with every entry made in it: set them last, deepest first (systemd compares
    # /usr's mtime with /etc/.updated at every boot: ConditionNeedsUpdate)
    for rel in sorted(made, key=lambda r: (-r.count(os.sep), r)):
        st = out_st if rel == "" else os.lstat(os.path.join(final, rel))
        os.utime(os.path.join(out, rel), ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    return counts


@contextlib.contextmanager
def mounted_stack(
    images: Sequence[Path], work: Path, *, log_file: IO[str] | None, runtime: Runtime
) -> Iterator[Path]:
    """`images` (bottom first) mounted read-only as one overlayfs, as live-boot stacks them; for checking
    an overlay against the root it was made from. Everything is unmounted on the way out."""
    mounts: list[Path] = []
    try:
        lowers: list[str] = []
        for i, image in enumerate(images):
            m = work / f"layer{i}"
            m.mkdir(parents=True, exist_ok=True)
            mounts.append(m)  # before the mount: an interrupt as it returns still finds it below
            proc.run(["mount", "-t", "squashfs", "-o", "loop,ro", str(image), str(m)], log_file=log_file,
                     runtime=runtime)  # fmt: skip
            lowers.insert(0, str(m))  # overlayfs: the first lowerdir is the top one
        if len(images) == 1:  # overlayfs wants two lower layers without an upper one
            yield mounts[0]
            return
        merged = work / "merged"
        merged.mkdir(exist_ok=True)
        mounts.append(merged)
        proc.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={':'.join(lowers)}", str(merged)],
                 log_file=log_file, runtime=runtime)  # fmt: skip
        yield merged
    finally:
        for m in reversed(mounts):
            if not os.path.ismount(m):
                continue
            done = proc.run(["umount", str(m)], check=False, log_file=log_file, runtime=runtime)
            if done.returncode != 0:  # busy: detach it now, the kernel lets go when the last user does
                proc.run(["umount", "-l", str(m)], check=False, log_file=log_file, runtime=runtime)
        with contextlib.suppress(OSError):
            for m in sorted(work.iterdir()):
                m.rmdir()
            work.rmdir()


def cpio_dirs(names: Sequence[str], files: dict[str, bytes] | None = None) -> bytes:
    """A newc cpio archive of the directories `names` (mode 0755, root) and small `files` (0644): the
    netboot initramfs's medium directory, made before iPXE's wrapped images land in it."""
    out = bytearray()
    ino = 0

    def entry(name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        nonlocal ino
        ino += 1
        raw = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(raw), 0]
        out.extend(b"070701" + b"".join(f"{v:08X}".encode() for v in fields) + raw)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for name in names:
        entry(name, stat.S_IFDIR | 0o755, nlink=2)
    for name, data in (files or {}).items():
        entry(name, stat.S_IFREG | 0o644, data)
    entry("TRAILER!!!", 0)
    out.extend(b"\0" * (-len(out) % 512))
    return bytes(out)


def netboot_cpio(images: Sequence[str]) -> bytes:
    live = f"{NETBOOT_MEDIUM}/live"
    return cpio_dirs([NETBOOT_MEDIUM, live], {f"{live}/{MODULE}": module_text(images).encode()})


def netboot_initrds(images: Sequence[str]) -> list[tuple[str, str]]:
    """(file served beside boot.ipxe, its name in the initramfs) for each image, after kiln-live.cpio."""
    return [(image, f"{NETBOOT_MEDIUM}/live/{image}") for image in images]


def comparable(manifest: str) -> list[str]:
    """A root manifest's lines (kiln.artifacts.formats.write_manifest) without directory sizes, which are
    each file system's own: two views of one root compare equal."""
    out = []
    for line in manifest.splitlines():
        cols = line.split("\t")
        if cols[0].lstrip("/") in SKIP:
            continue
        if len(cols) > 4 and cols[1] == "d":
            cols[4] = "-"
        out.append("\t".join(cols))
    return out


def make_overlay(
    tree: Path,
    base: Path,
    out: Path,
    work: Path,
    manifest: Path,
    *,
    epoch: int,
    runtime: Runtime,
    log_file: IO[str] | None,
    say: Any,
) -> list[Path]:
    """OUT/{base.squashfs (a hard link to `base`), overlay.squashfs, filesystem.module, overlay.json}: the
    overlay is what turns the base into `tree` (kiln.artifacts.layers); before anything is kept, the
    two are mounted stacked, as live-boot stacks them, and must show exactly `manifest` (the root's)."""
    out.mkdir(exist_ok=True)
    staging = work / "overlay-tree"
    staging.mkdir()
    started = time.monotonic()
    try:
        with mounted_stack([base], work / "base-mount", log_file=log_file, runtime=runtime) as lower:
            diff = diff_tree(tree, lower, staging)
        part = out / f".{OVERLAY}.part"
        make_squashfs(staging, part, runtime, log_file, epoch)
        os.rename(part, out / OVERLAY)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        (out / f".{OVERLAY}.part").unlink(missing_ok=True)
    try:
        os.link(base, out / BASE)
    except OSError:  # the stage cache on another file system: a copy
        shutil.copyfile(base, out / BASE)
    (out / MODULE).write_text(module_text([BASE, OVERLAY]))
    stacked = work / "stack.manifest"
    with mounted_stack([out / BASE, out / OVERLAY], work / "stack-mount",
                              log_file=log_file, runtime=runtime) as merged:  # fmt: skip
        write_manifest(merged, stacked)
    want, got = comparable(manifest.read_text()), comparable(stacked.read_text())
    if want != got:
        missing = sorted(set(want) - set(got))[:5]
        extra = sorted(set(got) - set(want))[:5]
        raise BuildError(
            f"{out}: base + overlay does not show the finished root: the root has {missing} that the stack "
            f"does not, and the stack {extra}"
        )
    sizes = {n: (out / n).stat().st_size for n in (BASE, OVERLAY)}
    info = {
        "base": {"file": BASE, "sha256": sha256_file(out / BASE), "size": sizes[BASE]},
        "overlay": {
            "file": OVERLAY,
            "sha256": sha256_file(out / OVERLAY),
            "size": sizes[OVERLAY],
        },  # fmt: skip
        "module": MODULE,
        "ratio": round(sizes[OVERLAY] / sizes[BASE], 4),
        "changes": {"files": diff.files, "bytes": diff.bytes, "whiteouts": diff.whiteouts, "dirs": diff.dirs},
    }
    (out / INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    say(
        f"overlay: {diff.summary()}; {sizes[OVERLAY] / 1e6:.1f} MB on a {sizes[BASE] / 1e6:.1f} MB base "
        f"({100 * sizes[OVERLAY] / sizes[BASE]:.1f} %), checked stacked in {time.monotonic() - started:.0f}s"
    )
    return [out / n for n in (BASE, OVERLAY, MODULE, INFO)]
