"""testinfra's paramiko backend with one long-lived root shell per thread, instead of a channel, a login
shell and a `sudo` for every command.

Each probe question is a command in the guest. testinfra opens an SSH channel for each and wraps it in
`sudo /bin/sh -c`: under TCG, sudo's PAM stack and the shells cost about a second a command, which was most
of a verify's check time. Here each checking thread keeps one channel running `sudo -n /bin/sh -s` and
writes its commands to that shell's stdin, one line each. The shell runs a command as `/bin/sh -c CMD` with
stdin from /dev/null (a command cannot read the next one) and its output in files of a private temp dir,
then writes a frame: a marker line (a random token) with the exit status and the two lengths, then exactly
that many bytes of stdout and of stderr. Every command still runs in a shell of its own, as root, in sudo's
environment, as with testinfra's `sudo=True`.

A shell that dies or answers out of frame raises ShellError (a ProbeError: the resource fails and names
it) and is closed; the thread's next command opens another. A shell silent past its timeout, or a broken
connection, fails that command and every later one at once.
"""

from __future__ import annotations

import functools
import secrets
import shlex
import threading
from typing import Any

import paramiko
from testinfra.backend import base
from testinfra.backend.paramiko import ParamikoBackend

from kiln.goss.specs import ProbeError
from kiln.vm import ssh

# A command that outlives this fails. goss commands carry their own `timeout` (kiln runs them under
# `timeout`); this only ends a shell that stopped answering. A shell must start within START_TIMEOUT.
COMMAND_TIMEOUT = 3600.0
START_TIMEOUT = 60.0
CLOSE_WAIT = 10.0  # how long `close` waits for a shell that answers to exit (a broken one is not waited for)
NOISE_LIMIT = 64 * 1024  # what a login script may print before the marker


# The shell's private temp dir, named so that an operator can tell it, removed when the shell exits: by
# `close`, at the end of its input (the connection dropped) or by a hangup or TERM (sudo passes them on).
TEMP_PREFIX = "kiln-probe."
_START = (
    b'T=$(mktemp -d "${TMPDIR:-/tmp}/' + TEMP_PREFIX.encode() + b'XXXXXXXXXX") || exit 97\n'
    # (a signal while the shell waits for its next line runs its trap at the end of input, where `exit` in
    # a trap skips the EXIT trap: each trap removes the dir itself)
    b"trap 'rm -rf \"$T\"' EXIT; trap 'rm -rf \"$T\"; exit 129' HUP; trap 'rm -rf \"$T\"; exit 143' TERM\n"
)


class ShellError(ProbeError):
    """The root shell could not be started, died, or answered out of frame."""


class _Shell:
    def __init__(self, transport: paramiko.Transport, timeout: float, command: str) -> None:
        self.marker = f"KILN-{secrets.token_hex(8)}".encode()
        self.command = command
        self.buf = bytearray()
        self.chan = transport.open_session(timeout=START_TIMEOUT)
        try:
            self.chan.settimeout(START_TIMEOUT)
            self.chan.exec_command(command)
            # the marker on a line of its own even after noise without a newline; the temp dir goes with
            # the shell however it exits (close, or the end of its input when the connection drops)
            self.chan.sendall(_START + b"printf '\\n%s READY\\n' " + self.marker + b"\n")
            while self._line(skip_noise=True) != b"READY":
                pass
            self.chan.settimeout(timeout)
        except BaseException:
            self.chan.close()
            raise

    def _line(self, skip_noise: bool = False) -> bytes:
        while True:
            while b"\n" not in self.buf:
                if skip_noise and len(self.buf) > NOISE_LIMIT:
                    raise ShellError(f"`{self.command}`: {len(self.buf)} bytes of output before its marker")
                self._fill()
            at = self.buf.index(b"\n")
            line = bytes(self.buf[:at])
            del self.buf[: at + 1]
            if line.startswith(self.marker + b" "):
                return line[len(self.marker) + 1 :]
            if not skip_noise:
                raise ShellError(f"`{self.command}`: output out of frame: {line[:200]!r}")

    def _fill(self) -> None:
        try:
            data = self.chan.recv(65536)
        except TimeoutError as exc:
            raise ShellError(f"`{self.command}`: no answer in {self.chan.gettimeout():.0f}s") from exc
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
        # output files gone (the command removed the temp dir) end the shell loudly rather than framing
        # empty output; `head -c` sends exactly the counted bytes even if something still appends to them
        line = (
            f'/bin/sh -c {shlex.quote(command)} </dev/null >"$T/o" 2>"$T/e"; r=$?; '
            '[ -f "$T/o" ] && [ -f "$T/e" ] || { echo "kiln: $T vanished under the command" >&2; exit 98; }; '
            'n=$(wc -c <"$T/o"); m=$(wc -c <"$T/e"); '
            f'printf \'%s %d %d %d\\n\' {self.marker.decode()} "$r" "$n" "$m"; '
            'head -c "$n" "$T/o"; head -c "$m" "$T/e"\n'
        )
        self.chan.sendall(line.encode())
        fields = self._line().split()
        if len(fields) != 3 or not all(f.isdigit() for f in fields):
            raise ShellError(f"`{self.command}`: a bad frame {fields!r}")
        rc, out_len, err_len = (int(f) for f in fields)
        while len(self.buf) < out_len + err_len:
            self._fill()
        out, err = bytes(self.buf[:out_len]), bytes(self.buf[out_len : out_len + err_len])
        del self.buf[: out_len + err_len]
        return rc, out, err

    def close(self, wait: float = 0.0) -> None:
        """Ask the shell to exit (its EXIT trap removes the temp dir); wait up to `wait` seconds for it to
        have exited, so that nothing of it is left when the caller goes on."""
        try:
            self.chan.sendall(b"exit 0\n")
            self.chan.shutdown_write()
            if wait:
                self.chan.status_event.wait(wait)
        except (OSError, paramiko.SSHException):
            pass
        self.chan.close()


