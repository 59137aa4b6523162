"""The chroot runner's tools on small trees (root only: mount namespaces, chroot, owners): what a stage puts
into a tree and takes out again on every exit, packed trees that keep owners, links and xattrs, processes
left in a tree, the network as a chroot sees it, and the config's checks."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from kiln import config
from kiln.build import bootloader, chroot, stagehints, standin_programs, standins
from kiln.core.errors import BuildError, CommandError, ConfigError
from kiln_runtime import RUNTIME

REPO = Path(__file__).resolve().parents[1]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for d in ("etc/dpkg/dpkg.cfg.d", "usr/sbin", "proc", "sys", "dev", "tmp"):
        (tree / d).mkdir(parents=True)
    return tree


def test_the_trees_own_policy_rc_d_is_set_aside_never_followed_and_put_back(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    outside = tmp_path / "host-policy"  # where an absolute link in the tree leads on the build host
    policy = tree / standins.POLICY_RC_D
    policy.symlink_to(outside)
    with standins.prepared(tree, work, runtime=RUNTIME):
        assert not policy.is_symlink() and policy.read_text() == standins.POLICY_TEXT
    assert not outside.exists(), "nothing written through the tree's link onto the build host"
    assert os.readlink(policy) == str(outside), "the tree's own link is back"
    # a file of the tree's own comes back as it was; a policy a package installs during the stage stays
    policy.unlink()
    policy.write_text("#!/bin/sh\nexit 0\n")
    with standins.prepared(tree, work, runtime=RUNTIME):
        pass
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"
    policy.unlink()
    with standins.prepared(tree, work, runtime=RUNTIME):
        policy.unlink()
        policy.write_text("#!/bin/sh\n# a package's\nexit 101\n")
    assert policy.read_text() == "#!/bin/sh\n# a package's\nexit 101\n"
    assert not (tree / f"{standins.POLICY_RC_D}.kiln-own").exists()


def test_prepared_puts_the_tree_back_on_every_exit(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "run" / "lock").mkdir(parents=True)
    (tree / "run" / "adduser").write_text("")
    work = tmp_path / "work"
    work.mkdir()
    host = Path("/etc/resolv.conf").read_bytes()
    with pytest.raises(RuntimeError), standins.prepared(tree, work, runtime=RUNTIME) as run:
        assert (tree / standins.POLICY_RC_D).read_text().endswith("exit 101\n")
        assert "force-unsafe-io" in (tree / standins.UNSAFE_IO).read_text()
        assert (tree / "etc/resolv.conf").read_bytes() == host  # the build host's name servers, for the stage
        # the stage's /run: the tree's, and what a booted build VM has there
        assert (run / "adduser").is_file() and (run / "lock").stat().st_mode & 0o7777 == 0o1777
        assert (run / "sshd").is_dir() and (run / "systemd/resolve/stub-resolv.conf").read_bytes() == host
        assert json.loads((run / "cloud-init/result.json").read_text())["v1"]["errors"] == []
        assert os.access(run / "kiln-stage/image_kernel.py", os.X_OK)  # for Ansible's modprobe module
        raise RuntimeError("a failed task")
    assert not (tree / standins.POLICY_RC_D).exists() and not (tree / "etc/resolv.conf").exists()
    assert not (tree / standins.UNSAFE_IO).exists()
    assert sorted(os.listdir(tree / "run")) == ["adduser", "lock"]
    assert not list(work.iterdir()), "the stage's /run goes too"
    # the tree's own comes back over a task's change in place (which held the build host's name servers)
    (tree / "etc/resolv.conf").write_text("nameserver 192.0.2.53\n")
    with standins.prepared(tree, work, runtime=RUNTIME):
        with open(tree / "etc/resolv.conf", "a") as f:
            f.write("options edns0\n")
    assert (tree / "etc/resolv.conf").read_text() == "nameserver 192.0.2.53\n"
    # a link the tree had comes back; one into /run is left as it is, its target in the stage's /run
    (tree / "etc/resolv.conf").unlink()
    (tree / "etc/resolv.conf").symlink_to("resolv.conf.static")
    with standins.prepared(tree, work, runtime=RUNTIME):
        assert not (tree / "etc/resolv.conf").is_symlink()
    assert os.readlink(tree / "etc/resolv.conf") == "resolv.conf.static"
    (tree / "etc/resolv.conf").unlink()
    (tree / "etc/resolv.conf").symlink_to("../run/resolvconf/resolv.conf")
    with standins.prepared(tree, work, runtime=RUNTIME) as run:
        assert os.readlink(tree / "etc/resolv.conf") == "../run/resolvconf/resolv.conf"
        assert (run / "resolvconf/resolv.conf").read_bytes() == host
    assert os.readlink(tree / "etc/resolv.conf") == "../run/resolvconf/resolv.conf"


def test_a_resolv_conf_a_module_rewrites_gives_way_to_the_trees_own(tmp_path: Path) -> None:
    """lineinfile, template and `sed -i` write a new file and rename it over resolv.conf: with the build
    host's servers in it, it gives way to the tree's own, and so does a `backup: yes` copy of the stand-in;
    a file of the task's own (no server of the build host's) stays, as in a build VM."""
    host = Path("/etc/resolv.conf").read_bytes()
    if not any(line.startswith(b"nameserver") for line in host.splitlines()):
        pytest.skip("this host's /etc/resolv.conf names no server")
    tree, work = _tree(tmp_path), tmp_path / "work"
    work.mkdir()
    (tree / "etc/resolv.conf").write_text("")
    site = tree / "etc/resolvconf/resolv.conf.d/base"  # a role's own file that names the same servers
    site.parent.mkdir(parents=True)
    with standins.prepared(tree, work, runtime=RUNTIME):
        shutil.copy(tree / "etc/resolv.conf", tree / "etc/resolv.conf.1234.2026-12-05@12:00:00~")
        (tree / "etc/.resolv.tmp").write_bytes(host + b"options edns0\n")
        os.rename(tree / "etc/.resolv.tmp", tree / "etc/resolv.conf")
        site.write_bytes(host + b"search example.org\n")
    assert (tree / "etc/resolv.conf").read_text() == ""
    assert (tree / "etc/resolv.conf.1234.2026-12-05@12:00:00~").read_text() == ""
    assert site.read_bytes() == host + b"search example.org\n"  # not kiln's: left as the role wrote it
    with standins.prepared(tree, work, runtime=RUNTIME):
        (tree / "etc/.resolv.tmp").write_text("nameserver 192.0.2.53\n")
        os.rename(tree / "etc/.resolv.tmp", tree / "etc/resolv.conf")
    assert (tree / "etc/resolv.conf").read_text() == "nameserver 192.0.2.53\n"


def test_a_resolv_conf_a_task_replaces_stays_and_its_backup_is_the_trees_own(tmp_path: Path) -> None:
    """systemd-resolved's postinst: `mv /etc/resolv.conf /etc/.resolv.conf.systemd-resolved.bak` and a link to
    its stub. In a build VM the link stays in the image and the backup holds the VM's file: here the link
    stays and the backup holds the tree's own, not the build host's name servers. Before, kiln's bind mount
    over the file made both fail ("Device or resource busy"), and the image kept a plain file."""
    tree, work = _tree(tmp_path), tmp_path / "work"
    work.mkdir()
    (tree / "etc/resolv.conf").write_text("")  # a base disk's: empty
    with standins.prepared(tree, work, runtime=RUNTIME):
        os.rename(tree / "etc/resolv.conf", tree / "etc/.resolv.conf.systemd-resolved.bak")
        (tree / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    assert os.readlink(tree / "etc/resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"
    assert (tree / "etc/.resolv.conf.systemd-resolved.bak").read_text() == ""
    (tree / "etc/resolv.conf").unlink()
    with standins.prepared(tree, work, runtime=RUNTIME):  # a tree with none: a moved stand-in goes
        os.rename(tree / "etc/resolv.conf", tree / "etc/resolv.conf.bak")
    assert not (tree / "etc/resolv.conf.bak").exists() and not (tree / "etc/resolv.conf").exists()


def test_a_file_a_task_puts_over_resolveds_link_gives_way_to_the_link(tmp_path: Path) -> None:
    """A networkd base's resolv.conf is resolved's link into /run (the stage's servers are in the stage's
    /run): a task that puts a file naming the build host's servers in its place, or copies them under /etc,
    leaves neither in the image; a file of the task's own (no server of the build host's) stays."""
    host = Path("/etc/resolv.conf").read_bytes()
    if not any(line.startswith(b"nameserver") for line in host.splitlines()):
        pytest.skip("this host's /etc/resolv.conf names no server")
    tree, work = _tree(tmp_path), tmp_path / "work"
    work.mkdir()
    stub = "../run/systemd/resolve/stub-resolv.conf"
    (tree / "etc/resolv.conf").symlink_to(stub)
    with standins.prepared(tree, work, runtime=RUNTIME) as run:
        served = (run / "systemd/resolve/stub-resolv.conf").read_bytes()
        assert served == host
        (tree / "etc/resolv.conf").unlink()
        (tree / "etc/resolv.conf").write_bytes(served + b"options edns0\n")
        (tree / "etc/resolv.conf.orig").write_bytes(served)
    assert os.readlink(tree / "etc/resolv.conf") == stub
    assert not (tree / "etc/resolv.conf.orig").exists()
    with standins.prepared(tree, work, runtime=RUNTIME):
        (tree / "etc/resolv.conf").unlink()
        (tree / "etc/resolv.conf").write_text("nameserver 192.0.2.53\n")
    assert (tree / "etc/resolv.conf").read_text() == "nameserver 192.0.2.53\n"


@root_only
def test_pack_and_unpack_keep_owners_modes_links_and_xattrs(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    f = tree / "usr/sbin/tool"
    f.write_text("#!/bin/sh\n")
    os.chown(f, 1234, 5678)
    f.chmod(0o4755)  # after chown, which clears setuid
    os.link(f, tree / "usr/sbin/tool-hardlink")
    (tree / "etc/link").symlink_to("/usr/sbin/tool")
    os.setxattr(f, "user.kiln", b"yes")
    out = tmp_path / chroot.TREE
    chroot.pack(tree, out, log_file=None, runtime=RUNTIME)
    back = tmp_path / "back"
    chroot.unpack(out, back, log_file=None, runtime=RUNTIME)
    g = back / "usr/sbin/tool"
    st = g.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 5678, 0o4755)
    assert st.st_ino == (back / "usr/sbin/tool-hardlink").stat().st_ino
    assert os.readlink(back / "etc/link") == "/usr/sbin/tool"
    assert os.getxattr(g, "user.kiln") == b"yes"
    assert not list(tmp_path.glob("*.part"))


def test_a_truncated_packed_tree_is_named_when_it_cannot_be_unpacked(tmp_path: Path) -> None:
    """A packed tree damaged after a build checked it (kiln.build.cachecheck checks it first) fails with
    the file, zstd's reason and what to do, not a shell's exit code."""
    tree = _tree(tmp_path)
    (tree / "usr/sbin/tool").write_bytes(os.urandom(256 * 1024))
    out = tmp_path / "entry" / chroot.TREE
    out.parent.mkdir()
    chroot.pack(tree, out, log_file=None, runtime=RUNTIME)
    out.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(BuildError) as err:
        chroot.unpack(out, tmp_path / "back", log_file=None, runtime=RUNTIME)
    assert str(err.value).startswith(f"{out}: the packed tree cannot be unpacked: ")
    assert "premature end" in str(err.value) or "truncated" in str(err.value), str(err.value)
    assert f"the packed tree is damaged: remove {out.parent}," in (err.value.hint or "")


def _stat_view(tree: Path) -> dict[str, tuple]:
    """Everything the next step reads of a tree: per path, type and mode, owner, size, links, mtime,
    contents or link target, and xattrs."""
    view = {}
    for top, dirs, files in os.walk(tree):
        for name in sorted([*dirs, *files]):
            path = Path(top) / name
            st = path.lstat()
            body = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else b""
            xattrs = {} if path.is_symlink() else {k: os.getxattr(path, k) for k in os.listxattr(path)}
            view[str(path.relative_to(tree))] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink, st.st_mtime_ns, body, xattrs
            )  # fmt: skip
    return view


@root_only
def test_a_kept_tree_is_taken_only_by_the_reader_of_its_packed_copy(tmp_path: Path) -> None:
    """The hand-off between stages: the tree a stage packed is taken (moved, not unpacked) by whoever
    reads that packed file next, also after the stage cache renamed it; any other file, a copy included,
    is unpacked, and the kept tree is removed first. Taken or unpacked, the next step sees the same tree."""
    tree = _tree(tmp_path)
    f = tree / "usr/sbin/tool"
    f.write_text("#!/bin/sh\n")
    os.chown(f, 1234, 5678)
    f.chmod(0o4755)
    os.link(f, tree / "usr/sbin/tool-hardlink")
    os.setxattr(f, "user.kiln", b"yes")
    (tree / "run").mkdir(exist_ok=True)
    with socket.socket(socket.AF_UNIX) as agent:  # a socket a stage left (tar cannot hold one)
        agent.bind(str(tree / "run" / "agent.sock"))
    chroot.clamp_times(tree, 1704067200)
    packed = tmp_path / "stage" / chroot.TREE
    packed.parent.mkdir()
    chroot.pack(tree, packed, log_file=None, runtime=RUNTIME)
    assert not (tree / "run" / "agent.sock").exists(), "the tree handed on is the tree packed"
    unpacked = tmp_path / "unpacked"
    chroot.unpack(packed, unpacked, log_file=None, runtime=RUNTIME)
    expected = _stat_view(unpacked)

    cached = tmp_path / "cache" / "id" / chroot.TREE  # the cache's store renames the packed file
    cached.parent.mkdir(parents=True)
    handoff = chroot.hand_off(packed, tree)
    os.rename(packed, cached)
    taken = tmp_path / "next" / "tree"
    assert chroot.take_or_unpack(handoff, cached, taken, log_file=None, runtime=RUNTIME)
    assert not tree.exists() and _stat_view(taken) == expected

    copy = tmp_path / "copy" / chroot.TREE  # the same bytes, another file: unpacked
    copy.parent.mkdir()
    copy.write_bytes(cached.read_bytes())
    other = tmp_path / "other"
    assert not chroot.take_or_unpack(
        chroot.hand_off(cached, taken), copy, other, log_file=None, runtime=RUNTIME
    )
    assert not taken.exists(), "a hand-off that is not taken is removed"
    assert _stat_view(other) == expected

    again = tmp_path / "again"  # no hand-off: unpacked
    assert not chroot.take_or_unpack(None, cached, again, log_file=None, runtime=RUNTIME)
    assert _stat_view(again) == expected

    rewritten = chroot.hand_off(cached, again)  # the same file (inode) written again: unpacked
    with cached.open("r+b") as fh:
        fh.write(fh.read())
    assert not rewritten.holds(cached)
    assert not chroot.take_or_unpack(rewritten, cached, tmp_path / "fresh", log_file=None, runtime=RUNTIME)
    assert not again.exists()


@root_only
def test_a_kept_tree_is_removed_at_once_when_the_cache_copies_its_packed_file(tmp_path: Path) -> None:
    """A cache_dir on another file system gets a copy of the packed tree (shutil.move): no reader can take
    the kept tree then, so it goes at once instead of holding its space until the build ends."""
    tree = _tree(tmp_path)
    packed = tmp_path / "stage" / chroot.TREE
    packed.parent.mkdir()
    chroot.pack(tree, packed, log_file=None, runtime=RUNTIME)
    handoff = chroot.hand_off(packed, tree)
    assert handoff.tree_bytes == int(chroot.TREE_RATIO * packed.stat().st_size)
    assert chroot.still_held(handoff, packed) is handoff and tree.is_dir()
    copied = tmp_path / "cache" / chroot.TREE
    copied.parent.mkdir()
    shutil.copy2(packed, copied)
    packed.unlink()
    assert chroot.still_held(handoff, copied) is None
    assert not tree.exists()
    assert chroot.still_held(None, copied) is None


@root_only
def test_processes_left_in_a_tree_are_killed(tmp_path: Path) -> None:
    import sys
    import time

    tree = _tree(tmp_path)
    # a "daemon" whose root directory is the tree (Python chroots itself, then waits)
    code = f"import os, time; os.chroot({str(tree)!r}); print('in', flush=True); time.sleep(300)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "in"
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{child.pid}/root") != str(tree.resolve()) and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        assert standins.kill_processes_in(tree) == [child.pid]
        # the killed child stays a zombie until this test collects it: dead all the same, not waited out
        # for kill_processes_in's whole 5 s
        assert time.monotonic() - started < 4
        assert child.wait(timeout=10) != 0
    finally:
        if child.poll() is None:
            child.kill()


def _stand_in(tmp_path: Path, note: str) -> Path:
    """A stand-in note whose real program is a script that prints `real` and its arguments."""
    real = tmp_path / "real"
    real.write_text('#!/bin/sh\necho "real $*"\n')
    real.chmod(0o755)
    script = tmp_path / "stand-in"
    script.write_text(note.replace("@REAL@", str(real)))
    return script


def _ran(script: Path, *args: str) -> tuple[int, str, str]:
    done = subprocess.run(["sh", str(script), *args], capture_output=True, text=True, check=False)
    return done.returncode, done.stdout.strip(), done.stderr.strip()


@pytest.mark.parametrize(
    "args",
    [("--system",), ("-w", "net.ipv4.ip_forward=1"), ("net.ipv4.ip_forward=1",), ("-e", "-w", "a.b=c d"),
     ("-p",), ("-q", "-p", "/etc/hostname"), ("-ep", "/etc/hostname"), ("--load=/etc/hostname",),
     ("-f", "/etc/hostname"), ("--write", "kernel.panic=10")],
)  # fmt: skip
def test_sysctl_applies_nothing_in_a_stage_and_says_so(tmp_path: Path, args: tuple[str, ...]) -> None:
    rc, out, err = _ran(_stand_in(tmp_path, standin_programs.SYSCTL_NOTE), *args)
    assert (rc, out) == (0, "") and err.startswith("kiln: sysctl ") and "not applied in a chroot stage" in err


@pytest.mark.parametrize(
    "args",
    [("-n", "kernel.ostype"), ("-a",), ("net.ipv4.ip_forward",), ("-N", "-r", "^vm"), ("-rforward", "-a"),
     ("--pattern", "w=p", "-a")],
)  # fmt: skip
def test_sysctl_reads_with_the_real_one(tmp_path: Path, args: tuple[str, ...]) -> None:
    assert _ran(_stand_in(tmp_path, standin_programs.SYSCTL_NOTE), *args) == (0, f"real {' '.join(args)}", "")


@pytest.mark.parametrize(
    "args",
    [("-p", "/no/such.conf"), ("--load=/no/such.conf",), ("-ep", "/no/such.conf"), ("-p/no/such.conf",),
     ("-p", "/etc/hostname", "/no/such.conf"), ("-p", "/no/such*.conf")],
)  # fmt: skip
def test_sysctl_names_a_missing_file_as_sysctl_does(tmp_path: Path, args: tuple[str, ...]) -> None:
    rc, out, err = _ran(_stand_in(tmp_path, standin_programs.SYSCTL_NOTE), *args)
    assert rc == 255 and err.startswith('sysctl: cannot open "/no/such')


@pytest.mark.skipif(not shutil.which("perl"), reason="perl runs the real modprobe by its name")
def test_modprobe_loads_nothing_and_queries_with_the_real_one(tmp_path: Path) -> None:
    """Here /lib/modules of the tree is the host's: the lookup in the image's kernel is test_chroot_vm's."""
    script = _stand_in(tmp_path, standin_programs.MODPROBE_NOTE)
    for args in (("overlay",), ("-a", "overlay", "br_netfilter"), ("-r", "overlay"), ("-rv", "overlay"),
                 ("nf_conntrack", "hashsize=1024"), ("--remove", "overlay"), ("-C/etc/x.conf", "overlay"),
                 ("-d", "/srv/cdrom", "overlay"), ("-C", "/etc/x.conf", "overlay")):  # fmt: skip
        rc, out, err = _ran(script, *args)  # a kernel in the host's /lib/modules: its dry run is the fake's
        assert (rc, out) == (0, "") and f"kiln: modprobe {' '.join(args)} skipped in a chroot stage" in err
    for args in (("-c",), ("--show-depends", "overlay"), ("-nv", "overlay"), ("-R", "x"), ("--version",)):
        rc, out, _ = _ran(script, *args)
        assert rc == 0 and out.startswith("real ") and out.endswith(" ".join(args))


