"""The chroot runner's tools: root trees out of the base disk, Ansible through its chroot connection, trees
packed for the stage cache, and the finished disk made offline from a tree.

Everything that mounts runs inside a private mount namespace (`unshare --mount --propagation private`): the
mounts (/proc, /sys, /dev, the stage's /run, the base disk's loop mount) belong to that one child process
and go when it exits, however it exits, so a cached tree never keeps a mount. What the runner puts into the
tree for the stage (policy-rc.d, the build host's name servers, diverted programs: kiln.build.standins) is
taken out on every exit path, and a process a package left running inside the tree is killed before the
tree is packed.

A stage's Ansible run is walled off from the build host, as a container build is: the roles are the user's
too, and a task written for a build VM (`sysctl -w`, `swapoff -a`, `modprobe`, `hostname`, `iptables`) would
otherwise change the host it runs on. The run has its own host name (localhost), System V IPC and process
IDs (it sees, and can signal, only its own processes; the kernel ends them all when the run ends, even when
kiln is killed), read-only /proc/sys and /sys, a /dev of its own with only null, zero, full, random,
urandom, tty and a private pts, and root's capabilities cut to what provisioning a tree needs
(`STAGE_CAPS`). Such a task fails in the chroot, with a hint to skip it there: its effect belongs to the
boot. The one daemon a stage runs is the tree's containerd, started for a client of its socket
(kiln.build.ondemand) and stopped when the playbook ends.

Needs root (mount, chroot) and Ansible's community.general collection (the `ansible` package).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kiln.build import bootloader, bootstrap, standins, treefacts
from kiln.build.stagehints import failure_hint
from kiln.core import proc, space
from kiln.core.errors import BuildError, CommandError, DiskFullError, InputError
from kiln.core.runtime import Runtime

TREE = "tree.tar.zst"  # a stage's tree in the cache: tar (numeric owners, xattrs, ACLs), zstd on every core
CONNECTION = "community.general.chroot"
_TAR_FLAGS = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"]
IN_NAMESPACE = bootstrap.IN_OWN_MOUNTS  # one definition: bootstrap, which this module imports
# a stage's Ansible run: its own mounts, host name, System V IPC and process IDs; the namespace's first
# process is killed when unshare dies (--kill-child), and the kernel then kills every process in it
_STAGE_NAMESPACES = [
    "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child",
    "--propagation", "private", "--",
]  # fmt: skip
# What root may do in a stage (setpriv's bounding set: Docker's default set, less mknod): own, chmod and chown
# the tree's files, set file capabilities (ping's), switch users (apt's sandbox, useradd), chroot, signal its
# own processes, raw sockets. Left out is whatever reaches the host's kernel or devices: modules, swap,
# mounts, the clock, network configuration, reboot, raw I/O, device nodes, immutable files.
STAGE_CAPS = (
    "chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap", "setfcap",
    "net_bind_service", "net_raw", "sys_chroot", "audit_write",
)  # fmt: skip
CAPS_ARG = ",".join(["-all", *(f"+{cap}" for cap in STAGE_CAPS)])  # setpriv's --bounding-set


def action_plugins(repo_root: Path, runtime: Runtime) -> str:
    """ANSIBLE_ACTION_PLUGINS for a stage: kiln's stage actions first, then the user's own path (passed on,
    kiln.config.environ) or Ansible's default one."""
    home = runtime.env.get("ANSIBLE_HOME") or "~/.ansible"
    default = f"{home}/plugins/action:/usr/share/ansible/plugins/action"
    user = runtime.env.get("ANSIBLE_ACTION_PLUGINS") or default
    return f"{repo_root / standins.STAGE_ACTIONS}:{user}"


QEMU_HOST = "10.0.2.2"  # the build host as a QEMU user-network guest reaches it


# a URL's host part that is QEMU_HOST: after `scheme://` and any login, before a port, a path or the end
_AT_QEMU_HOST = re.compile(r"(://(?:[^/?#@\s]*@)?)" + re.escape(QEMU_HOST) + r"(?=[:/?#\s]|$)")


