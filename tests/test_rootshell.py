"""The long-lived shell behind verify's checks (kiln.goss.rootshell), over a real SSH connection to the
in-process server of test_ssh.py, which runs each exec request with bash. The real counterpart, with
`sudo -n /bin/sh -s` in a guest's OpenSSH, is every verify boot of the VM tests (tests/test_verify_vm.py)."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import pytest
import testinfra.host

from kiln.goss import reports
from kiln.goss import specs as goss
from kiln.goss.probe import TestinfraProbe
from kiln.goss.rootshell import RootShellBackend, ShellError
from kiln.vm import ssh
from test_ssh import server  # noqa: F401  (the fixture)


def _backend(port: int, key: ssh.KeyPair, **kwargs: object) -> RootShellBackend:
    return RootShellBackend(
        f"tester@127.0.0.1:{port}", ssh_identity_file=str(key.private_key), timeout=10, **kwargs
    )


def test_commands_keep_their_own_output_exit_status_and_stdin(server: tuple[int, ssh.KeyPair]) -> None:  # noqa: F811
    port, key = server
    b = _backend(port, key)
    try:
        r = b.run("printf 'a\\nb' ; echo err >&2; exit 3")
        assert (r.rc, r.stdout, r.stderr) == (3, "a\nb", "err\n")
        r = b.run("cat; echo after")  # stdin is /dev/null: the next command is not read as input
        assert (r.rc, r.stdout) == (0, "after\n")
        r = b.run("head -c 200000 /dev/zero | tr '\\0' x; printf KILN-fake 0 0 0")  # big, and a fake frame
        assert r.rc == 0 and len(r.stdout) == 200000 + len("KILN-fake")
        r = b.run("echo %s %s", "it's", "$HOME; rm -rf /")  # arguments quoted
        assert r.stdout == "it's $HOME; rm -rf /\n"
        r = b.run("cd /; export KILN_X=1")  # each command in a shell of its own: nothing carries over
        assert b.run("echo ${KILN_X:-unset}").stdout == "unset\n"
        r = b.run("printf '\\377\\000\\n'")
        assert r.stdout_bytes == b"\xff\x00\n"
    finally:
        b.close()


def test_threads_get_shells_of_their_own(server: tuple[int, ssh.KeyPair]) -> None:  # noqa: F811
    port, key = server
    b = _backend(port, key)
    out: dict[int, str] = {}

    def work(i: int) -> None:
        for _ in range(5):
            out[i] = b.run("sleep 0.05; echo %s", str(i)).stdout

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert out == {i: f"{i}\n" for i in range(4)}
        assert len(b._shells) == 4
    finally:
        b.close()


def test_a_shell_that_cannot_start_is_named(server: tuple[int, ssh.KeyPair]) -> None:  # noqa: F811
    port, key = server
    b = _backend(port, key, sudo=True)  # no sudo on this side: bash says so, and the error carries it
    with pytest.raises(ShellError, match=r"sudo -n /bin/sh -s.* ended \(exit"):
        b.run("id -u")
    b.close()


def test_goss_checks_through_the_shell(server: tuple[int, ssh.KeyPair], tmp_path: Path) -> None:  # noqa: F811
    port, key = server
    (tmp_path / "f").write_text("hello\n")
    (tmp_path / "f").chmod(0o640)
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"file:\n  {tmp_path}/f: {{exists: true, filetype: file, mode: '0640', contents: [hello]}}\n"
        f"  {tmp_path}/none: {{exists: false}}\n"
        "command:\n  echo one: {exit-status: 0, stdout: [one]}\n  exit 4: {exit-status: 4}\n"
    )
    b = _backend(port, key)
    try:
        results = goss.evaluate(goss.load_spec(spec, {}), TestinfraProbe(testinfra.host.Host(b)))
    finally:
        b.close()
    assert all(r.successful for r in results), reports.failure_table(results)
    assert len(results) >= 6


def test_a_silent_shell_fails_its_command_and_every_later_one_at_once(
    server: tuple[int, ssh.KeyPair],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wedged guest keeps its connection up: after one command outlived the timeout, the others fail
    at once instead of each waiting it out again."""
    import time

    from kiln.goss import rootshell

    monkeypatch.setattr(rootshell, "COMMAND_TIMEOUT", 5.0)
    port, key = server
    b = _backend(port, key)
    try:
        with pytest.raises(ShellError, match="no answer in 5s"):
            b.run("sleep 30")
        started = time.monotonic()
        with pytest.raises(ShellError, match="no answer"):
            b.run("true")
        assert time.monotonic() - started < 2.5  # at once, not after another 5 s timeout
    finally:
        b.close()