class RootShellBackend(ParamikoBackend):
    """`sudo=True` semantics over one root shell per thread (see the module's text); without sudo, one
    shell of the login user per thread."""

    NAME = "kiln-rootshell"

    def __init__(self, hostspec: str, **kwargs: Any) -> None:
        super().__init__(hostspec, **kwargs)
        if self.sudo_user is not None:
            raise ValueError("RootShellBackend: sudo_user is not supported (the shells are root's)")
        # a shell that stopped answering, or a connection that broke: every later command fails at once
        # (a wedged guest keeps its TCP connection up; each resource would wait out the timeout again)
        self._dead: str | None = None
        self._local = threading.local()
        self._shells: list[_Shell] = []
        self._lock = threading.Lock()

    @functools.cached_property
    def client(self) -> paramiko.SSHClient:
        """kiln.vm.ssh's connection, not testinfra's: testinfra's reads ~/.ssh/config over the host spec,
        so an operator's `Host *` with User, Port, IdentityFile or ProxyCommand replaced the verify login,
        and it warns about every throwaway VM's new host key."""
        if not self.ssh_identity_file or not self.host.user:
            raise ValueError("RootShellBackend: the host spec's user and ssh_identity_file are the login")
        key = ssh.load_private_key(self.ssh_identity_file)
        return ssh.open_client(self.host.name, int(self.host.port or 22), self.host.user, key, self.timeout)

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
        if self._dead is not None:
            raise ShellError(self._dead)
        try:
            shell = self._shell()
        except (OSError, EOFError, paramiko.SSHException) as exc:  # the connection is gone
            self._dead = f"{self.host.name}:{self.host.port}: no shell: {exc}"
            raise ShellError(self._dead) from exc
        except ShellError as exc:
            if "no answer" in str(exc):
                self._dead = str(exc)
            raise
        try:
            rc, out, err = shell.run(text)
        except (ShellError, OSError, EOFError, paramiko.SSHException) as exc:
            # a broken shell is closed and not used again; the thread's next command opens another, unless
            # the shell stopped answering or the connection broke
            self._local.shell = None
            with self._lock:
                if shell in self._shells:
                    self._shells.remove(shell)
            shell.close()
            error = exc if isinstance(exc, ShellError) else ShellError(f"`{shell.command}`: {exc}")
            if not isinstance(exc, ShellError) or "no answer" in str(exc):
                self._dead = str(error)
            raise error from exc
        return self.result(rc, self.encode(text), out, err)

    def close(self) -> None:
        """Every shell, then the SSH connection."""
        with self._lock:
            shells, self._shells = self._shells, []
        for shell in shells:  # a wedged guest or a broken connection: no shell will answer, no wait
            shell.close(wait=CLOSE_WAIT if self._dead is None else 0.0)
        if "client" in self.__dict__:  # functools.cached_property: connected
            self.client.close()
