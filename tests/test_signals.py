"""SIGINT, SIGTERM and SIGHUP to `kiln build` in each stage: base (mmdebstrap), os (packer), kubernetes
(packer, on top of a cached os stage) and finalize (qemu-img convert, on top of cached stages). Each time:
exit 130, no child process survives, no temp dir or partial output is left, no cache entry appears for the
interrupted stage, and the cached stages it started from are intact. The programs that hang are fakes on
PATH (each records its pid); the real counterpart is
test_stages_vm.py::test_interrupted_stage_leaves_no_cache_entry, which interrupts a real Packer/QEMU/Ansible
run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import default_signals, processes_naming
from kiln import config
from kiln.build import bootstrap, stages
from kiln.build import pipeline as build
from kiln_runtime import RUNTIME

REPO = Path(__file__).resolve().parents[1]

HANG = """#!/bin/sh
# fake {name}: record our pid and a child's, then hang until killed
{guard}
sleep 300 &
echo $! >> {pids}
echo $$ >> {pids}
wait
"""


def fake(bin_dir: Path, name: str, pids: Path, guard: str = "") -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(HANG.format(name=name, pids=pids, guard=guard))
    path.chmod(0o755)


def qcow2(path: Path, backing: Path | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        argv += ["-F", "qcow2", "-b", str(backing)]
    subprocess.run([*argv, str(path), "64M"], check=True)
    return path


def seed_cache(cfg: config.Config, upto: str) -> dict[str, Path]:
    """A cached base disk and the os (and kubernetes) stages up to `upto`, as a finished build leaves them."""
    cache = cfg.path("cache_dir")
    spec = bootstrap.spec_from_config(cfg, cfg.repo_root)
    entry = cache / "bootstrap" / spec.key()
    base = qcow2(entry / "base.qcow2")
    (entry / "info.json").write_text(json.dumps({"root_uuid": "x"}))
    disks = {"base": base}
    ids = build.plan_ids(cfg, RUNTIME)
    parent = base
    wanted = {"base": (), "os": ("os",), "kubernetes": ("os", "kubernetes")}[upto]
    for stage in wanted:
        sid = ids[stage]
        record = stages.Record(
            sid.id, stage, sid.parent, cfg.target, str(parent), 0, time.time(), time.time(), {}
        )
        parent = stages.store(cache, sid.id, qcow2(cache / f"{stage}.qcow2", parent), record)
        disks[stage] = parent
    if upto == "kubernetes":
        (stages.root(cache) / ids["kubernetes"].id / build.PACKAGES_KEPT).write_text("containerd\t1.6\n")
    return disks


def _alive(pid: int) -> bool:
    """`pid` runs (a zombie, ended and waiting to be reaped, does not)."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


CASES = {
    # stage interrupted: (fake program that hangs, the last stage already cached)
    "base": ("mmdebstrap", None),
    "os": ("packer", "base"),
    "kubernetes": ("packer", "os"),
    "finalize": ("qemu-img", "kubernetes"),
}


def _wait_for_fake(child: subprocess.Popen[str], pids: Path, what: str) -> None:
    """Until the fake that hangs has recorded its pid and its child's (`child` still running)."""
    deadline = time.monotonic() + 120
    while not (pids.exists() and len(pids.read_text().split()) >= 2):
        if child.poll() is not None:
            pytest.fail(child.stdout.read() if child.stdout else f"{child.args[0]} exited")
        assert time.monotonic() < deadline, f"{what} never started"
        time.sleep(0.2)


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
@pytest.mark.parametrize("stage", list(CASES))
def test_signal_in_each_stage_leaves_nothing_behind(tmp_path: Path, stage: str, sig: signal.Signals) -> None:
    if os.geteuid() != 0 and stage == "base":
        pytest.skip("the bootstrap base needs root")
    out, cache, pids, bin_dir = tmp_path / "out", tmp_path / "cache", tmp_path / "pids", tmp_path / "bin"
    # the VM runner (Packer, faked here); the chroot runner's interrupts are a VM test (test_chroot_vm)
    overrides = {"output_dir": str(out), "cache_dir": str(cache), "accelerator": "tcg", "provisioner": "vm"}
    cfg = config.load("debian-12", overrides=overrides, repo_root=REPO)
    program, cached = CASES[stage]
    before = seed_cache(cfg, cached) if cached else {}
    guard = ""
    if program == "packer":
        guard = 'if [ "$1" = version ]; then echo "Packer v1.6.6"; exit 0; fi'
    if program == "qemu-img":  # only `convert` hangs; everything else is the real qemu-img
        real = subprocess.run(
            ["sh", "-c", "command -v qemu-img"], capture_output=True, text=True
        ).stdout.strip()
        guard = f'if [ "$1" != convert ]; then exec {real} "$@"; fi'
    fake(bin_dir, program, pids, guard)
    path = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PACKER_VAR_FILES": "", "PATH": path}
    argv = [sys.executable, "-m", "kiln", "build", "debian-12", "--no-verify",
            *[a for k, v in overrides.items() for a in ("--var", f"{k}={v}")]]  # fmt: skip
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True, preexec_fn=default_signals)  # fmt: skip
    _wait_for_fake(child, pids, "the fake program")
    child.send_signal(sig)
    output, _ = child.communicate(timeout=60)
    assert child.returncode == 130, output
    assert f"==> {stage}:" in output, output
    time.sleep(0.3)
    for pid in map(int, pids.read_text().split()):
        assert not _alive(pid), f"process {pid} survived"
    assert not [p for p in out.iterdir() if p.name != "logs"] if out.exists() else True, "no partial output"
    ids = build.plan_ids(cfg, RUNTIME)
    if stage in ("os", "kubernetes"):
        assert stages.lookup(cache, ids[stage].id) is None, "no cache entry for the interrupted stage"
    assert not list(stages.root(cache).glob(".*.tmp-*")) if stages.root(cache).exists() else True
    assert not list((cache / "bootstrap").glob(".*.tmp-*")) if (cache / "bootstrap").exists() else True
    for name, disk in before.items():
        assert disk.is_file(), f"the cached {name} stage was touched"


