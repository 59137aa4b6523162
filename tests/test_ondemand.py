"""kiln.build.ondemand without a containerd: the address it takes, a tree that has none, how it stops. The
tree's real containerd, started for `ctr images import` in a stage: tests/test_chroot_vm.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.build import chroot, ondemand
from kiln_runtime import RUNTIME

SRC = Path(ondemand.__file__).resolve().parents[2]


def _dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    tree, work = tmp_path / "tree", tmp_path / "work"
    run = work / "run"
    for d in (tree / "tmp", run / "kiln-stage"):
        d.mkdir(parents=True)
    return tree, run, work


def _start(tree: Path, run: Path, work: Path) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "kiln.build.ondemand", str(tree), str(run), str(work), chroot._CAPS_ARG]
    child = subprocess.Popen(
        argv, env={**os.environ, "PYTHONPATH": str(SRC)}, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 20
    while not (run / ondemand.ADDRESS).exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return child


def _stop(child: subprocess.Popen[str]) -> str:
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    return err


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_a_client_of_a_tree_without_containerd_is_turned_away_with_a_reason(tmp_path: Path) -> None:
    tree, run, work = _dirs(tmp_path)
    child = _start(tree, run, work)
    assert (run / ondemand.ADDRESS).is_socket() and os.stat(run / "containerd").st_mode & 0o777 == 0o711
    for _ in range(2):  # said once, every client turned away
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(run / ondemand.ADDRESS))
            client.settimeout(10)
            assert client.recv(1) == b""
    child.send_signal(signal.SIGINT)  # Ctrl-C is Ansible's: the activator goes on
    time.sleep(0.3)
    assert child.poll() is None
    err = _stop(child)
    assert err.count("the tree has no containerd on its PATH") == 1
    assert not (run / ondemand.ADDRESS).exists() and not (work / ondemand.LOG).exists()


def test_a_stale_socket_is_replaced_and_a_file_kept(tmp_path: Path) -> None:
    tree, run, work = _dirs(tmp_path)
    (run / "containerd").mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(run / ondemand.ADDRESS))  # bound, never listening: what a copied /run holds
    stale.close()
    activator = ondemand.Activator(tree, run, work, chroot._CAPS_ARG, RUNTIME)
    cwd = os.getcwd()
    try:
        listener = activator.listen()
        assert listener is not None
        listener.close()
        os.unlink(ondemand.ADDRESS)
        (run / ondemand.ADDRESS).write_text("a task's own\n")
        assert activator.listen() is None  # not ours: left alone
        assert (run / ondemand.ADDRESS).read_text() == "a task's own\n"
    finally:
        os.chdir(cwd)


def test_pump_passes_bytes_and_the_end() -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    a.sendall(b"x" * 50_000)
    a.shutdown(socket.SHUT_WR)
    ondemand.pump(b, c)
    got = b""
    while chunk := d.recv(1 << 16):
        got += chunk
    assert got == b"x" * 50_000
    for s in (a, b, c, d):
        s.close()
