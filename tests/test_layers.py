"""Base + overlay (kiln.artifacts.layers): the overlay made from two real trees, squashed with mksquashfs and
stacked by the kernel's overlayfs, shows exactly the finished tree; the netboot cpio is what the kernel's
initramfs unpacker reads."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from kiln.artifacts import formats, layers, layout
from kiln.build import chroot
from kiln_runtime import RUNTIME

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="owners, devices, whiteouts and mounts need root")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _trees(tmp: Path) -> tuple[Path, Path]:
    base, final = tmp / "base", tmp / "final"
    for t in (base, final):
        t.mkdir()
        _write(t / "etc/hostname", "node\n")
        _write(t / "etc/same-size", "aaaa\n")
        _write(t / "usr/bin/tool", "#!/bin/sh\n", 0o755)
        _write(t / "usr/share/doc/a/README", "docs\n")
        _write(t / "var/log/old.log", "log\n")
        _write(t / "opt/was-dir/inner", "x\n")
        _write(t / "opt/was-file", "y\n")
        (t / "usr/bin/link").symlink_to("tool")
        _write(t / "usr/lib/libhard.so", "hard\n")
        os.link(t / "usr/lib/libhard.so", t / "usr/lib/libhard.so.1")
        _write(t / "srv/owned", "z\n")
        os.chown(t / "srv/owned", 1000, 1000)
        _write(t / "usr/bin/ping", "ping\n", 0o755)
        (t / "lost+found").mkdir()
    os.setxattr(base / "usr/bin/ping", "user.kiln", b"cap")
    os.setxattr(final / "usr/bin/ping", "user.kiln", b"cap2")  # xattr only
    _write(final / "etc/same-size", "bbbb\n")  # content, same size
    (final / "usr/bin/tool").chmod(0o700)  # mode only
    os.chown(final / "srv/owned", 0, 0)  # owner only
    (final / "var/log/old.log").unlink()  # removed file
    for p in sorted((final / "usr/share/doc").rglob("*"), reverse=True):  # removed tree
        p.unlink() if p.is_file() else p.rmdir()
    (final / "usr/share/doc").rmdir()
    for p in (final / "opt/was-dir").iterdir():  # dir -> file
        p.unlink()
    (final / "opt/was-dir").rmdir()
    _write(final / "opt/was-dir", "now a file\n")
    (final / "opt/was-file").unlink()  # file -> dir
    _write(final / "opt/was-file/sub/new", "new\n")
    (final / "opt/was-file/sub/l").symlink_to("new")
    (final / "usr/bin/link").unlink()
    (final / "usr/bin/link").symlink_to("/usr/bin/tool")  # link target
    _write(final / "usr/local/bin/kubelet", "kubelet v1.36.1\n", 0o755)  # new, with new parents
    os.link(final / "usr/local/bin/kubelet", final / "usr/local/bin/kubelet-hard")
    _write(final / "usr/lib/libhard.so", "HARD\n")  # both names of a hard link change
    os.mkfifo(final / "run-fifo")
    return base, final


@root_only
def test_the_stacked_overlay_shows_exactly_the_finished_tree(tmp_path: Path) -> None:
    base, final = _trees(tmp_path)
    for tree in (base, final):  # older than the squashfs date: the stack must keep every directory's time
        chroot.clamp_times(tree, 1_600_000_000)
    (final / "usr").touch()
    os.utime(final / "usr", (1_500_000_000, 1_500_000_000))
    out = tmp_path / "overlay"
    out.mkdir()
    diff = layers.diff_tree(final, base, out)
    # whiteouts: the removed file and the removed directory (one for the whole tree)
    assert stat.S_ISCHR(os.lstat(out / "var/log/old.log").st_mode)
    assert os.lstat(out / "usr/share/doc").st_rdev == 0 and stat.S_ISCHR(
        os.lstat(out / "usr/share/doc").st_mode
    )
    assert not (out / "usr/share/doc/a").exists()
    assert diff.whiteouts == 2, diff
    # unchanged files stay out; the directories on the way to a change come in with their metadata
    assert not (out / "etc/hostname").exists() and (out / "etc/same-size").read_text() == "bbbb\n"
    assert (out / "usr/bin/tool").stat().st_mode & 0o777 == 0o700
    assert os.getxattr(out / "usr/bin/ping", "user.kiln") == b"cap2"
    assert (out / "usr/local/bin/kubelet").stat().st_ino == (out / "usr/local/bin/kubelet-hard").stat().st_ino
    assert not (out / "lost+found").exists()
    for name in ("base", "overlay"):
        formats.make_squashfs(tmp_path / name if name == "base" else out, tmp_path / f"{name}.squashfs",
                              RUNTIME, None, epoch=1_700_000_000)  # fmt: skip
    with layers.mounted_stack([tmp_path / "base.squashfs", tmp_path / "overlay.squashfs"], tmp_path / "mnt",
                              log_file=None, runtime=RUNTIME) as merged:  # fmt: skip
        formats.write_manifest(merged, tmp_path / "merged.manifest")
        assert (merged / "usr/local/bin/kubelet").read_text() == "kubelet v1.36.1\n"
        assert not (merged / "usr/share/doc").exists() and not (merged / "var/log/old.log").exists()
        for d in ("usr", "usr/local/bin", "opt/was-file/sub", "var/log", ""):  # made, or written into
            assert os.lstat(merged / d).st_mtime == os.lstat(final / d).st_mtime, d
    formats.write_manifest(final, tmp_path / "final.manifest")
    merged_lines = layers.comparable((tmp_path / "merged.manifest").read_text())
    assert merged_lines == layers.comparable((tmp_path / "final.manifest").read_text())
    assert len(merged_lines) > 20
    assert not list((tmp_path / "mnt").glob("*/*")), "everything is unmounted"


@root_only
def test_an_unchanged_tree_makes_an_empty_overlay(tmp_path: Path) -> None:
    base, _ = _trees(tmp_path)
    out = tmp_path / "overlay"
    out.mkdir()
    diff = layers.diff_tree(base, base, out)
    assert (diff.files, diff.whiteouts, diff.dirs) == (0, 0, 0) and os.listdir(out) == []


def read_newc(data: bytes, at: int = 0) -> tuple[dict[str, tuple[int, bytes]], int]:
    """name -> (mode, data) of the newc archive at offset `at` of `data`, read as the kernel's unpacker does,
    and the offset just after its trailer (where an initrd's next archive, or padding, begins)."""
    out = {}
    while True:
        assert data[at : at + 6] == b"070701", at
        fields = [int(data[at + 6 + 8 * i : at + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        at += 110
        name = data[at : at + namesize - 1].decode()
        at += namesize
        at += -at % 4
        body = data[at : at + size]
        at += size
        at += -at % 4
        if name == "TRAILER!!!":
            return out, at
        out[name] = (mode, body)


def test_the_netboot_cpio_makes_the_medium_and_lists_the_stack() -> None:
    data = layers.netboot_cpio(["base.squashfs", "overlay.squashfs"])
    assert len(data) % 512 == 0
    entries, _ = read_newc(data)
    assert (
        entries["kiln-live"][0] == stat.S_IFDIR | 0o755
        and entries["kiln-live/live"][0] == stat.S_IFDIR | 0o755
    )
    assert entries["kiln-live/live/filesystem.module"][1] == b"base.squashfs\noverlay.squashfs\n"
    assert layers.netboot_initrds(["base.squashfs"]) == [("base.squashfs", "kiln-live/live/base.squashfs")]
    assert struct.calcsize("8s") == 8  # (the archive's fields are 8 hex digits each)


def test_overlay_needs_the_chroot_runner() -> None:
    from kiln import config
    from kiln.core.errors import ConfigError

    repo = Path(__file__).resolve().parents[1]
    cfg = config.load("debian-12", overrides={"formats": "qcow2 ova overlay iso"}, repo_root=repo)
    assert "overlay" in cfg.settings.formats
    with pytest.raises(ConfigError) as err:
        config.load("debian-12", overrides={"formats": "qcow2 overlay", "provisioner": "vm"}, repo_root=repo)
    problems = err.value.problems
    assert any("formats: overlay needs provisioner chroot" in p for p in problems), problems
    with pytest.raises(ConfigError) as err:
        config.load("debian-12", overrides={"formats": "qcow2 overlays"}, repo_root=repo)
    assert any("unknown format" in p and "overlay" in p for p in err.value.problems), err.value.problems


def test_a_layered_netboot_set_publishes_its_own_files_and_the_base_once() -> None:
    plain, layered = layout.layout("N")["netboot"], layout.layout("N", layered=True)["netboot"]
    assert ("netboot/filesystem.squashfs", "netboot/N/filesystem.squashfs") in plain
    assert ("netboot/kiln-live.cpio", "netboot/N/kiln-live.cpio") in layered
    assert ("netboot/base.squashfs", layout.SHARED_BASE) in layered  # by content, under bases/
    assert layout.object_file("N", "netboot/overlay.squashfs") == "netboot/N/overlay.squashfs"
    assert layout.object_file("N", "overlay/base.squashfs") == layout.SHARED_BASE


def test_manifest_is_the_same_for_one_root_on_two_file_systems(tmp_path):
    """write_manifest lists the root as its squashfs holds it: a directory's size is each file system's own
    (a directory that once held many files stays large on ext4), so it is "-"; the root's lost+found (a
    file system's, which mksquashfs leaves out) is not listed, while a deeper one is the root's own."""
    roots = []
    for n, extra in enumerate((0, 400)):
        t = tmp_path / f"root{n}"
        _write(t / "etc" / "hostname", "node\n")
        (t / "lost+found").mkdir()
        (t / "var" / "lost+found").mkdir(parents=True)
        for i in range(extra):  # grow /etc's directory, then empty it again
            (t / "etc" / f"gone-{i:04}-{'x' * 100}").write_text("")
        for i in range(extra):
            (t / "etc" / f"gone-{i:04}-{'x' * 100}").unlink()
        roots.append(formats.write_manifest(t, tmp_path / f"root{n}.manifest").read_text())
    assert roots[0] == roots[1]
    lines = roots[0].splitlines()
    assert "/etc\td\t0755\t0:0\t-\t-" in [ln.replace(f"{os.getuid()}:{os.getgid()}", "0:0") for ln in lines]
    assert not any(ln.startswith("/lost+found") for ln in lines)
    assert any(ln.startswith("/var/lost+found\td\t") for ln in lines)
    assert any(ln.startswith("/etc/hostname\tf\t0644\t") and "\t5\t" in ln for ln in lines)


def test_squashfs_is_the_same_for_a_file_with_holes_and_written_out(tmp_path):
    """The same root makes the same squashfs whether a file's zeros are holes (a tree a stage wrote, the
    ext4 disk) or written out (a tree unpacked from the stage cache's tar): mksquashfs 4.5 otherwise gives the
    file with holes an extended inode, and the live formats of a cold and a cached build differed."""
    images = []
    for name, holes in (("holes", True), ("written", False)):
        t = tmp_path / name
        _write(t / "etc" / "hostname", "node\n")
        with open(t / "var-lastlog", "wb") as f:
            if holes:
                f.seek(3 << 20)
            else:
                f.write(b"\0" * (3 << 20))
            f.write(b"record\n")
        for p in (t / "etc" / "hostname", t / "var-lastlog", t / "etc", t):
            os.utime(p, (1_600_000_000, 1_600_000_000))
        images.append(
            formats.make_squashfs(t, tmp_path / f"{name}.squashfs", RUNTIME, None, epoch=1_700_000_000)
        )
    assert (
        os.stat(tmp_path / "holes" / "var-lastlog").st_blocks
        < os.stat(tmp_path / "written" / "var-lastlog").st_blocks
    )
    assert images[0].read_bytes() == images[1].read_bytes()