@pytest.mark.parametrize(
    "args", [("if=/dev/zero", "of=/EMPTY", "bs=1M"), ("of=/var/zero.fill", "if=/dev/zero", "status=none")]
)
def test_free_space_zeroing_writes_nothing_in_a_stage(tmp_path: Path, args: tuple[str, ...]) -> None:
    rc, out, err = _ran(_stand_in(tmp_path, standin_programs.DD_NOTE), *args)
    assert (rc, out) == (0, "") and "skipped in a chroot stage" in err


def test_zeroing_leaves_its_file_for_the_rm_after_it(tmp_path: Path) -> None:
    script = _stand_in(tmp_path, standin_programs.DD_NOTE)
    assert _ran(script, "if=/dev/zero", f"of={tmp_path}/EMPTY", "bs=1M")[0] == 0
    assert (tmp_path / "EMPTY").stat().st_size == 0  # made, empty, as a `rm /EMPTY` after it expects
    (tmp_path / "kept").write_text("data")
    assert _ran(script, "if=/dev/zero", f"of={tmp_path}/kept", "conv=notrunc")[0] == 0
    assert (tmp_path / "kept").read_text() == "data"


@pytest.mark.parametrize(
    "args",
    [("if=/dev/zero", "of=/swapfile", "bs=1M", "count=512"), ("if=/dev/zero", "of=/dev/null"),
     ("if=/boot/x", "of=/tmp/y"), ("if=/dev/zero",), ("--version",)],
)  # fmt: skip
def test_any_other_dd_runs_the_real_one(tmp_path: Path, args: tuple[str, ...]) -> None:
    assert _ran(_stand_in(tmp_path, standin_programs.DD_NOTE), *args) == (0, f"real {' '.join(args)}", "")


