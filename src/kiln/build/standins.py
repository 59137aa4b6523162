"""What a chroot stage puts into a tree while it runs, so that roles written for a build VM find what a build
VM booted from the base disk would give them, and takes out again on every exit: `prepared(tree, work)`.
kiln.build.chroot runs the stage; nothing here stays in the image.

- No service starts: /usr/sbin/policy-rc.d (exit 101), and dpkg without an fsync per file.
- /run is the stage's own: a directory in the stage's work dir, made from the tree's /run and bound over it
  in the stage's mount namespace (chroot._MOUNTS), with what a booted system has there and tools check for:
  /run/lock, sshd's privilege separation directory /run/sshd (`sshd -t`, a role's `validate:`),
  cloud-init's record of a finished boot (`cloud-init status --wait`, which a build VM's role runs before
  apt, waited forever in a tree no cloud-init ever ran in), and systemd-resolved's resolv.conf files. What a
  stage writes under /run goes with the stage, as /run goes with a boot. /run/kiln-stage/image_kernel.py
  is the interpreter kiln's stage action (ansible/stage_plugins) gives Ansible's modprobe module: the
  running kernel's release is the image's there, and /proc/modules lists what the `modprobe` stand-in took
  during the stage (/run/kiln-stage/loaded).
- /etc/resolv.conf names the build host's name servers for the stage; afterwards the tree's own is back.
  A task (or systemd-resolved's postinst) that replaces the file with its own (a link to resolved's stub)
  keeps its own, as in a build VM; the link resolves into the stage's /run, so names still resolve. Before,
  a bind mount over the file made that replacement fail ("Device or resource busy"), and the image kept a
  plain resolv.conf beside systemd-resolved.
- SSH host keys: `ssh-keygen -A` makes throwaway ones for the types the tree lacks (a build VM has the keys
  cloud-init made at its first boot), so `sshd -t` finds keys; the ones kiln made are removed afterwards.
- Diverted programs (dpkg-divert, so that an upgrade of their package lands beside them): update-grub and
  grub-mkconfig, which cannot ask a running system which device holds / (finalize writes grub.cfg:
  kiln.build.bootloader.write_cfg); `service NAME start|stop|restart|...`, which, with no systemd
  running, would start the init script's daemon in the tree, on the build host's network; and `sysctl`'s
  and `modprobe`'s writes and loads, which would reach the build host's kernel (the stage's wall refuses
  them) and in a build VM never reach the image either: the image applies /etc/sysctl.d and loads
  /etc/modules-load.d at boot; dd's free-space zeroing, which would fill the build host's disk to no end;
  `swapoff`, whose swap would be the build host's (a build VM from the base disk has none);
  journalctl's requests to journald (`--rotate`), which no stage runs; and `mount`'s remounts and mounts of
  the image's own file systems (its fstab), which the image mounts at boot. The note
  each prints says so; queries (`service NAME status`, `sysctl -n`, `modprobe --show-depends`) and any
  other dd run the real program. A hook of the stage keeps them out of any initrd built meanwhile.
- Processes left running in the tree (a daemon a postinst started despite policy-rc.d) are killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from kiln.build.standin_programs import DIVERSIONS, DIVERTED, EVEN_IF_MISSING, HOOK, INITRAMFS_HOOK
from kiln.core import proc
from kiln.core.errors import BuildError, CommandError
from kiln.core.runtime import Runtime

log = logging.getLogger(__name__)

POLICY_RC_D = "usr/sbin/policy-rc.d"
POLICY_TEXT = "#!/bin/sh\n# kiln: no service starts while a chroot stage runs\nexit 101\n"
# dpkg without an fsync per file while a stage runs (a failed stage's tree is thrown away, a finished one is
# packed after dpkg is done); removed with policy-rc.d, so the image's dpkg is as Debian ships it
UNSAFE_IO = "etc/dpkg/dpkg.cfg.d/kiln-stage-unsafe-io"
STAGE_RUN = "run"  # in the stage's work dir: the tree's /run while the stage runs
STAGE_ACTIONS = "ansible/stage_plugins/action"  # in the repo: chroot stages' Ansible actions (module doc)
IMAGE_KERNEL = "ansible/stage_plugins/image_kernel.py"  # in the repo; in the stage: /run/kiln-stage/
RESOLVED = ("systemd/resolve/stub-resolv.conf", "systemd/resolve/resolv.conf")  # under /run


@contextlib.contextmanager
def prepared(tree: Path, work: Path, *, runtime: Runtime, log_file: IO[str] | None = None) -> Iterator[Path]:
    """Make `tree` ready for a stage (module doc) and put it back on every exit. Yields the directory to bind
    over the tree's /run for the stage."""
    policy = tree / POLICY_RC_D
    own_policy = tree / f"{POLICY_RC_D}.kiln-own"
    unsafe = tree / UNSAFE_IO
    try:
        host = Path("/etc/resolv.conf").read_bytes()
    except OSError:
        host = b""
    run = work / STAGE_RUN
    try:
        stage_run(tree, run, host, runtime=runtime, log_file=log_file)
        policy.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(policy):  # the tree's own (a package's, or a link to one): set aside, not followed
            os.rename(policy, own_policy)
        _write_new(policy, POLICY_TEXT)
        if unsafe.parent.is_dir():
            unsafe.write_text("# kiln: while a stage provisions this tree only\nforce-unsafe-io\n")
        with (
            resolver(tree, run, host),
            host_keys(tree, runtime=runtime, log_file=log_file),
            diverted(tree, log_file=log_file, runtime=runtime),
        ):
            try:
                yield run
            finally:
                kill_processes_in(tree)  # before the tree's own programs are put back
    finally:
        _policy_back(policy, own_policy)
        unsafe.unlink(missing_ok=True)
        shutil.rmtree(run, ignore_errors=True)


