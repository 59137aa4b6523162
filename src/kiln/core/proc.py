"""The one helper that runs every external program.

argv lists only (never a shell), the command logged at debug level, an explicit environment, the child
in its own process group so that Ctrl-C / SIGTERM stop it and everything it started (QEMU under Packer),
and on failure a CommandError with the command, the exit code and the tail of the output. Every child and
its descendants carry the watchdog's token, so that they end when kiln ends, even by kill -9
(kiln.core.watchdog).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kiln.core import redact, watchdog
from kiln.core.errors import CommandError, Interrupted, ToolMissingError
from kiln.core.runtime import Runtime

log = logging.getLogger(__name__)

# Which Debian package (or pip extra) provides each external program kiln runs.
PROVIDERS: dict[str, str] = {
    "packer": "Debian package 'packer' (make deps)",
    "qemu-system-x86_64": "Debian package 'qemu-system-x86' (make deps)",
    "qemu-img": "Debian package 'qemu-utils' (make deps)",
    "mmdebstrap": "Debian package 'mmdebstrap' (make deps)",
    "mkfs.ext4": "Debian package 'e2fsprogs' (make deps)",
    "debugfs": "Debian package 'e2fsprogs' (make deps)",
    "mkfs.fat": "Debian package 'dosfstools' (make deps)",
    "sfdisk": "Debian package 'fdisk' (make deps)",
    "xorriso": "Debian package 'xorriso' (make deps)",
    "ansible-playbook": "pip package 'ansible-core' (installed into .venv by make deps)",
    "openssl": "Debian package 'openssl'",
    "unshare": "Debian package 'util-linux'",
    "setpriv": "Debian package 'util-linux'",
    "flock": "Debian package 'util-linux'",
    "chroot": "Debian package 'coreutils'",
    "zstd": "Debian package 'zstd' (make deps)",
    "goss": "the goss release binary (optional; kiln evaluates specs itself without it)",
}


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    output: str


def which(program: str, runtime: Runtime) -> str:
    """Absolute path of `program` on the runtime's PATH, or ToolMissingError naming its package."""
    path = shutil.which(program, path=runtime.path or None)
    if path is None:
        provider = PROVIDERS.get(program, "its package")
        raise ToolMissingError(f"{program}: not found on PATH", hint=f"install {provider}")
    return path


