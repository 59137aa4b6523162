"""Controlling a running QEMU from outside: QMP commands, liveness, and stopping it by pid (what
`VM.stop` and `kiln boot --stop`, which has only the state file, both use)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from typing import Any

from kiln.core import proc
from kiln.core.errors import KilnError

log = logging.getLogger(__name__)


class VMError(KilnError):
    """QEMU failed to start, died, or the guest did not come up in time (exit 1)."""


# --- QMP -------------------------------------------------------------------------------------------


def qmp(socket_path: str | os.PathLike[str], command: str, timeout: float = 5.0, **arguments: Any) -> Any:
    """Send one QMP command and return its "return" value; VMError on error or no answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(os.fspath(socket_path))
            stream = s.makefile("rwb")
            _qmp_read(stream)  # greeting
            for execute, args in (("qmp_capabilities", {}), (command, arguments)):
                msg: dict[str, Any] = {"execute": execute}
                if args:
                    msg["arguments"] = args
                stream.write(json.dumps(msg).encode() + b"\n")
                stream.flush()
                reply = _qmp_read(stream)
                if "error" in reply:
                    raise VMError(f"QMP {execute}: {reply['error'].get('desc', reply['error'])}")
            return reply.get("return")
        except (OSError, ValueError) as exc:
            raise VMError(f"QMP {command} via {socket_path}: {exc}") from exc


def _qmp_read(stream: Any) -> dict[str, Any]:
    while True:
        line = stream.readline()
        if not line:
            raise VMError("QMP: connection closed")
        msg = json.loads(line)
        if "event" not in msg:
            return dict(msg)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return False


def stop_process(
    pid: int, qmp_socket: str | None, *, timeout: float = 60.0, popen: Any = None, kill: bool = True
) -> bool:
    """Stop a QEMU by pid: ACPI powerdown (QMP) and wait `timeout`; then QMP quit; then SIGTERM/SIGKILL
    of its process group. True when the guest powered off by itself. Used by VM.stop and `kiln boot --stop`
    (which has only the pid and socket from the state file). kill=False: only ask and wait."""

    def alive() -> bool:
        if popen is not None:
            return bool(popen.poll() is None)
        return pid_alive(pid)

    def wait(seconds: float) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not alive():
                return True
            time.sleep(0.2)
        return not alive()

    if not alive():
        return True
    clean = False
    if qmp_socket and timeout > 0:
        try:
            qmp(qmp_socket, "system_powerdown")
            clean = wait(timeout)
        except VMError as exc:
            log.debug("powerdown failed: %s", exc)
    if not kill:
        return clean or not alive()
    if not clean and alive() and qmp_socket:
        try:
            qmp(qmp_socket, "quit")
            wait(5)
        except VMError:
            pass
    if alive():
        if popen is not None:
            proc.terminate(popen, grace=5)
        else:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(pid, sig)
                except (ProcessLookupError, PermissionError):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        break
                if wait(5):
                    break
    if popen is not None:
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    return clean