def _policy_back(policy: Path, own: Path) -> None:
    """The end of a stage: kiln's policy-rc.d removed (only kiln's: one a package put in its place during the
    stage stays), and the tree's own put back where the path is free."""
    if policy.is_file() and not policy.is_symlink() and policy.read_text(errors="replace") == POLICY_TEXT:
        policy.unlink()
    if os.path.lexists(own):
        if os.path.lexists(policy):
            log.warning(
                "%s: a package installed its own during the stage; the tree's earlier one dropped", policy
            )
            own.unlink()
        else:
            os.rename(own, policy)


def stage_run(tree: Path, run: Path, resolv: bytes, *, runtime: Runtime, log_file: IO[str] | None) -> None:
    """Make `run`, the stage's /run (module doc): a copy of the tree's (owners and modes kept), and what a
    booted build VM has there."""
    run.mkdir(mode=0o755)
    if (tree / "run").is_symlink():  # it would lead the copy (and the bind mount) out of the tree
        raise BuildError(
            f"{tree}/run: a symbolic link ({os.readlink(tree / 'run')}); a root tree's /run is a directory"
        )
    if (tree / "run").is_dir():
        proc.run(["cp", "-a", f"{tree}/run/.", f"{run}/"], log_file=log_file, runtime=runtime)
    for name, mode in (("lock", 0o1777), ("sshd", 0o755)):
        (run / name).mkdir(exist_ok=True)
        (run / name).chmod(mode)
    (run / "cloud-init").mkdir(exist_ok=True)
    now = time.time()
    why = "DataSourceNone [kiln chroot stage: cloud-init runs at the image's first boot]"
    names = ("init-local", "init", "modules-config", "modules-final")
    stages = {name: {"errors": [], "start": now, "finished": now} for name in names}
    status = {"v1": {"datasource": why, "stage": None, **stages}}
    result = {"v1": {"datasource": why, "errors": []}}
    (run / "cloud-init" / "status.json").write_text(json.dumps(status, indent=1) + "\n")
    (run / "cloud-init" / "result.json").write_text(json.dumps(result) + "\n")
    for rel in RESOLVED:
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(resolv)
    shim = run / "kiln-stage" / "image_kernel.py"  # Ansible's modprobe module runs under it (module doc)
    shim.parent.mkdir(mode=0o755, exist_ok=True)
    shutil.copyfile(runtime.root / IMAGE_KERNEL, shim)
    shim.chmod(0o755)


def _into_run(link: Path) -> str | None:
    """Where under /run a symlink in the tree points ("systemd/resolve/stub-resolv.conf"), or None."""
    target = os.path.normpath(os.path.join("/etc", os.readlink(link)))
    return target.removeprefix("/run/") if target.startswith("/run/") else None


@contextlib.contextmanager
def resolver(tree: Path, run: Path, host: bytes) -> Iterator[None]:
    """The build host's name servers in the tree for the stage, its own resolv.conf back afterwards (module
    doc). A resolv.conf that links into /run (systemd-resolved's stub: a networkd base's) gets the host's
    servers in the stage's /run and stays as is; a task's file in its place, or a copy under /etc, that
    names them gives way to the link, as the stand-in file does."""
    etc = tree / "etc" / "resolv.conf"
    into_run = _into_run(etc) if etc.is_symlink() else None
    if into_run is not None:
        stub = run / into_run
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_bytes(host)
        st, into = os.stat(stub), os.readlink(etc)
        try:
            yield
        finally:
            _put_back_resolver(tree, etc, (st.st_dev, st.st_ino), into, None, host)
        return
    if etc.is_dir() and not etc.is_symlink():
        raise BuildError(f"{etc}: a directory, not the resolver's file; the stage cannot name servers there")
    link = os.readlink(etc) if etc.is_symlink() else None
    original = etc.read_bytes() if link is None and etc.is_file() else None
    etc.parent.mkdir(parents=True, exist_ok=True)
    standin = etc.with_name(".resolv.conf.kiln-stage")
    standin.write_bytes(host)
    os.replace(standin, etc)  # a file of its own (a new inode): kiln finds it again wherever a task moves it
    held = os.open(etc, os.O_RDONLY)  # open: its inode is not reused if a task unlinks it
    mine = os.fstat(held)
    try:
        yield
    finally:
        try:
            _put_back_resolver(tree, etc, (mine.st_dev, mine.st_ino), link, original, host)
        finally:
            os.close(held)