def quote(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def _resolved(argv: Sequence[str | os.PathLike[str]], runtime: Runtime, verb: str) -> list[str]:
    """argv as strings, its program found on the runtime's PATH (ToolMissingError names its package), and
    logged at debug level as `VERB: COMMAND`."""
    args = [os.fspath(a) for a in argv]
    if os.sep not in args[0]:
        args[0] = which(args[0], runtime)
    log.debug("%s: %s", verb, quote(args))
    return args


def _child_env(
    runtime: Runtime,
    env: Mapping[str, str] | None,
    extra_env: Mapping[str, str] | None,
    *,
    dies_with_kiln: bool = True,
) -> dict[str, str]:
    """The child's environment: the runtime's (or `env`), `extra_env`, and the watchdog's token, which
    every descendant inherits, so that the whole tree ends when kiln ends (kiln.core.watchdog)."""
    base = dict(runtime.env if env is None else env)
    if extra_env:
        base.update(extra_env)
    base.pop(watchdog.VARIABLE, None)
    if dies_with_kiln:
        base.update(watchdog.marker())
    return base


# The build host's own temp and library paths: inside an image's tree they name nothing, or the wrong thing
# (a TMPDIR the tree lacks fails every `mktemp` there: mkinitramfs under dpkg's trigger, maintainer scripts).
_HOST_PATHS = ("TMPDIR", "TMP", "TEMP", "TEMPDIR", "PYTHONPATH", "PYTHONSTARTUP", "PERL5LIB", "PERLLIB")
# How the build host loads its own programs: a host library preloaded into every program in the tree (or an
# ld.so error from each, where the tree lacks it), a tree's python3 looking for its standard library under
# the host's prefix. A host program may need them (a Software Collections Python sets LD_LIBRARY_PATH).
# glibc's GCONV_PATH and LOCPATH name the host's converters and locales the same way.
HOST_LOADER = ("LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONHOME", "GCONV_PATH", "LOCPATH")
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def tree_env(runtime: Runtime, *, host_loader: bool = False) -> dict[str, str]:
    """The environment for programs that run inside an image's tree (chroot, mmdebstrap's maintainer
    scripts, Ansible's chroot connection, which passes its own on): the runtime's without _HOST_PATHS and
    HOST_LOADER, and with the system's sbin and bin directories on PATH (dpkg needs ldconfig and
    start-stop-daemon there; a user's or sudo's PATH can lack them). `host_loader` keeps HOST_LOADER, for a
    host program that takes them out itself before it enters the tree (kiln.build.chroot's ansible-playbook,
    whose chroot_exe does)."""
    dropped = _HOST_PATHS if host_loader else (*_HOST_PATHS, *HOST_LOADER)
    env = {k: v for k, v in runtime.env.items() if k not in dropped}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p]
    env["PATH"] = os.pathsep.join([*path, *(d for d in SYSTEM_PATH if d not in path)])
    return env


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    log_file: IO[str] | None = None,
    on_line: Callable[[str], None] | None = None,
    check: bool = True,
    capture: bool = True,
    input_text: str | None = None,
    tail_lines: int = 40,
    timeout: float | None = None,
    watch: Callable[[], bool] | None = None,
    secret_values: Sequence[str] = (),
    attach: bool = False,
    runtime: Runtime,
) -> Result:
    """Run argv to completion.

    With `attach` the child talks to kiln's own terminal (stdin, stdout, stderr inherited: Packer's
    -on-error=ask); `log_file` then only records that it did.

    Output (stdout and stderr merged) is streamed line by line to `log_file` and `on_line`, and the last
    `tail_lines` lines go into the CommandError on failure. With capture=True the whole output is returned.
    `secret_values` are masked wherever output is logged or stored. `watch` is asked five times a second
    while the child runs; when it says True, the child and its group are stopped (the caller tells why).
    """
    rt = runtime
    program = os.fspath(argv[0])
    args = _resolved(argv, rt, "run")
    if rt.dry_run:
        print(f"would run: {quote(args)}")
        return Result(args, 0, "")

    def mask(text: str) -> str:
        for secret in secret_values:
            if secret:
                text = text.replace(secret, "***")
        return redact.line(text)  # and a login in a URL (a proxy's, a mirror's)

    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    captured: list[str] = []
    if attach:
        if log_file is not None:
            log_file.write(f"kiln: {quote(args)} runs attached to the terminal; its output is not logged\n")
            log_file.flush()
        child = subprocess.Popen(args, cwd=cwd, env=_child_env(rt, env, extra_env), start_new_session=True)
        try:
            returncode = child.wait(timeout=timeout)
        except KeyboardInterrupt:
            terminate(child)  # the whole process group: Packer and its QEMU
            raise Interrupted(f"{os.path.basename(program)}: interrupted") from None
        except BaseException:
            terminate(child)
            raise
        if check and returncode != 0:
            raise CommandError(args, returncode, "(output went to the terminal)")
        return Result(args, returncode, "")
    try:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=_child_env(rt, env, extra_env),
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # own process group: we stop it and its children together
        )
    except FileNotFoundError as exc:
        raise ToolMissingError(
            f"{program}: not found", hint=f"install {PROVIDERS.get(program, 'it')}"
        ) from exc

    timer: threading.Timer | None = None
    try:  # from here on, however this ends, the child is ended with it
        if timeout is not None:
            timer = threading.Timer(timeout, lambda: terminate(proc))
            timer.start()
        if watch is not None:
            threading.Thread(target=_watch, args=(proc, watch), daemon=True).start()
        if input_text is not None and proc.stdin is not None:
            proc.stdin.write(input_text)
            proc.stdin.close()
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = mask(raw)
            tail.append(line)
            if capture:
                captured.append(line)
            if log_file is not None:
                log_file.write(line)
                log_file.flush()
            if on_line is not None:
                on_line(line.rstrip("\n"))
        returncode = proc.wait()
    except KeyboardInterrupt:
        terminate(proc)
        raise Interrupted(f"{os.path.basename(program)}: interrupted") from None
    except BaseException:
        terminate(proc)
        raise
    finally:
        if timer is not None:
            timer.cancel()
    output = "".join(captured)
    if check and returncode != 0:
        raise CommandError(args, returncode, "".join(tail))
    return Result(args, returncode, output)


def _watch(proc: subprocess.Popen[Any], stop: Callable[[], bool]) -> None:
    while proc.poll() is None:
        try:
            stopping = stop()
        except Exception:  # noqa: BLE001  (a watch that fails to look is asked again, not given up)
            log.exception("watch of %s", proc.args)
            stopping = False
        if stopping:
            terminate(proc)
            return
        time.sleep(0.2)


