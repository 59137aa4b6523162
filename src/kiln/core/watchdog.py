"""Every process kiln starts dies with kiln, however kiln dies (kill -9, the OOM killer, a CI runner that
kills only the job's main process).

Process groups and PR_SET_PDEATHSIG reach only kiln's own children: Packer's plugins and QEMU, Ansible and
its SSH multiplexer (which detaches into a session of its own) are grandchildren. So every child kiln starts
carries one environment variable, KILN_RUN=TOKEN, which every descendant inherits. The first child kiln
starts also starts this watchdog: a small stdlib-only process in a session of its own that holds the read
end of a pipe whose write end only kiln holds. When kiln is gone, for any reason, the pipe reads EOF and the
watchdog ends every process that carries the token: SIGTERM, then SIGKILL 3 s later, scanning again until
none is left (a dying parent may start one more). Mounts go with the processes: the chroot runner's mounts
live in private mount namespaces (kiln.build.chroot) that the kernel removes with their last process. What
kiln mounted in its own namespace (a disk's root read through a loop device: kiln.artifacts.formats) lies in
one of its temp dirs (PARENT/.NAME.tmp-PID-XXXX, kiln.core.tempdirs): the watchdog then detaches those too.
The dirs stay, for the next run to collect and name.

A child that must outlive kiln (`kiln boot --detach`'s QEMU) is started without the token.

    env.update(watchdog.marker())        # in proc.run / proc.spawn, for every child

Run as a program: `python -I -S watchdog.py TOKEN FD` (no import of kiln: it starts in milliseconds).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time

VARIABLE = "KILN_RUN"
GRACE = 3.0  # seconds between SIGTERM and SIGKILL
DEADLINE = 10.0  # seconds the watchdog keeps scanning after kiln died

_lock = threading.Lock()
_state: dict[str, object] = {}  # owner pid, token, the write end, the watchdog's Popen


def marker() -> dict[str, str]:
    """The variable every child of this kiln process carries; starts the watchdog on first use (and again
    in a forked child, which is another kiln process with its own children)."""
    with _lock:
        if _state.get("pid") != os.getpid():
            _start()
        return {VARIABLE: str(_state["token"])}


def token() -> str | None:
    """This process's token, if the watchdog runs (tests look for the token's processes)."""
    return str(_state["token"]) if _state.get("pid") == os.getpid() else None


def _start() -> None:
    tok = f"{os.getpid()}-{secrets.token_hex(8)}"
    read_end, write_end = os.pipe()  # both close-on-exec: no child of kiln holds the write end
    try:
        watcher = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), tok, str(read_end)],
            pass_fds=(read_end,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C at the terminal reaches kiln, which cleans up; not the watchdog
            env={},  # it runs no program; nothing of the build environment reaches it
        )
    finally:
        os.close(read_end)
    _state.update(pid=os.getpid(), token=tok, write_end=write_end, watcher=watcher)


def holders(tok: str, exclude: int | None = None) -> list[int]:
    """Pids of the processes that carry `tok` in their environment (those this user may read)."""
    needle = f"{VARIABLE}={tok}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == exclude:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                env = fh.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(int(name))
    return found


def sweep(tok: str, *, grace: float = GRACE, deadline: float = DEADLINE) -> list[int]:
    """End every process that carries `tok`: SIGTERM, SIGKILL after `grace` seconds, until none is left or
    `deadline` passes. Returns the pids it signalled."""
    me = os.getpid()
    first: dict[int, float] = {}
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        pids = holders(tok, exclude=me)
        if not pids:
            break
        now = time.monotonic()
        for pid in pids:
            sig = signal.SIGTERM if pid not in first else signal.SIGKILL
            if pid in first and now - first[pid] < grace:
                continue
            first.setdefault(pid, now)
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        time.sleep(0.1)
    return sorted(first)


def detach_mounts(owner: int) -> list[str]:
    """Detach (`umount -l`) what is mounted under a temp dir of kiln process `owner`, deepest first; returns
    the mount points."""
    marker = re.compile(rf"/\.[^/]*\.tmp-{owner}-[^/]*(/|$)")
    try:
        with open("/proc/self/mountinfo") as fh:
            points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4]) for line in fh]
    except (OSError, IndexError):
        return []
    ours = sorted((p for p in points if marker.search(p)), key=len, reverse=True)
    for point in ours:
        subprocess.run(["umount", "-l", point], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)  # fmt: skip
    return ours


def _main(argv: list[str]) -> int:  # pragma: no cover - runs as its own process (tests/test_watchdog.py)
    tok, fd = argv[1], int(argv[2])
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # only kiln's end decides; a stray signal must not disarm us
    while True:
        try:
            if not os.read(fd, 64):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    sweep(tok)
    owner = tok.split("-", 1)[0]
    if owner.isdigit():
        detach_mounts(int(owner))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv))