def host_view(values: Any) -> Any:
    """Values as the chroot sees the network: a URL at QEMU's address of the build host (the stand-in
    server, an apt cache on the host, with or without a login) is the build host itself, 127.0.0.1, in a
    chroot. In no_proxy, a bare QEMU_HOST entry is the build host too."""
    if isinstance(values, str):
        return _AT_QEMU_HOST.sub(r"\g<1>127.0.0.1", values)
    if isinstance(values, Mapping):
        return {k: _no_proxy_view(v) if k == "no_proxy" else host_view(v) for k, v in values.items()}
    if isinstance(values, list | tuple):
        return [host_view(v) for v in values]
    return values


def _no_proxy_view(value: Any) -> Any:
    """no_proxy's hosts (comma-separated) as the chroot sees them: QEMU_HOST is 127.0.0.1."""
    if not isinstance(value, str):
        return host_view(value)
    return ",".join("127.0.0.1" if item.strip() == QEMU_HOST else item for item in value.split(","))


def check_host(runtime: Runtime) -> None:
    """Root, Ansible's chroot connection, and the tools that make and wall off a stage, before anything is
    made."""
    if os.geteuid() != 0:
        raise InputError(
            "provisioner chroot: needs root (mount and chroot into the stage's tree)",
            hint="run as root, or use provisioner vm",
        )
    try:
        import ansible_collections.community.general  # noqa: F401
    except ImportError:
        raise InputError(
            f"provisioner chroot: Ansible's {CONNECTION} connection is not installed",
            hint="install the `ansible` package into kiln's virtualenv (make deps does)",
        ) from None
    for tool in ("chroot", "unshare", "setpriv", "flock", "zstd"):
        proc.which(tool, runtime)


def root_partition(base: bootstrap.BaseImage) -> bootstrap.Partition:
    parts = base.info.get("partitions")
    if isinstance(parts, list) and parts:
        return bootstrap.Partition(**parts[-1])
    spec = base.info.get("spec")
    size = int(spec["disk_size_mib"]) if isinstance(spec, dict) else 0
    return bootstrap.layout(size)[-1]


def base_tree(
    base: bootstrap.BaseImage, tree: Path, work: Path, *, log_file: IO[str] | None, runtime: Runtime
) -> None:
    """The base disk's root filesystem, GRUB's files and grub.cfg included, copied into `tree`. The mount is
    read-write on a temp copy of the disk: its journal may need replaying, which a read-only mount cannot."""
    raw = work / "base.raw"
    root = root_partition(base)
    point = work / "base-root"  # the mount point in the work dir, not the host's /tmp
    tree.mkdir(parents=True)
    try:
        _raw_copy(base, raw, log_file=log_file, runtime=runtime)
        script = (
            'set -eu\nm="$3"\nmkdir -p "$m"\n'
            f'mount -o loop,offset={root.offset},sizelimit={root.size_bytes} "$1" "$m"\n'
            f'tar -C "$m" {" ".join(_TAR_FLAGS)} -cf - . | tar -C "$2" {" ".join(_TAR_FLAGS)} -xpf -\n'
        )
        argv = [*IN_NAMESPACE, "sh", "-c", script, "sh", str(raw), str(tree), str(point)]
        proc.run(argv, log_file=log_file, runtime=runtime)
    finally:
        raw.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            point.rmdir()  # empty: its mount went with the namespace


def stage_needs(parent: Path | None, base: bootstrap.BaseImage | None) -> int:
    """A chroot stage's peak use of the work dir, estimated: from a packed tree, the tree (about 3 x its
    tar) grown by the stage and packed again; from the base disk, its raw copy, the tree and the pack."""
    if parent is not None and parent.name == TREE and parent.is_file():
        return 4 * parent.stat().st_size + (256 << 20)
    if base is not None and base.disk.is_file():
        return int(2.5 * base.disk.stat().st_blocks * 512) + (256 << 20)
    return 0


def pack(tree: Path, out: Path, *, log_file: IO[str] | None, runtime: Runtime) -> None:
    """`tree` as one zstd-compressed tar (every core), written under a temp name and renamed. Sockets left
    by the stage are removed first: tar cannot hold them, and the tree handed on must be the tree packed."""
    part = out.with_name(out.name + ".part")
    script = (
        f'set -eu\nfind "$1" -xdev -type s -delete\n'
        f'tar -C "$1" {" ".join(_TAR_FLAGS)} -cf - . | zstd -q -T0 -3 -o "$2"\n'
    )
    try:
        proc.run(["sh", "-c", script, "sh", str(tree), str(part)], log_file=log_file, runtime=runtime)
        os.rename(part, out)
    finally:
        part.unlink(missing_ok=True)