class Background:
    """A run-to-completion command that runs while kiln does something else (the compressed qcow2 while
    the verify boot runs): same conventions as `run`, output streamed to `log_file`. Use as a context
    manager: leaving it by an exception (Ctrl-C included) stops the child and its group; `wait()` raises
    CommandError as `run` would. With `yielding`, it yields the CPU to what kiln does meanwhile
    (`yield_cpu`): the verify boot beside the compression runs at its own speed, and it takes the cycles the
    boot leaves."""

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_file: IO[str] | None = None,
        tail_lines: int = 40,
        yielding: bool = False,
        runtime: Runtime,
    ) -> None:
        self.args = [os.fspath(a) for a in argv]
        if os.sep not in self.args[0]:
            self.args[0] = which(self.args[0], runtime)
        self.dry_run = runtime.dry_run
        self.proc: subprocess.Popen[str] | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.pump: threading.Thread | None = None
        log.debug("run (background): %s", quote(self.args))
        if self.dry_run:
            print(f"would run: {quote(self.args)}")
            return
        self.proc = subprocess.Popen(
            self.args, env=_child_env(runtime, None, None), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True,
        )  # fmt: skip

        def pump(out: IO[str]) -> None:
            for line in out:
                self.tail.append(line)
                if log_file is not None:
                    log_file.write(line)
                    log_file.flush()

        assert self.proc.stdout is not None
        try:  # an interrupt before the caller holds this object still ends the child
            if yielding:
                yield_cpu(self.proc.pid)  # may wait a little (EAGAIN): an interrupt there ends the child too
            self.pump = threading.Thread(target=pump, args=(self.proc.stdout,), daemon=True)
            self.pump.start()
        except BaseException:
            terminate(self.proc)
            raise

    def wait(self) -> None:
        if self.proc is None:
            return
        returncode = self.proc.wait()
        if self.pump is not None:
            self.pump.join()
        if returncode != 0:
            raise CommandError(self.args, returncode, "".join(self.tail))

    def check(self) -> None:
        """Raise CommandError now if the command has already failed; else return (it may still be running)."""
        if self.proc is not None and self.proc.poll() not in (None, 0):
            self.wait()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        running = self.proc is not None and self.proc.poll() is None
        if self.proc is not None and exc is not None:
            terminate(self.proc)
        if self.pump is not None:
            self.pump.join(timeout=15)  # the pipe closed with the child: nothing writes the log after us
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if isinstance(exc, KeyboardInterrupt):  # anywhere in the block: name the command only if it ran still
            stopped = f" ({os.path.basename(self.args[0])} stopped)" if running else ""
            raise Interrupted(f"interrupted{stopped}") from None


YIELDING_NICE = 19  # a Background child's nice value, and its session's


def yield_cpu(pid: int) -> None:
    """Give process `pid` (the leader of a session of its own) the least CPU share when the CPU is
    contended: nice 19 for its threads, and for its session's autogroup. Where the kernel has autogroups on
    (/proc/sys/kernel/sched_autogroup_enabled; they apply to processes outside a cgroup of the cpu
    controller), each session gets an equal share whatever its processes' nice values, so that a compression
    in a session of its own took as much CPU as the verify boot's QEMU in another (when the OVA's VMDK was
    compressed too, two compressions beside it took a third of the machine each). A process that already
    ended, or a kernel without autogroups, is no error. Without CAP_SYS_ADMIN the kernel takes one
    autogroup write in 100 ms (EAGAIN): tried again."""
    # the main thread first: a thread it starts from then on inherits the nice value; then those it had
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, YIELDING_NICE)
    try:
        tasks = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        tasks = []
    for task in tasks:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, task, YIELDING_NICE)
    for _ in range(5):
        try:
            Path(f"/proc/{pid}/autogroup").write_text(f"{YIELDING_NICE}\n")
        except BlockingIOError:  # EAGAIN: another write in the last 100 ms
            time.sleep(0.11)
            continue
        except OSError as exc:  # no autogroups, a process gone, a security module's no
            log.debug("%s: autogroup left as it was: %s", pid, exc)
        break
    else:
        log.debug("%s: autogroup left as it was: EAGAIN five times", pid)