@root_only
def test_a_run_that_writes_more_than_the_disk_holds_is_stopped(tmp_path: Path) -> None:
    """DiskGuard on a small filesystem of its own (tmpfs): the image's disk size, then the floor; proc.run's
    watch stops the writer it guards."""
    from kiln.core import proc

    fs = tmp_path / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "kiln-test", str(fs)], check=True)
    try:
        guard = chroot.DiskGuard(fs, 8 << 20)
        assert not guard.tripped() and guard.floor == 32 << 20
        (fs / "a").write_bytes(b"\0" * (12 << 20))
        assert guard.tripped() and "more than the image's disk holds (8.0 MiB, disk_size)" in guard.why
        (fs / "a").unlink()
        guard = chroot.DiskGuard(fs, None)  # no disk size: the floor, half of what was free here
        (fs / "b").write_bytes(b"\0" * (40 << 20))
        assert guard.tripped() and "left free" in guard.why and "at least" in guard.why
        (fs / "b").unlink()
        guard = chroot.DiskGuard(fs, 8 << 20)
        started = time.monotonic()
        with pytest.raises(CommandError):  # an endless writer, stopped: not the filesystem's end
            proc.run(["sh", "-c", f"while :; do head -c 1048576 /dev/zero >> {fs}/c; sleep 0.01; done"],
                     watch=guard.tripped, timeout=60, runtime=RUNTIME)  # fmt: skip
        assert time.monotonic() - started < 10 and guard.why
        assert (fs / "c").stat().st_size < 40 << 20
    finally:
        subprocess.run(["umount", str(fs)], check=True)