def _servers(text: bytes) -> set[bytes]:
    return {line.split()[1] for line in text.splitlines() if line.split()[:1] == [b"nameserver"] and
            len(line.split()) > 1}  # fmt: skip


def _put_back_resolver(
    tree: Path, etc: Path, mine: tuple[int, int], link: str | None, original: bytes | None, host: bytes
) -> None:
    """After a stage: resolv.conf as the tree had it, unless a task made its own (a link, as
    systemd-resolved's postinst does, or a file naming none of the build host's servers), which stays, as in
    a build VM. A file that still names the build host's servers (kiln's stand-in, edited in place or
    through a module's rename, as lineinfile and template write) gives way to the tree's own, with a
    warning; so does a move or a byte-for-byte copy of the stand-in elsewhere under /etc (a `backup: yes`,
    systemd-resolved's /etc/.resolv.conf.systemd-resolved.bak), or it goes where the tree had none. Other
    files are the roles' own, whatever servers they name."""
    leaked = _servers(host)

    def same(path: Path) -> bool:
        st = os.lstat(path)
        return (st.st_dev, st.st_ino) == mine

    def names_the_hosts(path: Path) -> bool:
        return bool(leaked) and path.stat().st_size < 65536 and bool(_servers(path.read_bytes()) & leaked)

    def a_copy(path: Path) -> bool:  # of the stand-in, byte for byte (a backup a module made)
        return bool(host) and path.stat().st_size == len(host) and path.read_bytes() == host

    if etc.is_file() and not etc.is_symlink() and (same(etc) or names_the_hosts(etc)):
        if etc.read_bytes() != host:
            log.warning("%s: a task changed it; the tree's own is put back (the stage's named the build "
                        "host's name servers)", etc)  # fmt: skip
        etc.unlink()
        if link is not None:
            os.symlink(link, etc)
        elif original is not None:
            etc.write_bytes(original)
    for top, _dirs, files in os.walk(tree / "etc"):
        for name in files:
            path = Path(top) / name
            if path == etc or path.is_symlink() or not path.is_file() or not (same(path) or a_copy(path)):
                continue
            if original is not None:
                path.write_bytes(original)
            else:
                path.unlink()


@contextlib.contextmanager
def host_keys(tree: Path, *, runtime: Runtime, log_file: IO[str] | None) -> Iterator[list[Path]]:
    """Throwaway SSH host keys for the types the tree lacks (module doc); the ones kiln made, unchanged, are
    removed on every exit. Yields them; none in a tree without ssh-keygen or /etc/ssh."""
    ssh = tree / "etc" / "ssh"
    if not ((tree / "usr" / "bin" / "ssh-keygen").exists() and ssh.is_dir()):
        yield []
        return
    before = set(ssh.glob("ssh_host_*"))
    made: dict[Path, str] | None = None
    try:
        proc.run(["chroot", str(tree), "ssh-keygen", "-A"], env=proc.tree_env(runtime), log_file=log_file,
                 runtime=runtime)  # fmt: skip
        made = {p: _digest(p) for p in sorted(set(ssh.glob("ssh_host_*")) - before)}
        yield list(made)
    finally:
        if made is None:  # ssh-keygen failed part way: what it made is what is new
            made = {p: _digest(p) for p in set(ssh.glob("ssh_host_*")) - before}
        for path, digest in made.items():
            if path.is_file() and not path.is_symlink() and _digest(path) == digest:
                path.unlink()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def in_tree(tree: Path, path: str, *, follow: bool = False) -> Path:
    """`path` (absolute, as the tree names it) where it is on the build host: each directory's link followed
    inside the tree (an absolute link names the tree's file, not the build host's; `..` stops at the tree's
    root), the last component not followed, unless `follow` (the file a program's name leads to)."""
    *dirs, last = [part for part in path.split("/") if part] + (["."] if follow else []) or ["."]
    here: list[str] = []
    hops = 0
    while dirs:
        part = dirs.pop(0)
        if part in (".", ".."):
            here = here[:-1] if part == ".." else here
            continue
        if (tree.joinpath(*here, part)).is_symlink():
            hops += 1
            if hops > 40:
                raise BuildError(f"{tree}: {path}: too many levels of symbolic links")
            target = os.readlink(tree.joinpath(*here, part))
            here = [] if target.startswith("/") else here
            dirs = [p for p in target.split("/") if p] + dirs
            continue
        here.append(part)
    return tree.joinpath(*here, last)