def unpack(tar: Path, tree: Path, *, log_file: IO[str] | None, runtime: Runtime) -> None:
    tree.mkdir(parents=True)
    script = f'set -eu\nzstd -q -d -c "$1" | tar -C "$2" {" ".join(_TAR_FLAGS)} -xpf -\n'
    try:
        proc.run(["sh", "-c", script, "sh", str(tar), str(tree)], log_file=log_file, runtime=runtime)
    except (
        CommandError
    ) as e:  # a cache entry damaged after the build checked it (kiln.build.cachecheck), or not
        tail = e.output_tail.strip().splitlines()
        damaged = re.search(
            r"premature end|[Cc]orrupt|checksum|Unexpected EOF|unsupported format|not in zstd format|"
            r"does not look like a tar archive|[Uu]nknown frame descriptor",
            e.output_tail,
        )
        raise BuildError(
            f"{tar}: the packed tree cannot be unpacked: {tail[0] if tail else e}",
            hint=f"the packed tree is damaged: remove {tar.parent}, and the next build makes it again"
            if damaged
            else f"see why above; {tree} needs room and a file system with xattrs and ACLs",
        ) from e


@dataclass(frozen=True)
class Handoff:
    """A stage's root tree kept unpacked after it was packed, for the next reader of the packed file (the
    next stage, or finalize) to take instead of unpacking it again. The packed file is known by its device
    and inode, which the stage cache's rename keeps: a copy, or any other file, is a different one.

    Unpacking right after a stage removed its tree costs 16-27 s here (against 7-8 s on a quiet disk), and a
    cold build did it twice. The taken tree is the same as an unpacked one in everything the next step reads:
    contents, modes, owners, xattrs and ACLs, hard links, and the mtimes (clamped before packing); its
    ctimes and atimes differ, and the disk's are set to the epoch either way (bootstrap.make_root_fs). The
    order a directory lists its entries may differ on some host file systems (not on ext4, whose order
    follows the names' hashes)."""

    key: tuple[int, int, int, int]  # the packed file's device, inode, size and mtime (a rename keeps all)
    tree: Path

    @property
    def tree_bytes(self) -> int:
        """The kept tree's size, estimated from its packed copy's (for the disk space checks)."""
        return int(TREE_RATIO * self.key[2])

    def holds(self, packed: Path) -> bool:
        """`packed` is the very file this tree was packed into (not a copy, not a rewrite)."""
        try:
            return _key(packed) == self.key and self.tree.is_dir()
        except OSError:
            return False


TREE_RATIO = 3.3  # a root tree unpacked is about 3.3 x its zstd -3 tar (measured: debian-12, 1.1 GB)


def _key(packed: Path) -> tuple[int, int, int, int]:
    st = os.stat(packed)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def hand_off(packed: Path, tree: Path) -> Handoff:
    """`tree`, whose contents `packed` now holds, kept for the next reader of `packed`."""
    return Handoff(_key(packed), tree)


def still_held(handoff: Handoff | None, packed: Path) -> Handoff | None:
    """`handoff` while `packed` (where the stage cache put the packed tree) is still its file; else (the
    cache is on another file system and copied it) its tree is removed at once and None returned."""
    if handoff is None or handoff.holds(packed):
        return handoff
    shutil.rmtree(handoff.tree, ignore_errors=True)
    return None


def check_space(where: Path, needs: int, handoff: Handoff | None, what: str) -> None:
    """space.check for a step that reads a packed tree: the tree the last stage kept is on disk already
    (taken, or removed before anything is unpacked), so its bytes are not asked for again."""
    kept = handoff.tree_bytes if handoff is not None else 0
    space.check(where, max(0, needs - kept), what)


def take_or_unpack(
    handoff: Handoff | None, packed: Path, tree: Path, *, log_file: IO[str] | None, runtime: Runtime
) -> bool:
    """`tree` (which must not exist) made from `packed`: the hand-off's directory moved there when it is
    `packed`'s contents, else `packed` unpacked. A hand-off that is not taken is removed first, so that only
    one tree is ever on disk. True when the hand-off was taken."""
    if handoff is not None:
        if handoff.holds(packed):
            tree.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(handoff.tree, tree)
                return True
            except OSError:  # not where it can be moved: unpacked as any other
                pass
        shutil.rmtree(handoff.tree, ignore_errors=True)
    unpack(packed, tree, log_file=log_file, runtime=runtime)
    return False