def test_swapoff_turns_off_nothing_in_a_stage(tmp_path: Path) -> None:
    script = _stand_in(tmp_path, standin_programs.SWAPOFF_NOTE)
    for args in (("-a",), ("/swapfile",), ("-av",)):
        rc, out, err = _ran(script, *args)
        assert (rc, out) == (0, "") and f"kiln: swapoff {' '.join(args)} skipped in a chroot stage" in err
    assert _ran(script, "--version") == (0, "real --version", "")


def test_mount_skips_the_images_own_mounts_in_a_stage(tmp_path: Path) -> None:
    """What a build VM's role mounts is the image's fstab (dev-sec's os_hardening: `ansible.posix.mount` of
    /proc with hidepid, `state: mounted`, which remounts, and falls back to umount when that fails): a
    remount, `mount -a` and a mount point or source the fstab lists are skipped with a note; the image mounts
    them at boot. Any other mount, a query, or none, runs the real one (which the stage's wall refuses)."""
    script = _stand_in(tmp_path, standin_programs.MOUNT_NOTE)
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# /data on a disk\nUUID=1 / ext4 defaults 0 1\nproc /proc proc rw,hidepid=2 0 0\n"
        "tmpfs /dev/shm tmpfs rw,nosuid,nodev,noexec 0 0\n#tmpfs /old tmpfs defaults 0 0\n"
        "LABEL=x /mnt/my\\040disk ext4 defaults 0 2\n/swapfile none swap sw 0 0\n"
    )
    skipped = [
        ("-o", "remount", "/proc"),  # the module's remount of a changed entry
        ("-o", "remount,rw,hidepid=2", "/proc"),
        ("-oremount,ro", "/"),
        ("--options=nosuid,remount", "/dev/shm"),
        ("-vo", "remount", "/dev/shm"),
        ("-o", "remount", "-T", str(fstab), "/proc"),
        ("-a",),
        ("-av",),
        ("--all", "-t", "tmpfs"),
        ("-T", str(fstab), "/proc"),  # the module's `state: mounted` of an entry not mounted yet
        (f"--fstab={fstab}", "/dev/shm"),
        ("-T", str(fstab), "tmpfs"),  # by its source
        ("--fstab", str(fstab), "--target", "/proc"),
        (f"-T{fstab}", "/proc"),  # the value attached
        ("-vT", str(fstab), "/dev/shm"),
        ("-T", str(fstab), "/mnt/my disk"),  # as fstab escapes a space
        ("-t", "proc", "-T", str(fstab), "/proc"),
    ]
    for args in skipped:
        rc, out, err = _ran(script, *args)
        assert (rc, out) == (0, ""), args
        assert err == (f"kiln: mount {' '.join(args)} skipped in a chroot stage: the image mounts its file "
                       "systems from /etc/fstab at boot, with their options"), args  # fmt: skip
    passed = [
        (),  # lists what is mounted
        ("-t", "tmpfs", "tmpfs", "/mnt"),
        ("--bind", "/a", "/b"),
        ("-T", str(fstab), "/old"),  # commented out
        ("-T", str(fstab), "/data"),  # not listed
        ("-T", str(tmp_path / "none"), "/proc"),
        ("-o", "ro", "-T", str(fstab), "/dev/sdb1", "/proc"),
        ("-t", "remount", "/x", "/y"),  # a type, not the option
        ("-tvfat", "/dev/sda2", "/mnt"),  # an attached value is no cluster of options (no -a in it)
        ("-Ldata", "/mnt"),
        ("-Uab12-cd34", "/mnt"),
        (f"-T{fstab}", "/data"),
        ("-T", str(fstab), "/swapfile"),  # swap is swapon's
        ("--make-private", "/"),
        ("-B", "/proc", "/mnt"),
        ("--target-prefix", "/proc", "/mnt"),
        ("-l",),
        ("--version",),
        ("-h",),
    ]
    for args in passed:
        assert _ran(script, *args) == (0, f"real {' '.join(args)}".strip(), ""), args


def test_a_stage_keeps_the_users_action_plugins_after_kilns() -> None:
    """kiln's stage actions go first; the user's ANSIBLE_ACTION_PLUGINS (passed on to Ansible, as for a build
    VM), or Ansible's default path under ANSIBLE_HOME, stay after them."""
    import dataclasses
    from types import MappingProxyType

    def runtime(**env: str) -> object:
        base = {k: v for k, v in RUNTIME.env.items() if k not in ("ANSIBLE_HOME", "ANSIBLE_ACTION_PLUGINS")}
        return dataclasses.replace(RUNTIME, env=MappingProxyType({**base, **env}))

    kilns = f"{REPO}/{standins.STAGE_ACTIONS}"
    assert (
        chroot.action_plugins(REPO, runtime(ANSIBLE_ACTION_PLUGINS="/srv/a:/srv/b"))
        == f"{kilns}:/srv/a:/srv/b"
    )
    assert chroot.action_plugins(REPO, runtime(ANSIBLE_HOME="/h")) == (
        f"{kilns}:/h/plugins/action:/usr/share/ansible/plugins/action"
    )
    assert chroot.action_plugins(REPO, runtime()).startswith(f"{kilns}:~/.ansible/plugins/action:")


