"""ssh: one-time keys (checked with the real ssh-keygen), key loading errors, connection retry, and
Session.run/put/get against an in-process paramiko SSH server (FAKE server side: commands run in a local
shell). The real counterpart, a guest's OpenSSH sshd, is tests/test_boot_vm.py."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from kiln.core.errors import CommandError, InputError
from kiln.vm import ssh

# --- keys ------------------------------------------------------------------------------------------------


def test_generate_keypair_private_dir_and_openssh_format(tmp_path: Path) -> None:
    pair = ssh.generate_keypair(tmp_path / "k", comment="boot-1")
    assert stat.S_IMODE(pair.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(pair.private_key.stat().st_mode) == 0o600
    assert pair.public_line.startswith("ssh-ed25519 ") and pair.public_line.endswith(" boot-1")
    # the real OpenSSH tool derives the same public key from the private file
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(pair.private_key)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert derived[:2] == pair.public_line.split()[:2]
    assert isinstance(ssh.load_private_key(pair.private_key), paramiko.Ed25519Key)


def test_generate_keypair_default_is_a_new_temp_dir() -> None:
    a, b = ssh.generate_keypair(), ssh.generate_keypair()
    try:
        assert a.directory != b.directory and a.public_line != b.public_line
        assert stat.S_IMODE(a.directory.stat().st_mode) == 0o700
    finally:
        import shutil

        shutil.rmtree(a.directory)
        shutil.rmtree(b.directory)


def test_load_private_key_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope: SSH private key not found"):
        ssh.load_private_key(tmp_path / "nope")
    junk = tmp_path / "junk"
    junk.write_text("hello")
    with pytest.raises(InputError, match="junk: not a private key"):
        ssh.load_private_key(junk)
    enc = tmp_path / "enc"
    key = ed25519.Ed25519PrivateKey.generate()
    enc.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(InputError, match="enc: SSH private key is encrypted"):
        ssh.load_private_key(enc)


# --- an in-process SSH server (fake server side) ----------------------------------------------------------


# what paramiko raises when the other end of a channel or transport has gone
_GONE = (OSError, EOFError, paramiko.SSHException)


class _Server(paramiko.ServerInterface):
    """Runs each exec request with bash. As sshd does, a client that goes away ends its command (the
    command is killed), and nothing of a session outlives the fixture: `close` ends the commands still
    running (TERM to each one's process group, KILL after 5 s) and joins every thread, so no thread dies
    later, inside another test."""

    def __init__(self, allowed: paramiko.PKey) -> None:
        self.allowed = allowed
        self.children: list[subprocess.Popen[bytes]] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.closing = False

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = key.get_base64() == self.allowed.get_base64()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return (
            paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        )

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self._start(self._exec, channel, command.decode())
        return True

    def _start(self, target: Callable[..., None], *args: object) -> threading.Thread:
        """Every thread of the server starts here, so that `close` joins it."""
        t = threading.Thread(target=target, args=args, daemon=True)
        with self.lock:
            self.threads.append(t)
        t.start()
        return t

    def close(self) -> None:
        with self.lock:
            self.closing = True  # a command that starts from now on is killed at once
            children, threads = list(self.children), list(self.threads)
        for child in children:  # as a shutdown: TERM to the command's process group and the end of its
            if child.poll() is None:  # input (the client is gone), then KILL
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    os.killpg(child.pid, signal.SIGTERM)
                with contextlib.suppress(OSError, ValueError):
                    assert child.stdin is not None
                    child.stdin.close()
        for child in children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        for t in threads:
            t.join(timeout=10)
            assert not t.is_alive(), f"the fake SSH server's {t.name} outlived its test"

    def _exec(self, channel: paramiko.Channel, command: str) -> None:
        child = subprocess.Popen(
            ["bash", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        with self.lock:
            self.children.append(child)
            if self.closing:
                child.kill()

        def pump_in() -> None:
            assert child.stdin is not None
            try:
                while data := channel.recv(4096):
                    child.stdin.write(data)
                    child.stdin.flush()  # as sshd: what the client sent reaches the command now
                child.stdin.close()
            except (*_GONE, ValueError):  # the command ended (or was killed) before its input did, the client
                pass  # left, or `close` ended its input

        def pump_err() -> None:
            assert child.stderr is not None
            try:
                while data := child.stderr.read1(4096):  # type: ignore[attr-defined]
                    channel.sendall_stderr(data)
            except _GONE:  # the client went away: sshd ends the command
                child.kill()

        self._start(pump_in)
        err = self._start(pump_err)
        assert child.stdout is not None
        try:
            while data := child.stdout.read1(4096):  # type: ignore[attr-defined]
                channel.sendall(data)
        except _GONE:  # the client went away: sshd ends the command
            child.kill()
        rc = child.wait()
        err.join()
        try:
            if rc >= 0:  # a killed command has a signal, not a status (sshd sends exit-signal)
                channel.send_exit_status(rc)
            channel.close()
        except _GONE:
            pass


class _SFTPHandle(paramiko.SFTPHandle):
    def stat(self) -> paramiko.SFTPAttributes:
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))  # type: ignore[attr-defined]


class _SFTP(paramiko.SFTPServerInterface):
    """Local-filesystem SFTP, just what put/get use."""

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> paramiko.SFTPHandle | int:
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)
        mode = "r+b" if flags & os.O_RDWR else ("wb" if flags & os.O_WRONLY else "rb")
        handle = _SFTPHandle(flags)
        fobj = os.fdopen(fd, mode)
        handle.readfile = fobj  # type: ignore[attr-defined]
        handle.writefile = fobj  # type: ignore[attr-defined]
        return handle

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(path))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)

    lstat = stat

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        if attr.st_mode is not None:
            os.chmod(path, attr.st_mode)
        return paramiko.SFTP_OK


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, ssh.KeyPair]]:
    client_key = ssh.generate_keypair(tmp_path / "client")
    host_key = paramiko.Ed25519Key.from_private_key_file(
        str(ssh.generate_keypair(tmp_path / "host").private_key)
    )
    allowed = ssh.load_private_key(client_key.private_key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    transports: list[paramiko.Transport] = []
    handler = _Server(allowed)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            t = paramiko.Transport(conn)
            transports.append(t)
            t.add_server_key(host_key)
            t.set_subsystem_handler("sftp", paramiko.SFTPServer, _SFTP)
            try:
                t.start_server(server=handler)
            except _GONE:  # a client that gave up during the handshake: serve the next one
                t.close()

    accepter = threading.Thread(target=serve, daemon=True)
    accepter.start()
    yield listener.getsockname()[1], client_key
    listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (close alone does not, on Linux)
    listener.close()
    accepter.join(timeout=10)
    for t in transports:
        t.close()
    handler.close()


def test_run_stdout_stderr_exit_code_and_streaming(server: tuple[int, ssh.KeyPair]) -> None:
    port, key = server
    with ssh.Session("127.0.0.1", port, "kiln", key.private_key, timeout=10) as s:
        rc, out, err = s.run("echo out; echo err >&2; printf 'last'; exit 3", check=False)
        assert (rc, out, err) == (3, "out\nlast", "err\n")
        lines: list[str] = []
        s.run("for i in 1 2 3; do echo line$i; done; printf tail", on_line=lines.append)
        assert lines == ["line1", "line2", "line3", "tail"]
        assert s.run(["printf", "%s|", "a b", "it's"])[1] == "a b|it's|"  # argv lists are quoted
        assert s.run("cat", input_text="from stdin\n")[1] == "from stdin\n"
        with pytest.raises(CommandError) as failed:
            s.run("echo boom >&2; exit 7")
        assert failed.value.returncode == 7 and "boom" in failed.value.output_tail
        assert failed.value.argv[:2] == ["ssh", f"kiln@127.0.0.1:{port}"]
        start = time.monotonic()
        with pytest.raises(ssh.SSHError, match="timed out after 1s"):
            s.run("sleep 30", timeout=1)
        assert time.monotonic() - start < 10


def test_put_and_get(server: tuple[int, ssh.KeyPair], tmp_path: Path) -> None:
    port, key = server
    src = tmp_path / "tool"
    src.write_text("#!/bin/sh\necho hi\n")
    src.chmod(0o750)
    remote = tmp_path / "remote-tool"
    with ssh.Session("127.0.0.1", port, "kiln", key.private_key, timeout=10) as s:
        s.put(src, str(remote))
        assert remote.read_text() == src.read_text()
        assert stat.S_IMODE(remote.stat().st_mode) == 0o750  # mode kept
        s.put(src, str(remote), mode=0o600)
        assert stat.S_IMODE(remote.stat().st_mode) == 0o600
        back = s.get(str(remote), tmp_path / "back" / "tool")
        assert back.read_text() == src.read_text()
        with pytest.raises(ssh.SSHError, match="cannot copy back"):
            s.get(str(tmp_path / "missing"), tmp_path / "back" / "missing")
        assert not (tmp_path / "back" / ".missing.part").exists()
        with pytest.raises(InputError):
            s.put(tmp_path / "nope", "/tmp/x")


def test_wrong_key_retries_then_fails(server: tuple[int, ssh.KeyPair], tmp_path: Path) -> None:
    port, _ = server
    other = ssh.generate_keypair(tmp_path / "other")
    with pytest.raises(ssh.SSHError, match="no SSH login within 2s"):
        ssh.Session("127.0.0.1", port, "kiln", other.private_key, timeout=2, connect_timeout=2)


def test_connect_retries_until_timeout_on_closed_port(tmp_path: Path) -> None:
    key = ssh.generate_keypair(tmp_path / "k")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens after close
    start = time.monotonic()
    with pytest.raises(ssh.SSHError) as err:
        ssh.Session("127.0.0.1", port, "kiln", key.private_key, timeout=4, connect_timeout=1)
    took = time.monotonic() - start
    assert 4 <= took < 15
    attempts = re.search(r"(\d+) attempts", err.value.message)
    assert attempts and int(attempts.group(1)) >= 2  # 3 on an idle machine; a slow attempt leaves room for 2
    assert "Unable to connect" in err.value.message


def test_alive_callback_stops_retrying(tmp_path: Path) -> None:
    key = ssh.generate_keypair(tmp_path / "k")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ssh.SSHError, match="cannot connect: QEMU exited"):
        ssh.Session("127.0.0.1", port, "kiln", key.private_key, timeout=60, alive=lambda: "QEMU exited")
    assert time.monotonic() - start < 5