# the tree's host name, with sethostname(2) (`hostname`), which works where /proc/sys is mounted read-only
# (kiln in a container), or through /proc where there is no `hostname` program
_LOCALHOST = "hostname localhost 2>/dev/null || echo localhost > /proc/sys/kernel/hostname"
# root's capabilities cut to a bounding set given next: none comes back at an exec
SETPRIV = ("setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set")
_SETPRIV = " ".join(SETPRIV)

# After the playbook: the containerd started on demand (kiln.build.ondemand) is stopped, and the shell
# waits (ONDEMAND_WAIT seconds at most) for its activator to let go of the lock it holds while it runs; then
# it exits with the playbook's status, or 1 where containerd did not stop in time (the tree may be
# half-written).
ONDEMAND_WAIT = 120
ONDEMAND_READY = "ondemand.ready"  # in the stage's work dir: the activator listens, or has said why not
ONDEMAND_SETTINGS = "ondemand.json"  # in the stage's work dir: what the activator gives containerd
_END = f"""p=$1 l=$2
shift 2
"$@"
rc=$?
if [ -n "$p" ]; then
  kill -TERM "$p" 2>/dev/null || :
  if ! flock -w {ONDEMAND_WAIT} "$l" true; then
    echo "kiln: the tree's containerd did not stop in {ONDEMAND_WAIT} s: the stage fails" >&2
    [ "$rc" -ne 0 ] || rc=1
  fi
fi
exit $rc
"""

# The stage's mounts and host name, made inside its namespaces; the command runs while they are there, with
# STAGE_CAPS only (bounding, inheritable and ambient sets: none comes back at an exec). The kernel's knobs
# under /proc and /sys are read-only both in the tree and in the namespace's own view, where ansible-playbook
# runs (a task delegated to localhost). The namespace's first process stays a shell (which ignores signals
# it has no handler for), so that Ctrl-C and SIGTERM reach Ansible as a normal process; it runs with
# STAGE_CAPS too, so that a program in the tree may read its /proc/1/root, as systemd's tools do to see that
# they run in a chroot (`systemctl restart` is then skipped, not refused: "System has not been booted with
# systemd").

_MOUNTS = (
    """set -eu
t="$1"; shift
"""
    + _LOCALHOST
    + """
read_only() {
  mount --bind "$1" "$1"
  mount -o remount,bind,ro "$1"
}
knobs() {
  for f in sys sysrq-trigger irq bus fs acpi; do
    [ ! -e "$1/$f" ] || read_only "$1/$f"
  done
}
mount -t proc -o nosuid,nodev,noexec proc "$t/proc"
knobs "$t/proc"
if [ -n "${KILN_STAGE_CMDLINE:-}" ]; then
  mount --bind "$KILN_STAGE_CMDLINE" "$t/proc/cmdline"
  mount -o remount,bind,ro "$t/proc/cmdline"
fi
knobs /proc
! mountpoint -q /sys || mount -o remount,bind,ro /sys
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$t/sys"
mount -t tmpfs -o nosuid,nodev,mode=0755 dev "$t/dev"
for n in null zero full random urandom tty; do
  : > "$t/dev/$n"
  mount --bind "/dev/$n" "$t/dev/$n"
done
mkdir -m 0755 "$t/dev/pts"
mkdir -m 1777 "$t/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$t/dev/pts"
mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$t/dev/shm"
ln -s pts/ptmx "$t/dev/ptmx"
ln -s /proc/self/fd "$t/dev/fd"
ln -s /proc/self/fd/0 "$t/dev/stdin"
ln -s /proc/self/fd/1 "$t/dev/stdout"
ln -s /proc/self/fd/2 "$t/dev/stderr"
mkdir -p -m 0755 "$t/run"
mount --bind "$KILN_STAGE_RUN" "$t/run"
"""
    + f"""w="$KILN_STAGE_WORK" lock="$KILN_STAGE_WORK/ondemand.lock"
rm -f "$w/{ONDEMAND_READY}"
exec 9>"$lock"
flock -w 10 9
PYTHONPATH="$KILN_ONDEMAND" "$KILN_PYTHON" -m kiln.build.ondemand "$t" "$KILN_STAGE_RUN" "$w" &
pid=$!
exec 9>&-
i=0
while [ ! -e "$w/{ONDEMAND_READY}" ] && [ "$i" -lt 200 ]; do
  sleep 0.05
  i=$((i + 1))
done
unset KILN_PYTHON KILN_ONDEMAND KILN_STAGE_WORK
"""
    + f"""exec {_SETPRIV} "$KILN_STAGE_CAPS" -- sh -c {shlex.quote(_END)} sh "$pid" "$lock" "$@"
"""
)