def _write_new(path: Path, text: str) -> None:
    """A new executable file (never through a link, never over a file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o755)  # whatever the umask


def packaged(lists: str, path: str) -> str:
    """`path` as the tree's dpkg lists it (`lists`: its info/*.list, joined): /sbin/sysctl and
    /usr/sbin/sysctl are one file where /sbin is a link to usr/sbin, and a diversion must name the path the
    package ships, or an upgrade of the package during the stage would write over the stand-in. `path`
    itself when no package lists either."""
    head, _, name = path.rpartition("/")
    other = ("/usr" + head if not head.startswith("/usr/") else head[len("/usr") :]) + "/" + name
    return other if f"\n{other}\n" in lists and f"\n{path}\n" not in lists else path


@contextlib.contextmanager
def diverted(tree: Path, *, log_file: IO[str] | None, runtime: Runtime) -> Iterator[list[str]]:
    """The DIVERSIONS in `tree` for a stage (module doc), put back on every exit, dpkg's diversion list and
    its backup as they were. Yields the paths diverted: none in a tree without dpkg-divert, and not one the
    tree's own packages divert already."""
    backup = tree / "var" / "lib" / "dpkg" / "diversions-old"
    saved = backup.read_bytes() if backup.is_file() else None
    done: list[str] = []

    def dpkg_divert(*args: str) -> None:
        proc.run(["chroot", str(tree), "dpkg-divert", "--quiet", "--local", "--rename", *args],
                 env=proc.tree_env(runtime), log_file=log_file, runtime=runtime)  # fmt: skip

    made: list[Path] = []  # the initramfs hook, and the directories made for it

    def put_back() -> None:
        for ours in reversed(made):
            if ours.is_dir():
                with contextlib.suppress(OSError):  # a package put files there since: it stays
                    ours.rmdir()
            else:
                ours.unlink(missing_ok=True)
        for path in reversed(done):
            in_tree(tree, path).unlink(missing_ok=True)
            dpkg_divert("--remove", path)
        if done and saved is not None:
            backup.write_bytes(saved)
        elif done:
            backup.unlink(missing_ok=True)

    info = tree / "var" / "lib" / "dpkg" / "info"
    lists = "\n" + "\n".join(p.read_text(errors="replace") for p in sorted(info.glob("*.list"))) + "\n"
    try:
        for path, note in DIVERSIONS.items() if (tree / "usr" / "bin" / "dpkg-divert").exists() else ():
            if path not in EVEN_IF_MISSING and not os.path.lexists(in_tree(tree, path)):
                continue  # not in the tree: nothing to stand in for
            path = packaged(lists, path)
            try:
                dpkg_divert("--divert", path + DIVERTED, "--add", path)
            except CommandError:
                continue  # diverted by a package of the tree already: left as it is
            done.append(path)
            _write_new(in_tree(tree, path), note.replace("@REAL@", path + DIVERTED))
        if done:
            hook = in_tree(tree, INITRAMFS_HOOK)
            for parent in reversed(hook.parents[: len(hook.relative_to(tree).parts) - 1]):
                if not parent.exists():
                    parent.mkdir(mode=0o755)
                    made.append(parent)
            text = HOOK.replace("@PATHS@", " ".join(done)).replace("@DIVERTED@", DIVERTED)
            _write_new(hook, text)
            made.append(hook)
        yield done
    except BaseException:
        with contextlib.suppress(CommandError):  # a failed stage's tree is thrown away: its error counts
            put_back()
        raise
    put_back()


def kill_processes_in(tree: Path) -> list[int]:
    """SIGKILL every process whose root directory is `tree` (a daemon a postinst started despite
    policy-rc.d); returns their pids."""
    target = os.path.realpath(tree)
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "root") == target:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
        except (OSError, ValueError):
            continue
    deadline = time.monotonic() + 5
    while killed and time.monotonic() < deadline and not all(_dead(p) for p in killed):
        time.sleep(0.05)
    return killed


def _dead(pid: int) -> bool:
    """Gone, or a zombie: dead, its entry waiting for a parent that may never collect it (kiln is not that
    parent; waiting on /proc/PID alone waited out the whole 5 s for one). A daemon's main thread is a zombie
    while its other threads still exit, so only a zombie with no thread left counts."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[:1]
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return True
    return state in (["Z"], ["X"]) and threads <= 1
