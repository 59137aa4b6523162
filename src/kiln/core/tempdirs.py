"""Temp dirs that say whether their owner lives, and the collection of those whose owner died.

Every directory kiln works in before it renames it into place (a build's OUTPUT/.NAME.tmp-PID-XXXX, a
stage entry's CACHE/stages/.ID.tmp-PID-XXXX, a base disk's, the SSH key dir under /tmp) is made by
`create`: its name carries the owner's pid, and the owner holds an flock on the directory itself for as
long as it lives (the kernel drops the lock when the process dies, however it dies; a rename keeps it).

`collect` removes the ones whose lock is free and that no process still works in (its path in a command
line, or as a working or root directory: a child of a killed kiln that the watchdog has not ended yet),
unmounting anything left mounted under them first. It never touches a directory a live kiln holds, nor one
not named the way `create` names them: kiln deletes nothing it did not create. A directory a failed build
keeps on purpose (Packer's -on-error=abort) carries KEPT and is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

KEPT = ".kiln-kept"  # inside a temp dir that a failed build keeps for the user to inspect
_NAME = re.compile(r"^\..+\.tmp-(?P<pid>\d+)-[^/]+$")


@dataclass
class TempDir:
    path: Path
    fd: int  # holds the flock; closed by release()

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def create(parent: Path, name: str, mode: int = 0o700) -> TempDir:
    """PARENT/.NAME.tmp-PID-XXXX, locked by this process until release() or its death."""
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=parent))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # a collector took it before we could lock it: make another
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a collector that saw it unlocked removes it
        if os.fstat(fd).st_nlink > 0:
            if mode != 0o700:
                path.chmod(mode)
            return TempDir(path, fd)
        os.close(fd)  # removed between mkdtemp and the lock: make another


@contextlib.contextmanager
def scratch(parent: Path, name: str, mode: int = 0o700) -> Iterator[Path]:
    """A temp dir (`create`) for the length of the block, removed with what is in it however the block ends;
    if the process is killed, the next run collects it."""
    owned = create(parent, name, mode)
    try:
        yield owned.path
    finally:
        try:
            shutil.rmtree(owned.path, ignore_errors=True)
        finally:  # an interrupt in a long rmtree: the lock goes anyway; the next run collects the rest
            owned.release()


def remove(path: Path) -> None:
    """Remove the directory `path` (kiln's own: a cache entry) so that no part of it stays for good: it is
    moved into a temp dir of this process's first, which the next run collects should this one die or be
    interrupted while removing it. A path that is not there is fine."""
    try:
        with scratch(path.parent, f"{path.name}-removed") as aside:  # removed with the entry in it
            try:
                os.rename(path, aside / "entry")
            except FileNotFoundError:
                pass
            except OSError:
                shutil.rmtree(path, ignore_errors=True)
    except OSError:
        # no temp dir where kiln may not write (another user's cache): what can go, goes, in place
        shutil.rmtree(path, ignore_errors=True)


def owner_pid(path: Path) -> int | None:
    match = _NAME.match(path.name)
    return int(match["pid"]) if match else None


@dataclass(frozen=True)
class Stale:
    path: Path
    pid: int


def collect(parent: Path, *, prefix: str = "", dry_run: bool = False) -> list[Stale]:
    """Remove the temp dirs in `parent` (names starting `.PREFIX`) whose owner is dead; return them.
    `dry_run`: return them and remove nothing."""
    removed: list[Stale] = []
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return removed
    for name in names:
        path = parent / name
        pid = owner_pid(path)
        if pid is None or not name.startswith(f".{prefix}"):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # not a directory (or gone already)
        try:
            if os.fstat(fd).st_uid != os.geteuid():
                continue  # another user's (a shared /tmp): not ours to judge
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner lives
            if (path / KEPT).exists() or in_use(path):
                continue
            if dry_run:
                removed.append(Stale(path, pid))
                continue
            if not _unmount_under(path):
                continue
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(Stale(path, pid))
        finally:
            os.close(fd)
    return removed


def describe(stale: list[Stale]) -> str:
    """One line for the terminal: what was removed and whose it was."""
    what = ", ".join(f"{s.path} (pid {s.pid})" for s in stale)
    noun = "dir" if len(stale) == 1 else "dirs"
    return f"removed {len(stale)} stale temp {noun} left by kiln runs that died: {what}"


def in_use(path: Path) -> list[int]:
    """Pids of processes that work in `path`: named in their command line, or their cwd or root there."""
    target = os.fspath(path)
    inside = target + os.sep
    users = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                if target.encode() in fh.read():
                    users.append(int(name))
                    continue
            for link in ("cwd", "root"):
                where = os.readlink(f"/proc/{name}/{link}")
                if where == target or where.startswith(inside):
                    users.append(int(name))
                    break
        except OSError:
            continue
    return users


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` in this mount namespace, deepest first."""
    inside = os.path.realpath(path).rstrip(os.sep) + os.sep
    found = []
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])
                if point.startswith(inside):
                    found.append(point)
    except OSError:
        return []
    return sorted(found, key=len, reverse=True)


def _unmount_under(path: Path) -> bool:
    """Detach what is mounted under `path` (a killed run's); False if something stays mounted, so that
    removing the directory cannot reach into a mounted filesystem (a bind mount of /dev)."""
    for point in mounts_under(path):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.umount2(point.encode(), 2)  # MNT_DETACH
        except (OSError, AttributeError):
            pass
    return not mounts_under(path)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def put_in_place(temp: Path, final: Path, placed: Callable[[], None] | None = None) -> None:
    """Rename the dir `temp` to `final` (a build dir, a render), calling `placed` as soon as it is there. What
    was at `final` (kiln's: the caller checked) is replaced only now, swapped out in one step where the file
    system can (`exchange`), else moved into a temp dir of this process's first; the renames are not cut short
    by a signal, so an interrupt leaves one or the other at `final`, never none. The old one is then removed;
    should this process die first, it lies in a temp dir (temp's name after a swap) that the next run
    collects."""
    from kiln.core import proc

    done = placed or (lambda: None)
    if final.exists() or final.is_symlink():
        with proc.signals_deferred():
            swapped = exchange(temp, final)
            if swapped:
                done()
        if swapped:
            shutil.rmtree(temp, ignore_errors=True)
            return
        with scratch(final.parent, f"{final.name}.old") as grave:
            with proc.signals_deferred():
                os.rename(final, grave / final.name)
                try:
                    os.rename(temp, final)
                except OSError:
                    os.rename(grave / final.name, final)
                    raise
                done()
        return
    with proc.signals_deferred():
        os.rename(temp, final)
        done()


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (renameat2 with RENAME_EXCHANGE): an interrupt finds both or the
    other two, never one missing. False (and nothing done) where the kernel, the C library or the file
    system cannot, or either path is not there (the caller then renames as it can)."""
    import ctypes
    import errno

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # a C library older than glibc 2.28
        return False
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if done == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM, errno.ENOENT):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))