def playbook_argv(tree: Path, vars_file: Path, playbook: Path, user_vars: str = "") -> list[str]:
    """ansible-playbook against `tree`, inside the namespace that mounts what the run needs."""
    argv = [
        *_STAGE_NAMESPACES, "sh", "-c", _MOUNTS, "sh", str(tree),
        "ansible-playbook", "-i", f"{tree},", "-c", CONNECTION, "--extra-vars", f"@{vars_file}",
    ]  # fmt: skip
    if user_vars:
        argv += ["--extra-vars", user_vars]
    return [*argv, str(playbook)]


# A command in a tree behind the stage's wall (host name, IPC, processes, capabilities), without its mounts:
# the goss tree phase asks only about the tree's files. Not `exec`.
# the tree read-only for what runs in it: bound onto itself in the namespace, then remounted read-only
_WALL = f"""set -eu
{_LOCALHOST}
caps="$1"; tree="$2"; shift 2
mount --bind "$tree" "$tree"
mount -o remount,bind,ro "$tree"
{_SETPRIV} "$caps" -- "$@"
"""


def walled(tree: Path, argv: Sequence[str], *, runtime: Runtime) -> list[str]:
    """`chroot TREE ARGV` behind the stage's wall (module doc), with nothing mounted in the tree and the
    tree read-only: a goss tree-phase check (a user's `command` too) sees its own host name and processes,
    lacks the capabilities that rename, reconfigure or reach into the build host's kernel, and cannot write
    into the image it checks (it runs after sysprep: a file it left would ship). Against accidents, as the
    stage's wall: /proc is not mounted in the tree, and the namespace's own view of it is the host's."""
    chroot_bin = proc.which("chroot", runtime)
    return [
        *_STAGE_NAMESPACES, "sh", "-c", _WALL, "sh", CAPS_ARG, str(tree), chroot_bin, str(tree), *argv
    ]  # fmt: skip


FLOOR = 1 << 30  # what a stage leaves free on the build host's filesystem, at least (or half of what was)
DISK_HINT = (
    "a task wrote that much into the tree (free-space zeroing such as `dd if=/dev/zero of=/EMPTY` has no "
    "use in a chroot stage: finalize makes a new filesystem, whose free space is zero; skip it with `when: "
    "kiln_runner | default('vm') != 'chroot'`), or the image needs a larger disk_size; nothing of the "
    "stage was cached"
)