def terminate(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """Stop a child and its whole process group: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def capture(
    argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None, runtime: Runtime
) -> tuple[int, bytes, bytes]:
    """Run argv to completion and return its exit status, stdout and stderr apart (a check reads each),
    as bytes. As `run`: stdin from /dev/null, its own process group (stopped with its children when kiln
    is interrupted), the watchdog's token; not logged (a check's answer, not the build's output)."""
    args = _resolved(argv, runtime, "run")
    if runtime.dry_run:
        print(f"would run: {quote(args)}")
        return 0, b"", b""
    child = subprocess.Popen(
        args, env=_child_env(runtime, env, None), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = child.communicate()
    except BaseException:
        terminate(child)
        raise
    return child.returncode, out, err


def output(argv: Sequence[str | os.PathLike[str]], *, runtime: Runtime, **kwargs: object) -> str:
    """Run argv and return its output (stdout+stderr) as text."""
    return run(argv, runtime=runtime, **kwargs).output  # type: ignore[arg-type]


def install_sigterm_handler() -> None:
    """Turn SIGTERM and SIGHUP (the terminal or SSH session closed) into KeyboardInterrupt, so that every
    cleanup path (children, mounts, temp dirs) runs. A SIGHUP that kiln was started ignoring (nohup) stays
    ignored. Only the first one counts: a closed terminal or a stop sent to the whole process group reaches
    kiln twice (directly and through make or a wrapper), and a second raise would cut the cleanup short."""

    def handler(signum: int, frame: object) -> None:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP wait until the block ends: for a few renames that must not be cut in two
    (publishing a build). One that came meanwhile is then acted on as it would have been (kiln's handler, or
    the default). Python runs signal handlers in the main thread only, so this works from there only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def note(signum: int, frame: object) -> None:
        caught.append(signum)

    before: dict[int, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            handler = signal.getsignal(sig)
            if handler in (None, signal.SIG_IGN):  # one C code installed cannot be put back; ignored stays so
                continue
            signal.signal(sig, note)  # runs a signal already pending first: its handler may raise, here
            before[int(sig)] = handler
    except BaseException:
        _put_back(before)
        raise
    try:
        yield
    finally:
        _put_back(before)
        if caught:
            handler = before[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), caught[0])


def _put_back(handlers: Mapping[int, Any]) -> None:
    """signal.signal for each, all of them even when one raises: CPython runs a pending signal's handler
    before it switches, and one put back already may raise (KeyboardInterrupt); that is raised at the end."""
    raised: BaseException | None = None
    for sig, handler in handlers.items():
        for _ in range(4):  # each try runs the handlers pending then; a handler that cannot be set: given up
            try:
                signal.signal(sig, handler)
                break
            except BaseException as exc:  # noqa: BLE001  (raised below, once every handler is back)
                raised = raised or exc
    if raised is not None:
        raise raised


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def parent_death_signal(signum: int) -> Callable[[], None]:
    """A function that asks Linux to send the calling process `signum` when the thread that started it ends
    (PR_SET_PDEATHSIG). libc is looked up now, so that the function is safe to run between fork and exec
    (a `preexec_fn`) while other threads run."""
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None

    def arm() -> None:
        prctl(1, signum)  # PR_SET_PDEATHSIG = 1

    return arm


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    die_with_parent: bool = True,
    runtime: Runtime,
) -> subprocess.Popen[bytes]:
    """Start a long-running child (QEMU) and return at once; `proc.run` is for run-to-completion.

    Same conventions as `run`: argv list, the program resolved on PATH (ToolMissingError names its
    package), the command logged at debug level, its own process group (stop it with `terminate`),
    stdin from /dev/null, stdout+stderr appended to `log_path`. With `die_with_parent` the kernel kills
    the child if this process dies without cleaning up (note: "parent" is the spawning thread), and the
    child carries the watchdog's token (kiln.core.watchdog); without it, the child outlives kiln.
    There is no --dry-run handling here: a long-running child has no placeholder, so callers check
    `runtime.dry_run` themselves.
    """
    rt = runtime
    program = os.fspath(argv[0])
    args = _resolved(argv, rt, "spawn")
    with open(log_path, "ab") as out:
        try:
            return subprocess.Popen(
                args,
                cwd=cwd,
                env=_child_env(rt, env, extra_env, dies_with_kiln=die_with_parent),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=parent_death_signal(signal.SIGKILL) if die_with_parent else None,
            )
        except FileNotFoundError as exc:
            raise ToolMissingError(
                f"{program}: not found", hint=f"install {PROVIDERS.get(program, 'it')}"
            ) from exc