@pytest.mark.parametrize(
    ("standin", "stop"),
    [(False, "term make"), (True, "term make"), (True, "kill make"), (True, "kill wrapper")],
    ids=["plain", "K8S_STANDIN", "K8S_STANDIN-kill-9-make", "K8S_STANDIN-kill-9-wrapper"],
)
def test_stopping_make_stops_kiln(tmp_path: Path, standin: bool, stop: str) -> None:
    """`kill MAKE_PID` (SIGTERM to make alone, as a CI runner or a supervisor sends it): make passes SIGTERM
    to its child only, so the recipe must `exec` kiln (and K8S_STANDIN's wrapper must pass it on), or kiln
    goes on building with nobody waiting for it. Here the os stage's Packer (a fake on PATH) hangs. With
    K8S_STANDIN, `kill -9` of make or of the wrapper sends nothing on: the wrapper takes make's end as a
    SIGTERM, and kiln the wrapper's (it could not build on without the wrapper's server)."""
    out, cache, pids, bin_dir = tmp_path / "out", tmp_path / "cache", tmp_path / "pids", tmp_path / "bin"
    overrides = {"output_dir": str(out), "cache_dir": str(cache), "accelerator": "tcg", "provisioner": "vm"}
    cfg = config.load("debian-12", overrides=overrides, repo_root=REPO)
    seed_cache(cfg, "base")
    fake(bin_dir, "packer", pids, 'if [ "$1" = version ]; then echo "Packer v1.6.6"; exit 0; fi')
    path = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    flags = " ".join(f"--var {k}={v}" for k, v in overrides.items())
    # -o deps: the checkout's apt packages and virtualenv are taken as they are (the suite runs from them)
    argv = ["make", "--no-print-directory", "-o", "deps", "build-qemu-debian-12", f"PACKER_FLAGS={flags}",
            "PACKER_VAR_FILES=", *(["K8S_STANDIN=1"] if standin else [])]  # fmt: skip
    make = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PATH": path}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    _wait_for_fake(make, pids, "the fake packer")
    if stop == "kill wrapper":  # make's one child: the recipe execs the wrapper
        (wrapper,) = Path(f"/proc/{make.pid}/task/{make.pid}/children").read_text().split()
        os.kill(int(wrapper), signal.SIGKILL)
    else:  # to make alone, not its process group
        make.send_signal(signal.SIGKILL if stop == "kill make" else signal.SIGTERM)
    try:
        output, _ = make.communicate(timeout=60)  # ends when the last holder of make's stdout (kiln) is gone
    except subprocess.TimeoutExpired:
        os.killpg(make.pid, signal.SIGKILL)  # kiln and its fakes kept make's session
        make.communicate()
        pytest.fail("kiln went on building after make was stopped (SIGTERM did not reach it)")
    assert "==> os:" in output, output
    assert "interrupted" in output.lower(), output  # kiln itself saw the signal and cleaned up
    time.sleep(0.5)
    for pid in map(int, pids.read_text().split()):
        assert not _alive(pid), f"process {pid} survived"
    assert not processes_naming(str(tmp_path)), "kiln (or its wrapper) outlived make"
    assert not [p for p in out.iterdir() if p.name != "logs"] if out.exists() else True, "no partial output"
    assert stages.lookup(cache, build.plan_ids(cfg, RUNTIME)["os"].id) is None


@pytest.mark.parametrize("ignored", [False, True], ids=["terminal", "nohup"])
def test_sighup_stops_kiln_unless_it_was_started_ignoring_it(ignored: bool) -> None:
    """A closed terminal or SSH session (SIGHUP) stops kiln like SIGTERM; under `nohup` (SIGHUP ignored when
    kiln starts) it keeps building. Runs in a child so that pytest's own handlers are untouched."""
    probe = (
        "import os, signal\n"
        "from kiln.core import proc\n"
        "proc.install_sigterm_handler()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "    print('kept going')\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    disposition = signal.SIG_IGN if ignored else signal.SIG_DFL
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGHUP, disposition))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("kept going" if ignored else "interrupted")


def test_a_second_stop_signal_does_not_cut_the_cleanup_short() -> None:
    """A stop sent to the whole process group reaches kiln twice (directly, and through make or the
    K8S_STANDIN wrapper): the first starts the cleanup, the ones after it are ignored."""
    probe = (
        "import os, signal\n"
        "from kiln.core import proc\n"
        "proc.install_sigterm_handler()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "except KeyboardInterrupt:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "    print('cleaned up')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          preexec_fn=default_signals)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cleaned up"
