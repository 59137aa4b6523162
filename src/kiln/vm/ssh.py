"""SSH into booted images with paramiko, and one-time key pairs for a boot.

Host keys: every boot of a kiln image is a throwaway VM on a fresh overlay, reached through a QEMU
port forward on 127.0.0.1, and cloud-init generates new host keys on each first boot. There is nothing
to pin, so `Session` accepts the host key it is offered (paramiko's AutoAddPolicy on an empty,
in-memory key store), never reads ~/.ssh/known_hosts and never writes one. Do not point it at hosts
that are not throwaway VMs on loopback.

Authentication is by key only (no agent, no ~/.ssh keys, no passwords): the key given is the key used.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from kiln.core import tempdirs
from kiln.core.errors import CommandError, InputError, KilnError

log = logging.getLogger(__name__)
# paramiko logs every refused or reset connection attempt with a traceback at ERROR; retrying through
# those is normal while a guest boots, and failures surface as SSHError, so keep its logger quiet.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


class SSHError(KilnError):
    """Could not reach or log into the guest over SSH in time (exit 1)."""


@dataclass(frozen=True)
class KeyPair:
    """A one-time key pair. `directory` is private (0700) and owned by whoever made it."""

    private_key: Path
    public_key: Path
    public_line: str  # "ssh-ed25519 AAAA... comment", what goes into ssh_authorized_keys
    directory: Path


def generate_keypair(directory: str | os.PathLike[str] | None = None, comment: str = "kiln") -> KeyPair:
    """Generate an ed25519 key pair for one boot.

    With no `directory` a new private temp dir (0700) is made; the caller removes it (e.g. with
    shutil.rmtree(pair.directory)). The private key file is 0600 in OpenSSH format, so both paramiko and
    the `ssh` command line accept it. Nothing is written anywhere else.
    """
    # a dir of our own is locked for this process's life: if kiln is killed, the next run removes the key
    if directory is not None:
        root = Path(directory)
    else:
        root = tempdirs.create(Path(tempfile.gettempdir()), "kiln-key").path
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_line = f"{public.decode()} {comment}"
    private_path = root / "id_ed25519"
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    os.chmod(private_path, 0o600)
    public_path = root / "id_ed25519.pub"
    public_path.write_text(public_line + "\n")
    return KeyPair(private_path, public_path, public_line, root)


def load_private_key(path: str | os.PathLike[str]) -> paramiko.PKey:
    """Load an unencrypted private key of any type paramiko knows; InputError names the file."""
    key_path = Path(path)
    if not key_path.is_file():
        raise InputError(f"{key_path}: SSH private key not found")
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s: private key is readable by others (mode %o)", key_path, mode)
    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key_file(str(key_path))
        except paramiko.PasswordRequiredException as exc:
            raise InputError(
                f"{key_path}: SSH private key is encrypted; kiln needs an unencrypted key"
            ) from exc
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(f"{cls.__name__}: {exc}")
    raise InputError(f"{key_path}: not a private key paramiko can read ({'; '.join(errors)})")


def open_client(host: str, port: int, user: str, key: paramiko.PKey, timeout: float) -> paramiko.SSHClient:
    """One SSH connection by this module's rules: the host key offered is accepted and not kept, the key
    given is the only key tried (no agent, no ~/.ssh keys), and no ~/.ssh/config applies (an operator's
    `Host *` with User, Port, IdentityFile or ProxyCommand would send a throwaway VM's login elsewhere)."""
    client = paramiko.SSHClient()
    # Throwaway VM on loopback, fresh host keys per boot: accept, remember nothing (module doc).
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            host,
            port=port,
            username=user,
            pkey=key,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            allow_agent=False,
            look_for_keys=False,
        )
    except BaseException:
        client.close()
        raise
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(15)
    return client


def _command_text(cmd: str | Sequence[str]) -> str:
    return cmd if isinstance(cmd, str) else shlex.join(str(c) for c in cmd)