def test_the_roots_uuid_is_read_off_fstab_as_mount_reads_it(tmp_path: Path) -> None:
    fstab = tmp_path / "fstab"
    fstab.write_text('# x\nUUID=1-2 /boot/efi vfat defaults 0 1\nUUID="ab-cd"\t/\text4 defaults 0 1\n')
    assert bootloader._root_uuid(fstab) == "ab-cd"
    fstab.write_text("LABEL=root / ext4 defaults 0 1\n")
    assert bootloader._root_uuid(fstab) is None and bootloader._root_uuid(tmp_path / "none") is None


def test_journalctl_asks_no_journald_in_a_stage(tmp_path: Path) -> None:
    """journald's requests are dropped with a note; vacuuming and queries run the real journalctl, with the
    arguments as they were (one with a space stays one)."""
    script = _stand_in(tmp_path, standin_programs.JOURNALCTL_NOTE)
    for args in (("--rotate",), ("--flush",), ("--sync", "--rotate"), ("--rotate", "-m")):
        rc, out, err = _ran(script, *args)
        asked = " ".join(a for a in args if a != "-m")
        assert (rc, out) == (0, "") and f"kiln: journalctl {asked} skipped" in err
    rc, out, err = _ran(script, "--rotate", "-m", "--vacuum-time=1s")
    assert (rc, out) == (0, "real -m --vacuum-time=1s") and "journalctl --rotate skipped" in err
    rc, out, err = _ran(script, "--vacuum-size", "1M", "--relinquish-var")
    assert (rc, out) == (0, "real --vacuum-size 1M") and "journalctl --relinquish-var skipped" in err
    assert _ran(script) == (0, "real", "")
    (tmp_path / "real").write_text('#!/bin/sh\nprintf "<%s>" "$@"\n')
    assert _ran(script, "-u", "ssh service", "--no-pager") == (0, "<-u><ssh service><--no-pager>", "")
    assert _ran(script, "--rotate", "--vacuum-files", "a b")[1] == "<--vacuum-files><a b>"


def test_a_path_in_a_tree_follows_the_trees_links_not_the_hosts(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "usr" / "sbin").mkdir(parents=True)
    os.symlink("usr/sbin", tree / "sbin")
    os.symlink("/usr", tree / "abs")  # absolute: the tree's /usr, never the build host's
    os.symlink("/bin/kmod", tree / "usr" / "sbin" / "modprobe")
    assert standins.in_tree(tree, "/sbin/sysctl") == tree / "usr/sbin/sysctl"
    assert standins.in_tree(tree, "/abs/sbin/sysctl") == tree / "usr/sbin/sysctl"
    assert standins.in_tree(tree, "/../../sbin/x") == tree / "usr/sbin/x"
    # the last link is not followed
    assert standins.in_tree(tree, "/sbin/modprobe") == tree / "usr/sbin/modprobe"
    os.symlink("loop", tree / "loop")
    with pytest.raises(BuildError, match="too many levels of symbolic links"):
        standins.in_tree(tree, "/loop/x")


def test_a_diversion_names_the_path_the_package_ships() -> None:
    lists = "\n/.\n/sbin\n/sbin/sysctl\n/usr/sbin/service\n"
    assert standins.packaged(lists, "/sbin/sysctl") == "/sbin/sysctl"
    assert standins.packaged(lists, "/usr/sbin/sysctl") == "/sbin/sysctl"  # bookworm's procps
    assert standins.packaged("\n/usr/sbin/sysctl\n", "/sbin/sysctl") == "/usr/sbin/sysctl"  # trixie's
    assert standins.packaged(lists, "/usr/sbin/service") == "/usr/sbin/service"
    assert standins.packaged(lists, "/usr/sbin/update-grub") == "/usr/sbin/update-grub"  # not installed


def test_the_network_as_a_chroot_sees_it() -> None:
    values = {"kubernetes_http_source": "http://10.0.2.2:35631", "apt_cache": "http://10.0.2.2/",
              "extra_repos": ["deb http://10.0.2.2:80/debian bookworm main"],
              "other": "http://10.0.2.20:1/"}  # fmt: skip
    seen = chroot.host_view(values)
    assert (
        seen["kubernetes_http_source"] == "http://127.0.0.1:35631"
        and seen["apt_cache"] == "http://127.0.0.1/"
    )
    assert seen["extra_repos"] == ["deb http://127.0.0.1:80/debian bookworm main"]
    assert seen["other"] == "http://10.0.2.20:1/"
    # with a login, with no port or path, and never a look-alike
    assert chroot.host_view("http://kiln:s3cret@10.0.2.2:3142") == "http://kiln:s3cret@127.0.0.1:3142"
    assert chroot.host_view("http://10.0.2.2") == "http://127.0.0.1"
    assert (
        chroot.host_view("http://10.0.2.2.example/ http://x10.0.2.2:1/")
        == "http://10.0.2.2.example/ http://x10.0.2.2:1/"
    )
    # no_proxy's bare host: the build host as the chroot reaches it, so that requests to it skip the proxy
    proxied = chroot.host_view(
        {"http_proxy": "http://proxy:3128", "no_proxy": "localhost, 10.0.2.2,10.0.2.20"}
    )
    assert proxied == {"http_proxy": "http://proxy:3128", "no_proxy": "localhost,127.0.0.1,10.0.2.20"}


def test_provisioner_chroot_is_for_bootstrap_targets_on_qemu() -> None:
    assert (
        config.load("debian-12", overrides={"provisioner": "chroot"}, repo_root=REPO)["provisioner"]
        == "chroot"
    )
    with pytest.raises(ConfigError, match="provisioner: chroot needs install_method bootstrap"):
        config.load("ubuntu-2204", overrides={"provisioner": "chroot"}, repo_root=REPO)