def test_the_operators_ssh_config_does_not_redirect_the_login(
    server: tuple[int, ssh.KeyPair],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A `Host *` in ~/.ssh/config (a common laptop setup) must not replace the verify login's user, port or
    key, nor send it through a proxy; and a throwaway VM's new host key is no warning."""
    port, key = server
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        "Host *\n  User somebody-else\n  Port 1\n  IdentityFile ~/.ssh/id_work\n  ProxyCommand false\n"
    )
    monkeypatch.setenv("HOME", str(home))
    b = _backend(port, key)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # paramiko warns with UserWarning
            assert b.run("echo $USER-ok").stdout.endswith("-ok\n")
    finally:
        b.close()


def _probe_dirs(where: Path) -> set[Path]:
    from kiln.goss import rootshell

    return set(where.glob(rootshell.TEMP_PREFIX + "*"))


def _gone(paths: set[Path], within: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + within
    while any(p.exists() for p in paths) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(p.exists() for p in paths)


def test_the_shells_temp_dir_goes_with_it_closed_or_cut_off(
    server: tuple[int, ssh.KeyPair],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each shell's private temp dir (named kiln-probe.*) is removed when the backend closes it, and also
    when the connection drops without a goodbye (the shell reads the end of its input): a dropped
    `kiln goss-check --host` leaves nothing in the host's /tmp."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the fake server's shells make theirs here
    port, key = server
    before = _probe_dirs(tmp_path)
    b = _backend(port, key)
    try:
        assert b.run("true").rc == 0
        made = _probe_dirs(tmp_path) - before
        assert len(made) == 1, made
    finally:
        b.close()
    assert _gone(made), f"left after close: {made}"

    before = _probe_dirs(tmp_path)
    b = _backend(port, key)
    assert b.run("true").rc == 0
    made = _probe_dirs(tmp_path) - before
    assert len(made) == 1, made
    b.client.get_transport().close()  # type: ignore[union-attr]  (the connection cut, no `exit` sent)
    assert _gone(made), f"left after the connection dropped: {made}"
    b.close()


@pytest.mark.parametrize("shell", ["dash", "bash"])
@pytest.mark.parametrize("sig", ["SIGHUP", "SIGTERM"])
def test_the_temp_dir_goes_when_a_signal_meets_an_idle_shell(
    shell: str, sig: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hangup or TERM while the shell waits for its next line runs the trap only at the end of its input,
    where an `exit` in the trap would skip the EXIT trap: the dir goes all the same, and the exit status
    names the signal."""
    import shutil
    import signal
    import subprocess
    import time

    from kiln.goss import rootshell

    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed")
    monkeypatch.setenv("TMPDIR", str(tmp_path))

    # a suite run under nohup (or in the background) passes SIGHUP ignored, and a shell cannot trap a signal
    # ignored on entry: the shell gets the default back, as sshd's sessions have it
    def default_signals() -> None:
        for number in (signal.SIGHUP, signal.SIGTERM):
            signal.signal(number, signal.SIG_DFL)

    child = subprocess.Popen(
        [shell, "-s"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=default_signals
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(rootshell._START + b"echo ready\n")
    child.stdin.flush()
    assert child.stdout.readline() == b"ready\n"
    (made,) = _probe_dirs(tmp_path)
    child.send_signal(getattr(signal, sig))
    time.sleep(0.2)
    child.stdin.close()  # the end of its input, as when the connection drops
    assert child.wait(timeout=10) == {"SIGHUP": 129, "SIGTERM": 143}[sig]
    assert not made.exists()