class Session:
    """An SSH session into a throwaway VM.

    Connecting retries (refused, reset, banner or auth not ready yet: sshd and cloud-init may still be
    starting) until `timeout` seconds have passed, then raises SSHError with the last reason.
    Use as a context manager or call close().
    """

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        key_path: str | os.PathLike[str],
        *,
        timeout: float = 120.0,
        connect_timeout: float = 15.0,
        alive: Callable[[], str | None] | None = None,
    ) -> None:
        """`alive`, if given, is called between attempts and returns a reason when retrying is pointless
        (e.g. "QEMU exited with code 1"), which is raised at once as SSHError."""
        self.host = host
        self.port = port
        self.user = user
        self.key_path = Path(key_path)
        self._key = load_private_key(self.key_path)
        self._client = self._connect(timeout, connect_timeout, alive)
        self._sftp: paramiko.SFTPClient | None = None

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def _connect(
        self, timeout: float, connect_timeout: float, alive: Callable[[], str | None] | None
    ) -> paramiko.SSHClient:
        deadline = time.monotonic() + timeout
        last = "no attempt made"
        attempt = 0
        while True:
            attempt += 1
            try:
                client = open_client(self.host, self.port, self.user, self._key, connect_timeout)
                log.debug("ssh: connected to %s after %d attempt(s)", self.target, attempt)
                return client
            except (paramiko.SSHException, OSError, EOFError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if alive is not None:
                reason = alive()
                if reason:
                    raise SSHError(f"{self.target}: cannot connect: {reason}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SSHError(
                    f"{self.target}: no SSH login within {timeout:.0f}s ({attempt} attempts; last: {last})",
                    hint="check the serial log; is the public key in the seed's ssh_authorized_keys?",
                )
            time.sleep(min(3.0, remaining))

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 600.0,
        on_line: Callable[[str], None] | None = None,
        input_text: str | None = None,
    ) -> tuple[int, str, str]:
        """Run `cmd` (a shell string, or an argv list that is quoted for the remote shell).

        Returns (exit code, stdout, stderr). With check=True a non-zero exit raises CommandError carrying
        the command and the tail of its output. `on_line` receives each stdout line as it arrives (progress
        for long runs). After `timeout` seconds the channel is closed and SSHError raised.
        """
        text = _command_text(cmd)
        log.debug("ssh %s: %s", self.target, text)
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHError(f"{self.target}: SSH connection is closed")
        try:
            chan = transport.open_session()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHError(f"{self.target}: cannot open a channel ({exc})") from exc
        try:
            chan.exec_command(text)
            if input_text is not None:
                chan.sendall(input_text.encode())
            chan.shutdown_write()
            out = bytearray()
            err = bytearray()
            pending = b""
            deadline = None if timeout is None else time.monotonic() + timeout
            chan.settimeout(0.0)
            while True:
                progressed = False
                while chan.recv_ready():
                    chunk = chan.recv(65536)
                    if not chunk:
                        break
                    out += chunk
                    progressed = True
                    if on_line is not None:
                        pending += chunk
                        *lines, pending = pending.split(b"\n")
                        for line in lines:
                            on_line(line.decode(errors="replace"))
                while chan.recv_stderr_ready():
                    chunk = chan.recv_stderr(65536)
                    if not chunk:
                        break
                    err += chunk
                    progressed = True
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise SSHError(f"{self.target}: command timed out after {timeout:.0f}s: {text}")
                if not progressed:
                    time.sleep(0.05)
            if on_line is not None and pending:
                on_line(pending.decode(errors="replace"))
            rc = chan.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise SSHError(f"{self.target}: connection lost during: {text} ({reason})") from exc
        finally:
            chan.close()
        stdout = out.decode(errors="replace")
        stderr = err.decode(errors="replace")
        if check and rc != 0:
            tail = "\n".join((stdout + stderr).splitlines()[-40:])
            raise CommandError(["ssh", self.target, text], rc, tail)
        return rc, stdout, stderr

    def interactive(self, term: str = "xterm") -> int:
        """A login shell on a pty wired to this terminal (raw mode while it runs); returns its exit code."""
        import select
        import shutil as _shutil
        import sys
        import termios
        import tty

        transport = self._client.get_transport()
        if transport is None:
            raise SSHError(f"{self.target}: SSH connection is closed")
        size = _shutil.get_terminal_size()
        chan = transport.open_session()
        chan.get_pty(term=term, width=size.columns, height=size.lines)
        chan.invoke_shell()
        stdin = sys.stdin.fileno()
        saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
        try:
            if saved is not None:
                tty.setraw(stdin)
            chan.settimeout(0.0)
            while True:
                ready, _, _ = select.select([chan, stdin], [], [])
                if chan in ready:
                    data = chan.recv(32768)
                    if not data:
                        break
                    os.write(sys.stdout.fileno(), data)
                if stdin in ready:
                    data = os.read(stdin, 1024)
                    if not data:
                        chan.shutdown_write()
                    else:
                        chan.sendall(data)
        finally:
            if saved is not None:
                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        rc = chan.recv_exit_status()
        chan.close()
        return rc

    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self._client.open_sftp()
        return self._sftp

    def put(self, local: str | os.PathLike[str], remote: str, mode: int | None = None) -> None:
        """Copy a local file to `remote`; the file mode is kept unless `mode` is given."""
        src = Path(local)
        if not src.is_file():
            raise InputError(f"{src}: not a file")
        sftp = self.sftp()
        sftp.put(str(src), remote)
        sftp.chmod(remote, mode if mode is not None else stat.S_IMODE(src.stat().st_mode))

    def get(self, remote: str, local: str | os.PathLike[str]) -> Path:
        """Copy `remote` to `local` (written to a temp name, then renamed)."""
        dest = Path(local)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            self.sftp().get(remote, str(tmp))
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SSHError(f"{self.target}:{remote}: cannot copy back ({exc})") from exc
        os.replace(tmp, dest)
        return dest

    def close(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except (OSError, paramiko.SSHException):
                pass
            self._sftp = None
        self._client.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def port_is_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections on host:port (QEMU's forward accepts before sshd runs)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