def test_a_chroot_build_runs_no_packer_and_caches_trees() -> None:
    run = subprocess.run(
        [str(REPO / ".venv/bin/kiln"), "build", "debian-12", "--dry-run", "-var", "provisioner=chroot"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "packer build" not in run.stdout
    assert "in a chroot (Ansible community.general.chroot)" in run.stdout + run.stderr


def test_the_space_check_counts_a_kept_tree_as_there_already(tmp_path: Path, monkeypatch) -> None:
    """The stage or finalize after a chroot stage finds its tree on disk (taken, or removed before anything
    is unpacked): the check asks only for what is still to be written, and for everything without one."""
    from kiln.core import space
    from kiln.core.errors import DiskFullError

    packed = tmp_path / chroot.TREE
    packed.write_bytes(b"x" * 1_000_000)
    handoff = chroot.hand_off(packed, tmp_path / "tree")
    needs = 4 * 1_000_000
    monkeypatch.setattr(space, "free", lambda path: needs - handoff.tree_bytes)
    chroot.check_space(tmp_path, needs, handoff, "the kubernetes stage")
    with pytest.raises(DiskFullError, match="the kubernetes stage needs about"):
        chroot.check_space(tmp_path, needs, None, "the kubernetes stage")


def test_programs_in_a_tree_get_no_host_paths_and_the_system_path() -> None:
    """A TMPDIR (or PYTHONPATH, PERL5LIB) of the build host names nothing in the image's tree: `mktemp` in a
    maintainer script failed on it. PATH gets the system's sbin and bin directories (dpkg needs ldconfig)."""
    from dataclasses import replace
    from types import MappingProxyType

    from kiln.core import proc

    rt = replace(RUNTIME, env=MappingProxyType({"PATH": "/opt/venv/bin:/usr/bin", "TMPDIR": "/scratch",
                                                "PYTHONPATH": "/opt/lib", "HOME": "/root",
                                                "LD_LIBRARY_PATH": "/opt/rh/lib64"}))  # fmt: skip
    env = proc.tree_env(rt)
    assert "TMPDIR" not in env and "PYTHONPATH" not in env and env["HOME"] == "/root"
    assert "LD_LIBRARY_PATH" not in env, "the host's libraries: a program in the tree loads its own"
    assert proc.tree_env(rt, host_loader=True)["LD_LIBRARY_PATH"] == "/opt/rh/lib64"
    assert env["PATH"].split(":") == [
        "/opt/venv/bin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/sbin", "/bin",
    ]  # fmt: skip


def _shell_tree(tmp_path: Path) -> Path:
    """A tree with the host's /bin/sh and cat and the two libraries they need: enough for Ansible's raw
    module."""
    tree = _tree(tmp_path)
    (tree / "bin").mkdir()
    for tool in ("sh", "cat"):
        shutil.copy2(f"/bin/{tool}", tree / "bin" / tool)
    for lib in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"):
        (tree / lib.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib, tree / lib.lstrip("/"))
    return tree


def _raw_playbook(path: Path, *commands: str, on_localhost: str = "") -> Path:
    """raw tasks in the tree, and one delegated to localhost (where ansible-playbook runs) if given."""
    tasks = "".join(f"    - raw: {json.dumps(c)}\n" for c in commands)
    if on_localhost:
        tasks += f"    - raw: {json.dumps(on_localhost)}\n      delegate_to: localhost\n"
    path.write_text(f"- hosts: all\n  gather_facts: false\n  tasks:\n{tasks}")
    return path


_SWAPPINESS = "/proc/sys/vm/swappiness"
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"  # "always [madvise] never": a sysfs file root may write
# capability numbers (linux/capability.h) a stage must not have, and ones it needs
_FORBIDDEN_CAPS = {"net_admin": 12, "sys_module": 16, "sys_rawio": 17, "sys_admin": 21, "sys_boot": 22,
                   "sys_time": 25, "mknod": 27}  # fmt: skip
_NEEDED_CAPS = {"chown": 0, "dac_override": 1, "fowner": 3, "setgid": 6, "setuid": 7, "sys_chroot": 18,
                "setfcap": 31}  # fmt: skip


_X86_64_GLIBC = Path("/lib64/ld-linux-x86-64.so.2").exists()  # what _shell_tree copies


@root_only
@pytest.mark.skipif(not (_X86_64_GLIBC and Path(_THP).exists()), reason="an x86-64 glibc host with THP")
def test_a_stage_cannot_reach_the_build_host(tmp_path: Path) -> None:
    """A role written for a build VM (sysctl -w, hostname, a look at /dev or at other processes) runs against
    the tree in the chroot runner's walled-off stage: the host keeps its kernel parameters, host name, devices
    and processes out of the task's reach, and a task that reaches for them fails with the hint."""
    tree, work = _shell_tree(tmp_path), tmp_path / "work"
    work.mkdir()
    swappiness, host_name = Path(_SWAPPINESS).read_text(), socket.gethostname()
    probe = _raw_playbook(
        tmp_path / "probe.yml",
        "read h < /proc/sys/kernel/hostname; echo $h > /tmp/hostname",
        "for d in /dev/*; do echo ${d#/dev/}; done > /tmp/dev",
        "read c < /proc/1/comm; echo $c > /tmp/first",
        "for p in /proc/[0-9]*; do echo ${p#/proc/}; done > /tmp/pids",
        "while read k v; do case $k in CapBnd:) echo $v;; esac; done < /proc/self/status > /tmp/caps",
        # how systemd's tools see a chroot (systemctl then skips `restart`): /proc/1/root is readable, not /
        "if ! cd /proc/1/root 2>/dev/null; then echo unreadable; elif [ . -ef / ]; then echo same;"
        " else echo chroot; fi > /tmp/first_root",
        # the value it has, written back (the host would not notice, were it written): /proc/sys is read-only
        f"v=$(cat {_SWAPPINESS}); if echo $v > {_SWAPPINESS}; then echo written; else echo refused; fi"
        " > /tmp/sysctl",
        # so is sysfs
        f"line=$(cat {_THP}); v=${{line#*[}}; if echo ${{v%%]*}} > {_THP}; then echo written;"
        " else echo refused; fi > /tmp/sys",
        # and so is ansible-playbook's own view (a task delegated to localhost)
        on_localhost=f"v=$(cat {_SWAPPINESS}); if echo $v > {_SWAPPINESS}; then echo written;"
        f" else echo refused; fi > {tmp_path}/controller",
    )
    chroot.run_playbooks(tree, work, [probe], {}, repo_root=REPO, log_file=None, runtime=RUNTIME)
    seen = {f.name: f.read_text().split() for f in (tree / "tmp").iterdir() if f.is_file()}
    assert seen["hostname"] == ["localhost"], "its own host name, not the build host's"
    assert socket.gethostname() == host_name, "named in a UTS namespace of its own: the host keeps its name"
    assert set(seen["dev"]) == {
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx",
        "fd", "stdin", "stdout", "stderr",
    }, "no host disk, loop or kvm device"  # fmt: skip
    assert seen["first"] == ["sh"] and all(int(p) < 1000 for p in seen["pids"]), "its own processes only"
    assert seen["first_root"] == ["chroot"], "systemctl knows it runs in a chroot"
    caps = int(seen["caps"][0], 16)
    assert not [name for name, bit in _FORBIDDEN_CAPS.items() if caps & (1 << bit)]
    assert all(caps & (1 << bit) for bit in _NEEDED_CAPS.values())
    assert seen["sysctl"] == ["refused"] and seen["sys"] == ["refused"]
    assert (tmp_path / "controller").read_text().split() == ["refused"]
    assert Path(_SWAPPINESS).read_text() == swappiness
    assert not list((tree / "dev").iterdir()), "the stage's /dev went with its namespace"
    assert not [m for m in Path("/proc/self/mountinfo").read_text().splitlines() if str(tmp_path) in m]

    reaching = _raw_playbook(tmp_path / "reaching.yml", f"echo $(cat {_SWAPPINESS}) > {_SWAPPINESS}")
    with pytest.raises(BuildError) as failed:
        chroot.run_playbooks(tree, work, [reaching], {}, repo_root=REPO, log_file=None, runtime=RUNTIME)
    assert "Read-only file system" in str(failed.value) and failed.value.hint == stagehints.WALLED_HINT
    assert Path(_SWAPPINESS).read_text() == swappiness


@root_only
@pytest.mark.skipif(not _X86_64_GLIBC, reason="an x86-64 glibc host")
def test_a_goss_tree_check_runs_behind_the_stage_wall(tmp_path: Path) -> None:
    """The goss build phase's checks in the tree, a user's `command` that asks for the tree included, run
    behind the stage's wall: the tree's own host name, and no capability to rename or reconfigure the host;
    a command that names no phase is done if it passes in the tree, and waits for the boot if not."""
    from kiln.goss import treephase

    tree = _shell_tree(tmp_path)
    for tool in ("hostname", "timeout", "stat"):  # what kiln's probe runs, with the libraries they need
        shutil.copy2(f"/bin/{tool}", tree / "bin" / tool)
        libs = subprocess.run(["ldd", f"/bin/{tool}"], capture_output=True, text=True, check=True).stdout
        for lib in (w for w in libs.split() if w.startswith("/") and not (tree / w.lstrip("/")).exists()):
            shutil.copy2(lib, tree / lib.lstrip("/"))
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "vars.yaml.j2").write_text("probe: 1\n")
    # the name it has, set again (the host would not notice, were it set): refused for want of sys_admin
    rename = 'if hostname "$(hostname)" 2>/dev/null; then echo set; else echo refused; fi'
    (specs / "goss.yaml").write_text(
        "file:\n  /bin/sh: {exists: true}\n"
        "command:\n"
        "  hostname: {exit-status: 0, stdout: [localhost], meta: {kiln_phase: tree}}\n"
        f"  rename: {{exec: {json.dumps(rename)}, exit-status: 0, stdout: [refused],"
        " meta: {kiln_phase: tree}}\n"
        "  later: {exit-status: 0}\n"  # no such program in the tree: it waits for the boot
        "  at-rest: {exec: 'test ! -e /var/lib/cloud/data/instance-id', exit-status: 0}\n"  # passes here
        "  booted: {exec: 'true', exit-status: 0, meta: {kiln_phase: boot}}\n"
        "  writes: {exec: 'echo x > /left-by-a-check', exit-status: 0}\n"  # the tree is read-only to checks
        "  complains: {exec: 'echo not booted >&2; echo 0', exit-status: 0, stdout: ['0']}\n"
        "service:\n  sshd: {enabled: true}\n"
    )
    host_name = socket.gethostname()
    in_tree = lambda argv: chroot.walled(tree, argv, runtime=RUNTIME)  # noqa: E731
    results, deferred, passed = treephase.check_tree(
        in_tree, {}, spec_dir=specs, root=tmp_path, runtime=RUNTIME
    )
    assert socket.gethostname() == host_name, "the wall names its own UTS namespace, not the build host"
    # commands that failed, wrote or complained in the tree, one that asks for the boot, and a service
    assert deferred == 5
    assert not (tree / "left-by-a-check").exists(), "a check cannot write into the image it checks"
    failed = [f"{r.title()}: found {r.found!r}" for r in results if not r.successful]
    assert not failed and {r.resource_id for r in results} == {"/bin/sh", "hostname", "rename", "at-rest"}
    assert sorted(r.id for r in passed) == ["/bin/sh", "at-rest", "hostname", "rename"]
    record = tmp_path / "build" / "goss" / treephase.RECORD
    treephase.write_record(record, passed)
    assert treephase.passed_in_tree(tmp_path / "build") == {treephase.resource_key(r) for r in passed}


@root_only
@pytest.mark.skipif(not _X86_64_GLIBC, reason="an x86-64 glibc host")
def test_the_hosts_loader_settings_stay_out_of_the_tree(tmp_path: Path) -> None:
    """LD_PRELOAD, LD_LIBRARY_PATH and PYTHONHOME name the build host's libraries: ansible-playbook, a host
    program, keeps them, and the programs it runs in the tree do not get them."""
    import dataclasses
    from types import MappingProxyType

    tree, work = _shell_tree(tmp_path), tmp_path / "work"
    work.mkdir()
    loader = {"LD_PRELOAD": "/lib/x86_64-linux-gnu/libc.so.6", "LD_LIBRARY_PATH": "/nonexistent/kiln-lib"}
    runtime = dataclasses.replace(RUNTIME, env=MappingProxyType({**RUNTIME.env, **loader}))
    show = 'echo "${LD_PRELOAD:-none} ${LD_LIBRARY_PATH:-none} ${PYTHONHOME:-none}"'
    probe = _raw_playbook(
        tmp_path / "probe.yml", f"{show} > /tmp/loader", on_localhost=f"{show} > {tmp_path}/controller"
    )
    chroot.run_playbooks(tree, work, [probe], {}, repo_root=REPO, log_file=None, runtime=runtime)
    assert (tree / "tmp" / "loader").read_text().split() == ["none", "none", "none"]
    assert (tmp_path / "controller").read_text().split() == [*loader.values(), "none"]


@root_only
@pytest.mark.skipif(not _X86_64_GLIBC, reason="an x86-64 glibc host")
def test_a_stage_sees_the_images_kernel_command_line(tmp_path: Path) -> None:
    """/proc/cmdline in a stage is what the image boots with (grub.cfg's default entry, from the tree's GRUB
    defaults, kernel and root UUID), read-only; a tree with no kernel keeps the build host's."""
    tree, work = _shell_tree(tmp_path), tmp_path / "work"
    work.mkdir()
    (tree / "boot").mkdir()
    for name in ("vmlinuz-6.1.0-9-amd64", "initrd.img-6.1.0-9-amd64"):
        (tree / "boot" / name).write_bytes(b"")
    (tree / "etc/default").mkdir(parents=True)
    (tree / "etc/default/grub").write_text(
        'GRUB_CMDLINE_LINUX="console=ttyS0"\nGRUB_CMDLINE_LINUX_DEFAULT=quiet\n'
    )
    uuid = "0c3c7a7e-4b1a-4c8e-9f55-8f0d1e2a3b4c"
    (tree / "etc/fstab").write_text(
        f"# kiln\nUUID=1234-ABCD /boot/efi vfat umask=0077 0 1\nUUID={uuid} / ext4 ro 0 1\n"
    )
    probe = _raw_playbook(
        tmp_path / "probe.yml",
        "cat /proc/cmdline > /tmp/cmdline",
        "(: > /proc/cmdline) 2> /dev/null || echo ro > /tmp/ro",
    )
    chroot.run_playbooks(tree, work, [probe], {}, repo_root=REPO, log_file=None, runtime=RUNTIME)
    assert (tree / "tmp/cmdline").read_text() == (
        f"BOOT_IMAGE=/boot/vmlinuz-6.1.0-9-amd64 root=UUID={uuid} ro console=ttyS0 quiet\n"
    )
    assert (tree / "tmp/ro").read_text() == "ro\n"
    for name in ("vmlinuz-6.1.0-9-amd64", "initrd.img-6.1.0-9-amd64"):
        (tree / "boot" / name).unlink()
    chroot.run_playbooks(tree, work, [probe], {}, repo_root=REPO, log_file=None, runtime=RUNTIME)
    assert (tree / "tmp/cmdline").read_text() == Path("/proc/cmdline").read_text()


@root_only
def test_the_wall_names_its_host_where_proc_sys_is_read_only() -> None:
    """kiln in a container, where /proc/sys is mounted read-only: the wall still gives the tree its own host
    name (sethostname, not a write under /proc/sys)."""
    walled = chroot.walled(Path("/"), ["/bin/sh", "-c", "cat /proc/sys/kernel/hostname"], runtime=RUNTIME)
    read_only = 'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", read_only, "sh", *walled]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout.split()) == (0, ["localhost"]), done.stderr


@pytest.mark.parametrize(
    "stderr",
    [  # what these tasks printed in a chroot stage on a Debian 12 tree (sysctl_set, modprobe, mount, ...)
        'sysctl: permission denied on key "net.ipv4.ip_forward"',
        "modprobe: FATAL: Module br_netfilter not found in directory /lib/modules/6.1.0-28-amd64",
        "[Errno 2] No such file or directory: '/proc/modules'",  # this machine's kernel has no modules
        "[Errno 2] No such file or directory: '/lib/modules/6.1.0-28-amd64/modules.builtin'",
        "mount: /mnt: permission denied.",
        "Error mounting /mnt: umount: /mnt: must be superuser to unmount.",  # ansible.posix.mount, remount
        "System has not been booted with systemd as init system (PID 1). Can't operate.",
        "hostname: you must be root to change the host name",
        "date: cannot set date: Operation not permitted",
        # no containerd started for them (kiln.build.ondemand): ctr, and kubeadm's CRI client
        'ctr: failed to dial "/var/run/containerd/containerd.sock": context deadline exceeded',
        "validate service connection: validate CRI v1 image API for endpoint "
        '"unix:///var/run/containerd/containerd.sock": rpc error: code = Unavailable desc = connection '
        'error: desc = "transport: Error while dialing: dial unix /var/run/containerd/containerd.sock: '
        'connect: no such file or directory"',
    ],
)
def test_a_task_that_needs_a_running_system_gets_the_hint(stderr: str) -> None:
    assert stagehints._WALLED.search(stderr)


def _failed_run(*tasks: tuple[str, str, bool]) -> str:
    """Ansible's output for tasks (name, the failure's message, ignored), as the run's tail holds it."""
    out = []
    for name, msg, ignored in tasks:
        out += [f"TASK [site : {name}] ****", f"fatal: [/tree]: FAILED! => {json.dumps({'msg': msg})}"]
        out += ["...ignoring"] if ignored else []
    return "\n".join(out) + "\n\nPLAY RECAP ****\n"


def test_an_ordinary_failure_gets_no_hint(tmp_path: Path) -> None:
    assert not stagehints._WALLED.search("E: Unable to locate package kubeletx")
    assert not stagehints._WALLED.search("cp: cannot stat '/srv/x': No such file or directory")
    # containerd answered: a registry's failure is no wall's
    pull = 'ctr: failed to resolve reference "registry.example/x:1": dial tcp: lookup registry.example'
    assert not stagehints._WALLED.search(pull)
    modprobe = "modprobe: FATAL: Module br_netfilter not found in directory /lib/modules/6.1.0-28-amd64"
    apt = "Failed to fetch http://deb.example/pool/x.deb  404  Not Found"
    hint = stagehints.failure_hint
    assert hint(_failed_run(("br_netfilter", modprobe, False)), tmp_path) == stagehints.WALLED_HINT
    # a role that ignores its modprobe's failure, and then fails on a download: no hint about the wall
    assert hint(_failed_run(("br_netfilter", modprobe, True), ("a package", apt, False)), tmp_path) is None
    assert hint("ERROR! the role 'nothere' was not found\n", tmp_path) is None, "the stage's setup: no task"


def test_a_loop_item_that_hit_the_wall_gets_the_hint(tmp_path: Path) -> None:
    item = json.dumps({"msg": 'sysctl: permission denied on key "vm.swappiness"'})
    tail = (
        "TASK [site : sysctls] ****\n"
        f"failed: [/tree] (item=vm.swappiness) => {item}\n"
        'fatal: [/tree]: FAILED! => {"msg": "One or more items failed"}\n'
    )
    assert stagehints.failure_hint(tail, tmp_path) == stagehints.WALLED_HINT
    # ansible-core 2.19 ends a failed loop with its items, and no `fatal:` (image-builder's image loads)
    dial = json.dumps({"rc": 1, "stderr": 'ctr: failed to dial "/var/run/containerd/containerd.sock"'})
    tail = (
        "TASK [kubernetes : Load Kubernetes images] ****\n"
        "[ERROR]: Task failed: Module failed: non-zero return code\n"
        "Origin: /roles/kubernetes/tasks/url.yml:79:3\n\n"
        f"failed: [/tree] (item=kube-apiserver.tar) => {dial}\n"
        f"failed: [/tree] (item=kube-proxy.tar) => {dial}\n\nPLAY RECAP ****\n"
    )
    assert stagehints.failure_hint(tail, tmp_path) == stagehints.WALLED_HINT
    ignored = tail.replace("\n\nPLAY", "\n...ignoring\n\nTASK [site : next] ****\nok: [/tree]\n\nPLAY")
    assert stagehints.failure_hint(ignored, tmp_path) is None


def test_a_task_that_names_the_build_hosts_kernel_gets_the_kernel_hint(tmp_path: Path) -> None:
    """`apt-get install linux-headers-$(uname -r)` in a chroot stage asks for the build host's kernel: the
    hint names it and the image's kernel (ansible_kernel). Other failures keep theirs, or get none."""
    release = os.uname().release
    (tmp_path / "boot").mkdir()
    for name in ("vmlinuz-6.1.0-50-amd64", "initrd.img-6.1.0-50-amd64"):
        (tmp_path / "boot" / name).write_bytes(b"")
    headers = _failed_run(("headers", f"E: Unable to locate package linux-headers-{release}", False))
    hint = stagehints.failure_hint(headers, tmp_path)
    assert hint is not None and release in hint and "(6.1.0-50-amd64)" in hint
    assert "linux-headers-{{ ansible_kernel }}" in hint
    mount = _failed_run(("mount", "mount: /mnt: permission denied.", False))
    assert stagehints.failure_hint(mount, tmp_path) == stagehints.WALLED_HINT
    apt = _failed_run(("a package", "Failed to fetch http://deb.example/pool/x.deb  404  Not Found", False))
    assert stagehints.failure_hint(apt, tmp_path) is None
    ignored = _failed_run(("headers", f"linux-headers-{release}", True), ("a package", "404", False))
    assert stagehints.failure_hint(ignored, tmp_path) is None


MODULE_PROBE = """\
import platform, sys
with open("/proc/modules") as f:
    listed = f.read()
with open("/proc/modules", "rb") as f:
    listed_bytes = f.read()
with open(sys.argv[1] if len(sys.argv) > 1 else "/dev/null", "w") as f:
    f.write("written")
print(repr((platform.release(), listed, listed_bytes, sys.argv[1:])))
"""


def test_the_image_kernel_shim_runs_a_module_as_in_the_images_kernel(tmp_path: Path) -> None:
    """What community.general.modprobe asks (the running kernel's release, /proc/modules) answered for the
    image's kernel, with nothing loaded, whether Ansible passes the module as a file or on stdin; every
    other file opens as ever."""
    shim = REPO / standins.IMAGE_KERNEL
    module = tmp_path / "AnsiballZ_probe.py"
    module.write_text(MODULE_PROBE)
    env = {**os.environ, "KILN_TREE_FACTS": json.dumps({"kernel": "6.1.0-99-amd64", "kernel_version": ""})}
    out = tmp_path / "out"
    as_file = subprocess.run([str(shim), str(module), str(out)], env=env, capture_output=True, text=True)
    assert as_file.returncode == 0, as_file.stderr
    assert as_file.stdout.strip() == repr(("6.1.0-99-amd64", "", b"", [str(out)]))
    assert out.read_text() == "written"
    piped = subprocess.run([str(shim)], input=MODULE_PROBE, env=env, capture_output=True, text=True)
    assert piped.returncode == 0 and piped.stdout.strip() == repr(("6.1.0-99-amd64", "", b"", []))
    # a tree with no kernel: the release is left as it is
    bare = subprocess.run([str(shim), str(module)], env={**env, "KILN_TREE_FACTS": "{}"}, capture_output=True,
                          text=True)  # fmt: skip
    assert bare.returncode == 0 and bare.stdout.strip().startswith(repr((os.uname().release,))[:-2])