class DiskGuard:
    """Watches the filesystem holding a stage's tree while a playbook runs: `tripped()` says True, with
    `why`, once the run has written more than `room` bytes onto it (free space fell by that much: the
    image's disk holds no more, and a build VM's writes end there), or left less than FLOOR free (or half of
    what was free when it started, on a filesystem that had less than twice FLOOR). It measures the
    filesystem, so another writer there (a second build) counts too: the error says the filesystem lost it."""

    def __init__(self, tree: Path, room: int | None) -> None:
        self.tree, self.room, self.why = tree, room, ""
        self.start = space.free(tree)
        self.floor = min(FLOOR, self.start // 2)

    def tripped(self) -> bool:
        have = space.free(self.tree)
        if self.room is not None and self.start - have > self.room:
            self.why = (
                f"stopped: {self.tree}'s filesystem lost {space.human(self.start - have)} of free space "
                f"while it ran, more than the image's disk holds ({space.human(self.room)}, disk_size)"
            )
        elif have < self.floor:
            self.why = (
                f"stopped with {space.human(have)} left free on {self.tree}'s filesystem "
                f"({space.human(self.start - have)} less than when it started); kiln leaves the build host "
                f"{space.human(self.floor)} at least"
            )
        return bool(self.why)

    def error(self, playbook: Path) -> DiskFullError:
        return DiskFullError(f"{playbook.name} in the chroot of {self.tree}: {self.why}", hint=DISK_HINT)


def run_playbooks(
    tree: Path,
    work: Path,
    playbooks: Sequence[Path],
    extra_vars: Mapping[str, Any],
    *,
    repo_root: Path,
    user_vars: str = "",
    log_file: IO[str] | None,
    on_line: Any = None,
    epoch: int = 0,
    room: int | None = None,
    root_uuid: str | None = None,
    runtime: Runtime,
) -> None:
    """ansible-playbook with the chroot connection against `tree`, in namespaces of its own with /proc, /sys,
    /dev and the stage's /run mounted for the run (what it puts in the tree: kiln.build.standins), walled off
    from the host (module doc). With `epoch`,
    every command in the chroot sees SOURCE_DATE_EPOCH (the chroot connection passes ansible's environment
    on): mkinitramfs, run by dpkg triggers, then writes the same initrd for the same files. With `room` (the
    image's disk size), a run that writes more than that onto the tree's filesystem, or leaves it nearly full,
    is stopped (DiskFullError): a build VM's writes end at its disk, a chroot's at the build host's. The
    stage's /proc/cmdline is the image's (bootloader.image_cmdline, with the base disk's `root_uuid`)."""
    vars_file = work / "ansible-vars.json"
    cmdline = work / "cmdline"  # the stage's /proc/cmdline (bootloader.image_cmdline)
    # the facts gathered run setup, then kiln_tree_facts (ansible/library), in that order: the kernel, swap
    # and mounts facts describe the image, not the build host (kiln.build.treefacts)
    facts_in_order = {"ansible_facts_parallel": False}
    vars_file.write_text(json.dumps({**extra_vars, **facts_in_order}, indent=2, sort_keys=True) + "\n")
    # the build's proxies, for the pulls the tree's containerd makes itself (kiln.build.ondemand): not on its
    # command line, where a proxy's login would show
    proxies = {k: str(extra_vars[k]) for k in ("http_proxy", "https_proxy", "no_proxy") if extra_vars.get(k)}
    settings = work / ONDEMAND_SETTINGS
    settings.touch(mode=0o600)
    settings.write_text(json.dumps({"proxies": proxies}) + "\n")
    # ansible-playbook keeps the host's loader settings (it is a host program), the tree does not: the chroot
    # connection runs this in place of chroot, with the environment Ansible passes on
    chroot_exe = work / "chroot-exe"
    unset = " ".join(f"-u {name}" for name in proc.HOST_LOADER)
    chroot_exe.write_text(f'#!/bin/sh\nexec env {unset} {proc.quote([proc.which("chroot", runtime)])} "$@"\n')
    chroot_exe.chmod(0o700)
    env = {
        "ANSIBLE_CHROOT_EXE": str(chroot_exe),
        "ANSIBLE_CONFIG": str(repo_root / "ansible" / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"),
        "ANSIBLE_REMOTE_TEMP": "/tmp/.kiln-ansible",
        "KILN_STAGE_CAPS": CAPS_ARG,
        "KILN_STAGE_WORK": str(work),
        # the tree's containerd on demand (kiln.build.ondemand), by this Python and this kiln
        "KILN_PYTHON": sys.executable,
        "KILN_ONDEMAND": str(Path(__file__).resolve().parents[2]),
        "ANSIBLE_FACTS_MODULES": "ansible.legacy.setup,kiln_tree_facts",
        # first: Ansible's own action for modules without one, but a kernel module's asks the image's kernel
        "ANSIBLE_ACTION_PLUGINS": action_plugins(repo_root, runtime),
        **({"SOURCE_DATE_EPOCH": str(epoch)} if epoch else {}),
    }
    with standins.prepared(tree, work, runtime=runtime, log_file=log_file) as stage_run:
        for playbook in playbooks:
            argv = playbook_argv(tree, vars_file, playbook, user_vars)
            # read before each playbook: a kernel the os stage installed is the kubernetes stage's
            image_facts = treefacts.facts(tree, room)
            facts = json.dumps(image_facts, sort_keys=True)
            line = bootloader.image_cmdline(
                tree, image_facts.get("kernel"), root_uuid, log_file=log_file, runtime=runtime
            )
            cmdline.write_text(f"{line}\n" if line else "")
            guard = DiskGuard(tree, room)
            try:
                proc.run(
                    argv, env=proc.tree_env(runtime, host_loader=True),
                    extra_env={**env, "KILN_STAGE_RUN": str(stage_run), "KILN_TREE_FACTS": facts,
                               "KILN_STAGE_CMDLINE": str(cmdline) if line else ""},
                    log_file=log_file, on_line=on_line, capture=False, tail_lines=60,
                    watch=guard.tripped if room else None, runtime=runtime,
                )  # fmt: skip
                if room and guard.tripped():  # filled as it ended: the tree cannot be what the image holds
                    raise guard.error(playbook)
            except CommandError as err:
                if guard.why:
                    raise guard.error(playbook) from err
                raise BuildError(
                    f"{playbook.name} in the chroot of {tree} failed (exit {err.returncode})\n"
                    f"{err.output_tail.rstrip()}",
                    hint=failure_hint(err.output_tail, tree),
                ) from err
    leftovers = tree / "tmp" / ".kiln-ansible"
    shutil.rmtree(leftovers, ignore_errors=True)


def disk_from_tree(
    base: bootstrap.BaseImage,
    tree: Path,
    raw: Path,
    *,
    epoch: int,
    seed: str,
    log_file: IO[str] | None,
    runtime: Runtime,
) -> None:
    """The finished disk, made offline: the base disk's partition table, BIOS boot partition and ESP (GRUB
    for BIOS and UEFI), and a root filesystem made from `tree` with the base's UUID (so GRUB finds it).
    Reproducible: every time in the tree is clamped to `epoch` first, and the filesystem's hash seed comes
    from `seed` (the tree's stage ID), so the same tree makes the same bytes."""
    root = root_partition(base)
    if not base.root_uuid:
        raise BuildError(f"{base.dir}/info.json: no root_uuid recorded; rebuild the base (kiln cache prune)")
    clamp_times(tree, epoch)
    _raw_copy(base, raw, log_file=log_file, runtime=runtime)
    hash_seed = str(uuid.uuid5(uuid.NAMESPACE_URL, f"kiln:ext4-hash-seed:{seed}"))
    bootstrap.make_root_fs(raw, root, base.root_uuid, tree, epoch=epoch, hash_seed=hash_seed,
                           log_file=log_file, runtime=runtime)  # fmt: skip


def clamp_times(tree: Path, epoch: int) -> None:
    """Every modification time in `tree` at most `epoch` (SOURCE_DATE_EPOCH's rule: clamp; an older file
    keeps its time to the nanosecond). systemd's ConditionNeedsUpdate compares /usr's mtime, to the
    nanosecond, with the TIMESTAMP_NSEC that /etc/.updated and /var/.updated record; when /usr moves, the
    records move with it, or the first boot would rebuild the hwdb and the linker cache."""
    limit = epoch * 1_000_000_000
    usr = tree / "usr"
    usr_before = os.lstat(usr).st_mtime_ns if usr.is_dir() else None
    for top, dirs, files in os.walk(tree):
        names = [*dirs, *files, ""] if top == str(tree) else [*dirs, *files]
        for name in names:
            path = os.path.join(top, name) if name else top
            st = os.lstat(path)
            if st.st_mtime_ns > limit:
                os.utime(path, ns=(limit, limit), follow_symlinks=False)
    if usr_before is None:
        return
    usr_after = os.lstat(usr).st_mtime_ns
    for record in (tree / "etc" / ".updated", tree / "var" / ".updated"):
        if usr_after != usr_before and record.is_file() and not record.is_symlink():
            text = record.read_text(errors="replace")
            record.write_text(re.sub(r"TIMESTAMP_NSEC=\d+", f"TIMESTAMP_NSEC={usr_after}", text))
            os.utime(record, ns=(min(limit, usr_after), min(limit, usr_after)), follow_symlinks=False)


def _raw_copy(base: bootstrap.BaseImage, raw: Path, *, log_file: IO[str] | None, runtime: Runtime) -> None:
    """A sparse raw copy of the base disk to read or rewrite (the cached qcow2 is never written)."""
    proc.run(
        ["qemu-img", "convert", "-O", "raw", str(base.disk), str(raw)], log_file=log_file, runtime=runtime
    )
