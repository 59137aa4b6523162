"""When kiln dies, its work dies with it (kiln.core.watchdog, kiln.core.tempdirs, kiln.core.space).

Real processes, real signals, real flocks and mounts: a small Python program stands in for kiln, runs a
child through proc.run that starts a grandchild in a session of its own (as ssh's ControlPersist master
does under Ansible), and is killed with SIGKILL. The VM tests (test_deaths_vm.py) do the same to real
builds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kiln.build import stages
from kiln.core import space, tempdirs, watchdog
from kiln.core.errors import CommandError, DiskFullError

REPO = Path(__file__).resolve().parents[1]

KILN_LIKE = """
import os, sys, pathlib
from kiln.core import proc, tempdirs
from kiln.core.runtime import Runtime
rt = Runtime(root=pathlib.Path({repo!r}), env=dict(os.environ))
held = tempdirs.create(pathlib.Path({parent!r}), "build") if {parent!r} else None
print(os.getpid(), held.path if held else "", flush=True)
proc.{how}
"""


def _start(tmp_path: Path, how: str, parent: str = "") -> tuple[subprocess.Popen[str], int, str]:
    script = tmp_path / "kiln_like.py"
    script.write_text(KILN_LIKE.format(repo=str(REPO), parent=parent, how=how))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    pid, _, held = child.stdout.readline().strip().partition(" ")
    return child, int(pid), held


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def _tokened(pid: int) -> list[int]:
    """Processes that carry the watchdog token of kiln process `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(v.startswith(f"{watchdog.VARIABLE}={pid}-".encode()) for v in env):
                found.append(int(entry.name))
    return found


def _wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_kill_9_ends_children_and_grandchildren_in_their_own_sessions(tmp_path: Path) -> None:
    child, pid, _ = _start(tmp_path, 'run(["sh", "-c", "setsid sleep 301 & exec sleep 302"], runtime=rt)')
    assert _wait_for(lambda: len(_tokened(pid)) >= 2, 10), "the children never started"
    kids = _tokened(pid)
    child.kill()
    child.wait()
    assert _wait_for(lambda: not any(_alive(p) for p in kids), 15), [p for p in kids if _alive(p)]
    assert not _tokened(pid)


def test_the_watchdog_leaves_with_kiln_and_spares_a_detached_child(tmp_path: Path) -> None:
    log = tmp_path / "detached.log"
    child, pid, _ = _start(
        tmp_path,
        f'spawn(["sleep", "303"], log_path={str(log)!r}, die_with_parent=False, runtime=rt); '
        'proc.run(["sleep", "304"], runtime=rt)',
    )
    assert _wait_for(lambda: bool(_tokened(pid)), 10)
    detached = [
        int(p.name) for p in Path("/proc").iterdir()
        if p.name.isdigit() and _cmdline(p).endswith(b"sleep\x00303\x00")
    ]  # fmt: skip
    assert detached, "the detached child did not start"
    # its token (PID-hex) as an argument: another kiln's watchdog (the suite's image building beside) differs
    watchers = [p for p in _all() if "watchdog.py" in _cmdline_of(p) and f" {pid}-" in _cmdline_of(p)]
    assert len(watchers) == 1
    child.kill()
    child.wait()
    assert _wait_for(lambda: not _tokened(pid), 15)
    assert _wait_for(lambda: not _alive(watchers[0]), 15), "the watchdog stays after its sweep"
    assert all(_alive(p) for p in detached), "`kiln boot --detach` QEMU must outlive kiln"
    for p in detached:
        os.kill(p, signal.SIGKILL)


def _all() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(entry: Path) -> bytes:
    try:
        return (entry / "cmdline").read_bytes()
    except OSError:
        return b""


def _cmdline_of(pid: int) -> str:
    return _cmdline(Path(f"/proc/{pid}")).replace(b"\0", b" ").decode(errors="replace")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_kill_9_detaches_what_kiln_mounted_in_its_own_temp_dir(tmp_path: Path) -> None:
    """A disk's root that kiln mounts itself (kiln.artifacts.formats.root_tree: a loop mount in kiln's own
    namespace, under its temp dir) is detached by the watchdog once kiln is killed; a mount elsewhere, or
    under another process's temp dir, is not. The dir stays for the next run to collect."""
    other = tmp_path / "out" / ".build.tmp-1-other" / "root"  # pid 1's: not this kiln's
    other.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "none", str(other)], check=True)
    child, pid, held = _start(tmp_path, 'run(["sleep", "305"], runtime=rt)', parent=str(tmp_path / "out"))
    root = Path(held) / "root"
    try:
        root.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "none", str(root)], check=True)
        assert _wait_for(lambda: bool(_tokened(pid)), 10)
        assert tempdirs.mounts_under(Path(held))
        child.kill()
        child.wait()
        assert _wait_for(lambda: not tempdirs.mounts_under(Path(held)), 15), tempdirs.mounts_under(Path(held))
        assert Path(held).is_dir(), "the dir stays, for the next run to collect"
        assert tempdirs.mounts_under(other.parent), "another run's mount is not touched"
    finally:
        for where in (root, other):
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_nested_kiln_gets_its_own_token() -> None:
    from kiln.core import proc
    from kiln.core.runtime import Runtime

    outer = "1-outer"
    rt = Runtime(root=REPO, env={**os.environ, watchdog.VARIABLE: outer})
    out = proc.output(["sh", "-c", f"echo ${watchdog.VARIABLE}"], runtime=rt).strip()
    assert out == watchdog.token() and out != outer and out.startswith(f"{os.getpid()}-")


# --- stale temp dirs ---------------------------------------------------------------------------------------


def test_a_dead_builds_temp_dir_is_collected_and_a_live_ones_is_not(tmp_path: Path) -> None:
    out = tmp_path / "out"
    live = tempdirs.create(out, "debian-12+kube-v1.36.1")
    child, pid, held = _start(tmp_path, 'run(["sleep", "305"], runtime=rt)', parent=str(out))
    (Path(held) / "disk.raw").write_bytes(b"x" * 4096)
    assert tempdirs.collect(out) == [], "both owners live"
    # killed mid-build, not while it forks: a child between fork and exec still holds the lock briefly
    assert _wait_for(lambda: bool(_tokened(pid)), 10)
    child.kill()
    child.wait()
    assert _wait_for(lambda: not _tokened(pid), 15)
    removed = tempdirs.collect(out)
    assert removed == [tempdirs.Stale(Path(held), pid)]
    assert not Path(held).exists() and live.path.is_dir()
    assert f"(pid {pid})" in tempdirs.describe(removed)
    live.release()


def test_collect_leaves_what_is_not_ours_kept_or_in_use(tmp_path: Path) -> None:
    foreign = tmp_path / ".notes.tmp-abc"  # a user's, not named as kiln names its temp dirs
    foreign.mkdir()
    kept = tempdirs.create(tmp_path, "kept")
    (kept.path / tempdirs.KEPT).write_text("kept by -on-error=abort\n")
    kept.release()
    busy = tempdirs.create(tmp_path, "busy")
    busy.release()
    # a dying child still working there
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(306)", str(busy.path)])
    assert _wait_for(lambda: str(busy.path) in _cmdline_of(sleeper.pid), 10)
    try:
        assert tempdirs.collect(tmp_path) == []
        assert foreign.is_dir() and kept.path.is_dir() and busy.path.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert [s.path for s in tempdirs.collect(tmp_path)] == [busy.path]
    assert tempdirs.collect(tmp_path, dry_run=True) == []


def test_a_dry_run_collect_removes_nothing(tmp_path: Path) -> None:
    dead = tempdirs.create(tmp_path, "x")
    dead.release()
    assert [s.path for s in tempdirs.collect(tmp_path, dry_run=True)] == [dead.path]
    assert dead.path.is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_a_mount_left_in_a_dead_dir_is_detached_not_descended(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep-me").write_text("host data\n")
    dead = tempdirs.create(tmp_path / "out", "build")
    (dead.path / "tree" / "dev").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(precious), str(dead.path / "tree" / "dev")], check=True)
    dead.release()
    try:
        assert [s.path for s in tempdirs.collect(tmp_path / "out")] == [dead.path]
    finally:
        subprocess.run(["umount", "-l", str(dead.path / "tree" / "dev")], capture_output=True)
    assert (precious / "keep-me").read_text() == "host data\n"
    assert not tempdirs.mounts_under(tmp_path / "out")


def test_cache_prune_leaves_a_live_builds_temp_entry_alone(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    child, pid, held = _start(tmp_path, 'run(["sleep", "307"], runtime=rt)', parent=str(stages.root(cache)))
    assert _wait_for(lambda: bool(_tokened(pid)), 10)
    argv = [sys.executable, "-m", "kiln", "cache", "prune", "--older-than", "0",
            "--var", f"cache_dir={cache}"]  # fmt: skip
    env = {**os.environ, "PACKER_VAR_FILES": ""}
    try:
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert Path(held).is_dir(), "prune removed the temp entry of a live build"
    finally:
        child.kill()
        child.wait()
    assert _wait_for(lambda: not _tokened(pid), 15)
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not Path(held).exists(), "the dead build's temp entry stays"


# --- a full disk -------------------------------------------------------------------------------------------


def test_full_disk_is_recognised_in_writes_and_in_tools_output() -> None:
    assert space.is_full(OSError(28, "No space left on device"))
    written = "qemu-img: error while writing sector 4096: No space left on device"
    assert space.is_full(CommandError(["qemu-img"], 1, written))
    assert space.is_full(CommandError(["tar"], 2, "tar: ./usr/lib/x: Cannot write: Disk quota exceeded"))
    wrapped = RuntimeError("stage failed")
    wrapped.__cause__ = OSError(28, "No space left on device")
    assert space.is_full(wrapped)
    assert not space.is_full(CommandError(["qemu-img"], 1, "Could not open 'x': No such file or directory"))
    assert not space.is_full(OSError(13, "Permission denied"))


def test_check_names_the_path_the_free_and_the_needed_space(tmp_path: Path) -> None:
    huge = space.free(tmp_path) + (1 << 40)
    with pytest.raises(DiskFullError) as err:
        space.check(tmp_path / "not-yet" / "out", huge, "finalize")
    text = str(err.value)
    assert str(tmp_path / "not-yet" / "out") in text and "finalize needs about" in text and "free" in text
    assert err.value.exit_code == 1
    space.check(tmp_path, 1, "finalize")
    full = space.full([tmp_path], "finalize", 3 << 30)
    assert str(tmp_path) in str(full) and "3.0 GiB" in str(full)


def test_the_watchdog_is_stdlib_only() -> None:
    """It runs as `python -I -S watchdog.py`: no kiln, no third-party import."""
    text = Path(watchdog.__file__).read_text()
    imports = [line for line in text.splitlines() if line.startswith(("import ", "from "))]
    assert all(line.split()[1] in {"__future__", "os", "re", "secrets", "signal", "subprocess", "sys",
                                   "threading", "time"} for line in imports), imports  # fmt: skip
    script = textwrap.dedent(f"""
        import subprocess, sys
        argv = [sys.executable, "-I", "-S", {watchdog.__file__!r}, "t-1", "0"]
        r = subprocess.run(argv, stdin=subprocess.DEVNULL)
        sys.exit(r.returncode)
    """)
    assert subprocess.run([sys.executable, "-c", script], timeout=30).returncode == 0


def test_a_scratch_dir_goes_however_its_block_ends_and_a_dead_ones_is_collected(tmp_path: Path) -> None:
    from kiln.core import tempdirs

    with tempdirs.scratch(tmp_path, "kiln-x") as kept:
        (kept / "f").write_text("x")
        assert tempdirs.owner_pid(kept) == os.getpid() and not tempdirs.collect(tmp_path)  # held: not stale
    assert not kept.exists()
    with pytest.raises(RuntimeError), tempdirs.scratch(tmp_path, "kiln-x") as failed:
        raise RuntimeError("the block failed")
    assert not failed.exists() and list(tmp_path.iterdir()) == []


def test_a_removal_cut_short_leaves_a_temp_dir_to_collect_not_half_an_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tempdirs.remove (kiln cache prune, cache check, evict): an entry is moved aside before it is deleted,
    so an interrupt in the middle of a large rmtree leaves no half entry (its record gone, its disk still
    there, unlisted by `kiln cache ls` for good), but a temp dir of kiln's that the next run collects."""
    entry = tmp_path / "0123abcd"
    (entry / "tree").mkdir(parents=True)
    (entry / "record.json").write_text("{}")
    (entry / "tree" / "big").write_bytes(b"x" * 4096)

    def cut_short(path: object, ignore_errors: bool = False) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tempdirs.shutil, "rmtree", cut_short)
    with pytest.raises(KeyboardInterrupt):
        tempdirs.remove(entry)
    monkeypatch.undo()
    (aside,) = tmp_path.iterdir()
    assert (
        not entry.exists() and aside.name.startswith(".0123abcd-removed.tmp-") and (aside / "entry").is_dir()
    )
    assert [s.path for s in tempdirs.collect(tmp_path)] == [aside] and list(tmp_path.iterdir()) == []
    tempdirs.remove(tmp_path / "missing")  # nothing there: nothing to do
    assert list(tmp_path.iterdir()) == []


def test_signals_deferred_holds_a_signal_until_the_block_ends_and_puts_every_handler_back() -> None:
    from kiln.core import proc

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a suite run with `&` has it ignored
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # ignored (nohup): stays so
        proc.install_sigterm_handler()
        kilns = signal.getsignal(signal.SIGTERM)
        done: list[str] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with pytest.raises(KeyboardInterrupt):
                with proc.signals_deferred():
                    os.kill(os.getpid(), sig)
                    time.sleep(0.1)  # a handler would have run by now
                    done.append(sig.name)
            signal.signal(signal.SIGTERM, kilns)  # kiln's handler ignores the ones after the first
        assert done == ["SIGINT", "SIGTERM"], "each block ran to its end"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is kilns
        with proc.signals_deferred():  # nothing came: nothing raised
            done.append("quiet")
        assert done[-1] == "quiet"
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_an_interrupt_in_a_background_block_names_the_command_only_while_it_ran() -> None:
    """Ctrl-C anywhere in a `proc.Background` block (the verify boot beside the qcow2's compression) ends the
    child and says "interrupted"; it names the command only if the command was still running."""
    from kiln.core import proc
    from kiln.core.errors import Interrupted
    from kiln_runtime import RUNTIME

    with pytest.raises(Interrupted) as err, proc.Background(["sleep", "30"], runtime=RUNTIME) as running:
        raise KeyboardInterrupt
    assert str(err.value) == "interrupted (sleep stopped)" and running.proc is not None
    assert running.proc.poll() is not None, "the child is ended"
    with pytest.raises(Interrupted) as err, proc.Background(["true"], runtime=RUNTIME) as done:
        assert done.proc is not None
        done.proc.wait()
        raise KeyboardInterrupt
    assert str(err.value) == "interrupted"


def test_a_background_command_yields_the_cpu_to_the_foreground() -> None:
    """A yielding `proc.Background` child (the qcow2's compression beside the verify boot) runs at nice
    19, every thread of it, and so does its session's autogroup where the kernel has them: otherwise each
    compression, in a session of its own, took a full share of the CPU from the boot, whatever its nice."""
    from kiln.core import proc
    from kiln_runtime import RUNTIME

    mine = os.getpriority(os.PRIO_PROCESS, 0)
    if mine == proc.YIELDING_NICE:
        pytest.skip(f"the tests run at nice {mine} already: a child would have it anyway")
    # the child starts a second thread after Background returned: it inherits the main thread's nice
    two_threads = (
        "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
    )
    with proc.Background([sys.executable, "-c", two_threads], yielding=True, runtime=RUNTIME) as running:
        assert running.proc is not None
        pid = running.proc.pid
        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{pid}/task")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(os.listdir(f"/proc/{pid}/task")) >= 2, "the child's second thread"
        for task in os.listdir(f"/proc/{pid}/task"):
            assert os.getpriority(os.PRIO_PROCESS, int(task)) == proc.YIELDING_NICE
        assert os.getsid(pid) == pid, "a session of its own, so an autogroup of its own"
        group = Path(f"/proc/{pid}/autogroup")
        if group.exists() and os.geteuid() == 0:  # root: no EAGAIN rate limit on the write
            assert group.read_text().split()[-1] == str(proc.YIELDING_NICE), group.read_text()
        running.proc.kill()
    assert os.getpriority(os.PRIO_PROCESS, 0) == mine, "kiln itself is not lowered"
    with proc.Background(["sleep", "30"], runtime=RUNTIME) as plain:  # not asked to: nothing to give way to
        assert plain.proc is not None
        assert os.getpriority(os.PRIO_PROCESS, plain.proc.pid) == mine
        plain.proc.kill()
