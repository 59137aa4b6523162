"""testinfra's paramiko backend with one long-lived root shell per thread, instead of a channel, a login
shell and a `sudo` for every command.

Each probe question is a command in the guest. testinfra opens an SSH channel for each and wraps it in
`sudo /bin/sh -c`: under TCG, sudo's PAM stack and the shells cost about a second a command, which was most
of a verify's check time. Here each worker thread keeps one channel running `sudo -n /bin/sh -s` and writes
its commands to that shell's stdin, one line each. The shell runs a command as `/bin/sh -c CMD` with stdin
from /dev/null (a command cannot read the next one) and its output in files of a private temp dir, then
writes a frame: a marker line with the exit status and the two lengths, then stdout and stderr. Every
command still runs in a shell of its own, as root, in sudo's environment, as with testinfra's `sudo=True`.
"""

from __future__ import annotations

import secrets
import shlex
import threading
from typing import Any

import paramiko
from testinfra.backend import base
from testinfra.backend.paramiko import ParamikoBackend

COMMAND_TIMEOUT = 600.0  # a command that outlives this fails (goss commands carry their own `timeout`)


class ShellError(RuntimeError):
    """The root shell could not be started, or died."""


class _Shell:
    def __init__(self, transport: paramiko.Transport, timeout: float, command: str) -> None:
        self.marker = f"KILN-{secrets.token_hex(8)}".encode()
        self.command = command
        self.chan = transport.open_session()
        self.chan.settimeout(timeout)
        self.chan.exec_command(command)
        self.buf = b""
        self.chan.sendall(b"T=$(mktemp -d) || exit 97\nprintf '%s READY\\n' " + self.marker + b"\n")
        self._line()

    def _line(self) -> bytes:
        while b"\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\n")
        if not line.startswith(self.marker + b" "):
            raise ShellError(f"root shell: unexpected output {line[:200]!r}")
        return line[len(self.marker) + 1 :]

    def _fill(self) -> None:
        try:
            data = self.chan.recv(65536)
        except TimeoutError as exc:
            raise ShellError(f"root shell: no answer in {self.chan.gettimeout():.0f}s") from exc
        if not data:
            err = b""
            while self.chan.recv_stderr_ready():
                err += self.chan.recv_stderr(65536)
            status = self.chan.recv_exit_status() if self.chan.exit_status_ready() else "?"
            raise ShellError(
                f"`{self.command}` ended (exit {status}): {err.decode(errors='replace').strip()[:300]}"
            )
        self.buf += data

    def run(self, command: str) -> tuple[int, bytes, bytes]:
        line = (
            f'/bin/sh -c {shlex.quote(command)} </dev/null >"$T/o" 2>"$T/e"; r=$?; '
            f"printf '%s %d %d %d\\n' {self.marker.decode()} \"$r\" "
            f'"$(wc -c <"$T/o")" "$(wc -c <"$T/e")"; cat "$T/o" "$T/e"\n'
        )
        self.chan.sendall(line.encode())
        fields = self._line().split()
        if len(fields) != 3:
            raise ShellError(f"root shell: bad frame {fields!r}")
        rc, out_len, err_len = (int(f) for f in fields)
        while len(self.buf) < out_len + err_len:
            self._fill()
        out, err = self.buf[:out_len], self.buf[out_len : out_len + err_len]
        self.buf = self.buf[out_len + err_len :]
        return rc, out, err

    def close(self) -> None:
        try:
            self.chan.sendall(b'rm -rf "$T"; exit 0\n')
        except (OSError, paramiko.SSHException):
            pass
        self.chan.close()


class RootShellBackend(ParamikoBackend):
    """`sudo=True` semantics over one root shell per thread (see the module's text); without sudo, one
    shell of the login user per thread."""

    NAME = "kiln-rootshell"

    def __init__(self, hostspec: str, **kwargs: Any) -> None:
        super().__init__(hostspec, **kwargs)
        self._local = threading.local()
        self._shells: list[_Shell] = []
        self._lock = threading.Lock()

    def _shell(self) -> _Shell:
        shell = getattr(self._local, "shell", None)
        if shell is None:
            transport = self.client.get_transport()
            assert transport is not None
            shell = _Shell(transport, COMMAND_TIMEOUT, "sudo -n /bin/sh -s" if self.sudo else "/bin/sh -s")
            self._local.shell = shell
            with self._lock:
                self._shells.append(shell)
        return shell

    def run(self, command: str, *args: str, **kwargs: Any) -> base.CommandResult:
        text = self.quote(command, *args)  # no sudo wrapper: the shell is root already
        try:
            rc, out, err = self._shell().run(text)
        except (ShellError, OSError, paramiko.SSHException):
            self._local.shell = None  # a broken shell is not used again; the next command opens another
            raise
        return self.result(rc, self.encode(text), out, err)

    def close(self) -> None:
        with self._lock:
            shells, self._shells = self._shells, []
        for shell in shells:
            shell.close()
