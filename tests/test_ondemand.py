"""kiln.build.ondemand without a real containerd: the address it takes and leaves alone, a tree that has none,
how it stops, and its relay (with a stand-in containerd that echoes). The tree's real containerd, started
for `ctr images import` in a stage: tests/test_chroot_vm.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kiln.build import ondemand
from kiln_runtime import RUNTIME

SRC = Path(ondemand.__file__).resolve().parents[2]


def _dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    tree, work = tmp_path / "tree", tmp_path / "work"
    run = work / "run"
    for d in (tree / "tmp", run / "kiln-stage"):
        d.mkdir(parents=True)
    (work / ondemand.SETTINGS).write_text('{"proxies": {}}\n')
    return tree, run, work


def _start(tree: Path, run: Path, work: Path) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "kiln.build.ondemand", str(tree), str(run), str(work)]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    child = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not (work / ondemand.READY).exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return child


def _stop(child: subprocess.Popen[str]) -> str:
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    return err


@pytest.mark.skipif(os.geteuid() != 0, reason="a stage runs as root")
def test_a_client_of_a_tree_without_containerd_is_turned_away_with_a_reason(tmp_path, monkeypatch) -> None:
    tree, run, work = _dirs(tmp_path)
    child = _start(tree, run, work)
    monkeypatch.chdir(run)  # relative socket paths, as the activator's: pytest's can pass 108 bytes
    assert Path(ondemand.ADDRESS).is_socket(), "listening once it says it is ready"
    assert os.stat("containerd").st_mode & 0o777 == 0o711
    for _ in range(2):  # said once, every client turned away
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect(ondemand.ADDRESS)
            assert client.recv(1) == b""
    child.send_signal(signal.SIGINT)  # a terminal's Ctrl-C is Ansible's; the shell stops this afterwards
    time.sleep(0.3)
    assert child.poll() is None
    err = _stop(child)
    assert err.count("the tree has no containerd in /usr/local/sbin:") == 1, err
    assert not Path(ondemand.ADDRESS).exists() and not (work / ondemand.LOG).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="a stage runs as root")
def test_what_the_address_already_is_is_left_alone(tmp_path, monkeypatch) -> None:
    """A link at the stage's /run/containerd would lead onto the build host: nothing listens, and the
    activator still says it is ready (the stage goes on)."""
    tree, run, work = _dirs(tmp_path)
    elsewhere = tmp_path / "host-dir"
    elsewhere.mkdir()
    (run / "containerd").symlink_to(elsewhere)
    child = _start(tree, run, work)
    assert (work / ondemand.READY).exists() and not list(elsewhere.iterdir())
    assert "/run/containerd: not a directory" in _stop(child)


def test_a_stale_socket_is_replaced_and_a_file_kept(tmp_path: Path, monkeypatch) -> None:
    tree, run, work = _dirs(tmp_path)
    monkeypatch.chdir(run)
    (run / "containerd").mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(ondemand.ADDRESS)  # bound, never listening: what a copied /run holds
    stale.close()
    activator = ondemand.Activator(tree, run, work, {}, RUNTIME)
    listener = activator.listen()
    assert listener is not None and ondemand.answers(ondemand.ADDRESS)
    assert os.stat(ondemand.ADDRESS).st_mode & 0o777 == 0o660
    assert sorted(os.listdir("containerd")) == ["containerd.sock"], "bound under another name, then renamed"
    assert activator.listen() is None, "one that answers is left alone"
    listener.close()
    os.unlink(ondemand.ADDRESS)
    Path(ondemand.ADDRESS).write_text("a task's own\n")
    assert activator.listen() is None
    assert Path(ondemand.ADDRESS).read_text() == "a task's own\n"


def _echo(server: socket.socket) -> None:
    """A stand-in for containerd: echoes each connection's bytes, then closes its side."""
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)


def test_the_relay_passes_both_ways_and_closes_each_connection(tmp_path: Path, monkeypatch) -> None:
    """200 clients in turn, each answered after it half-closed (as a gRPC client ends a stream); no socket
    stays open afterwards (each used to stay until the playbook ended: out of descriptors at about 500)."""
    tree, run, work = _dirs(tmp_path)
    monkeypatch.chdir(run)
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    upstream.bind(ondemand.PRIVATE)
    upstream.listen(8)
    threading.Thread(target=_echo, args=(upstream,), daemon=True).start()
    activator = ondemand.Activator(tree, run, work, {}, RUNTIME)
    monkeypatch.setattr(activator, "start", lambda: True)
    fds = len(os.listdir("/proc/self/fd"))
    for n in range(200):
        ours, theirs = socket.socketpair()
        ours.settimeout(10)
        activator.serve(theirs)
        ours.sendall(b"%d " % n * 1000)
        ours.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := ours.recv(1 << 16):
            got += chunk
        assert got == b"%d " % n * 1000
        ours.close()
    deadline = time.monotonic() + 10
    while activator.open and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not activator.open
    assert len(os.listdir("/proc/self/fd")) <= fds + 2
    upstream.close()
