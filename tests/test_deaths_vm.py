"""kill -9 of a real build, in a VM stage (Packer, QEMU, Ansible and its SSH multiplexer) and in a chroot
stage (Ansible in a private mount namespace with /proc, /sys, /dev mounted): within 15 s nothing of the
build runs and nothing stays mounted, and the next build says which stale temp dir it removed; the same
for kill -9 while mmdebstrap builds the bootstrap base. And a full
output filesystem during finalize: exit 1 naming the path and the space, nothing published.

Builds that follow reuse the suite image's cached stages (its var files and stand-in), so they run finalize
only."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SITE_MAKE_VAR
from kiln.core import watchdog

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the chroot runner needs root")]
NAME = "debian-12+kube-v1.36.1"


def _accel() -> str:
    return os.environ.get("KILN_TEST_ACCELERATOR", "tcg")


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _read(pid: int, what: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{what}").read_bytes()
    except OSError:
        return b""


def _descendants(root: int) -> set[int]:
    parents = {}
    for pid in _pids():
        stat = _read(pid, "stat").decode(errors="replace")
        if stat:
            parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = set(), [root]
    while todo:
        cur = todo.pop()
        for pid, ppid in parents.items():
            if ppid == cur and pid not in found:
                found.add(pid)
                todo.append(pid)
    return found


def _alive(pid: int) -> bool:
    status = _read(pid, "status").decode(errors="replace").lower()
    return bool(status) and "zombie" not in status


def _of_build(kiln_pid: int, temp_dir: str) -> list[int]:
    """Processes of the killed build: its watchdog token in their environment, or its temp dir in their
    arguments."""
    token = f"{watchdog.VARIABLE}={kiln_pid}-".encode()
    out = []
    for pid in _pids():
        env = _read(pid, "environ").split(b"\0")
        if any(v.startswith(token) for v in env) or temp_dir.encode() in _read(pid, "cmdline"):
            if _alive(pid) and pid != os.getpid():
                out.append(pid)
    return out


def _mounts_anywhere(path: Path) -> list[str]:
    """Mount points under `path` in any process's mount namespace."""
    seen = set()
    for pid in _pids():
        for line in _read(pid, "mountinfo").decode(errors="replace").splitlines():
            point = line.split()[4] if len(line.split()) > 4 else ""
            if point.startswith(str(path)):
                seen.add(point)
    return sorted(seen)


def _temp_dir(out: Path) -> Path | None:
    """The newest temp dir in `out` (an earlier killed build's may be there too)."""
    found = sorted(out.glob(f".{NAME}.tmp-*"), key=lambda p: p.stat().st_mtime) if out.exists() else []
    return found[-1] if found else None


def _kill_9_when(argv: list[str], out: Path, log: Path, ready, timeout: float) -> tuple[int, str, set[int]]:  # type: ignore[no-untyped-def]
    """Start `kiln build`, wait until `ready(temp_dir)`, SIGKILL kiln alone (as the OOM killer or a CI
    runner would); return kiln's pid, the temp dir and the processes it had."""
    with open(log, "wb") as fh:
        child = subprocess.Popen(argv, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PACKER_VAR_FILES": ""})  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        temp = None
        while time.monotonic() < deadline:
            assert child.poll() is None, log.read_text()[-3000:]
            temp = _temp_dir(out)
            if temp is not None and ready(temp):
                break
            time.sleep(1)
        else:
            pytest.fail(f"never ready within {timeout}s:\n{log.read_text()[-3000:]}")
        tree = _descendants(child.pid)
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.pid, str(temp), tree


def _nothing_left(kiln_pid: int, temp: str, tree: set[int], under: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        left = [p for p in tree if _alive(p)] + _of_build(kiln_pid, temp)
        if not left and not _mounts_anywhere(under):
            return
        time.sleep(0.5)
    described = {p: _read(p, "cmdline").replace(b"\0", b" ")[:120] for p in set(left)}
    pytest.fail(f"15 s after kill -9: processes {described}, mounts {_mounts_anywhere(under)}")


def _finalize_only(out: Path, formats: str = "qcow2") -> subprocess.CompletedProcess[str]:
    """A build of the suite image's stages (cached) into `out`: finalize only, no verify boot."""
    flags = f"-var output_dir={out} -var accelerator={_accel()} --no-verify"
    return subprocess.run(
        ["make", "--no-print-directory", "build-qemu-debian-12", "K8S_STANDIN=1", SITE_MAKE_VAR,
         f"PACKER_FLAGS={flags}", f"FORMATS={formats}"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip


def test_kill_9_in_a_vm_stage_and_in_a_chroot_stage_leaves_nothing_and_the_next_build_collects(
    built_image, tmp_path
):
    out = tmp_path / "out"
    killed = []
    host_tmp = Path(tempfile.gettempdir())
    packers = set(host_tmp.glob("packer-*"))  # Packer's crash log, its Ansible inventory, ...
    # the VM runner: Packer, its plugins, QEMU, ansible-playbook and its SSH multiplexer at work
    argv = [str(REPO / ".venv/bin/kiln"), "build", "debian-12", "--no-verify", "-var", "provisioner=vm",
            "-var", "extra_packages=jq", "-var", f"output_dir={out}", "-var", f"accelerator={_accel()}",
            "-var", "formats=qcow2"]  # fmt: skip

    def ansible_at_work(temp: Path) -> bool:
        log = temp / "build.log"
        return log.is_file() and "TASK [" in log.read_text(errors="replace")

    kiln_pid, temp, tree = _kill_9_when(argv, out, tmp_path / "vm.log", ansible_at_work, timeout=900)
    names = {_read(p, "comm").strip() for p in tree}
    assert any(n.startswith(b"qemu-system") for n in names) and b"packer" in names, names
    _nothing_left(kiln_pid, temp, tree, tmp_path)
    killed.append((kiln_pid, temp))

    # the chroot runner: Ansible in the tree, /proc, /sys, /dev mounted in its namespace
    argv = [str(REPO / ".venv/bin/kiln"), "build", "debian-12", "--no-verify",
            "-var", "provisioner=chroot", "-var", "extra_packages=jq tree", "-var", f"output_dir={out}",
            "-var", "formats=qcow2"]  # fmt: skip
    log = tmp_path / "chroot.log"
    seen: dict[str, float] = {}

    def ansible_in_the_tree(temp: Path) -> bool:
        if temp.name == Path(killed[0][1]).name:
            return False
        if "provisioning in a chroot" not in log.read_text(errors="replace"):
            return False
        seen.setdefault("at", time.monotonic())
        return bool(_mounts_anywhere(temp)) and time.monotonic() - seen["at"] > 4

    kiln_pid, temp, tree = _kill_9_when(argv, out, log, ansible_in_the_tree, timeout=600)
    _said_it_collected(log.read_text(errors="replace"), *killed[0])  # the run after the VM build's death
    # Packer's temp files were in a temp dir of the killed run's, which that run collected with the build's
    assert set(host_tmp.glob("packer-*")) <= packers, sorted(set(host_tmp.glob("packer-*")) - packers)
    assert not list(host_tmp.glob(f".kiln-packer.tmp-{killed[0][0]}-*"))
    _nothing_left(kiln_pid, temp, tree, tmp_path)

    # the next build collects the chroot build's temp dir, says so in one line, and succeeds
    assert Path(temp).exists(), "the killed build's temp dir is there to collect"
    done = _finalize_only(out)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    _said_it_collected(done.stdout, kiln_pid, temp)
    assert (out / NAME / f"{NAME}.qcow2").is_file()


def test_kill_9_while_mmdebstrap_builds_the_base_leaves_no_mount(tmp_path):
    """The bootstrap base from an empty cache of its own: kill -9 of kiln once mmdebstrap has mounted /proc,
    /sys and /dev in the base's tree. Those mounts live in mmdebstrap's own mount namespace, so they go with
    its processes, which the watchdog ends; before, they stayed in the host's until the next run."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = [str(REPO / ".venv/bin/kiln"), "build", "debian-12", "--no-verify", "-var", f"cache_dir={cache}",
            "-var", f"output_dir={out}", "-var", "formats=qcow2"]  # fmt: skip

    def mmdebstrap_mounted(temp: Path) -> bool:
        return any(m.endswith("/rootfs/proc") for m in _mounts_anywhere(cache))

    host_tmp = Path(tempfile.gettempdir())
    before = set(host_tmp.glob("mmdebstrap.*"))
    kiln_pid, temp, tree = _kill_9_when(argv, out, tmp_path / "base.log", mmdebstrap_mounted, timeout=300)
    assert b"mmdebstrap" in b" ".join(_read(p, "cmdline") for p in tree), "killed while mmdebstrap ran"
    _nothing_left(kiln_pid, temp, tree, tmp_path)
    # its temp files (gpg home, apt config) were in the base's temp dir, which the next run collects
    assert set(host_tmp.glob("mmdebstrap.*")) <= before, sorted(set(host_tmp.glob("mmdebstrap.*")) - before)
    assert list((cache / "bootstrap").glob(".*.tmp-*/tmp/mmdebstrap.*")), "in the dead run's temp dir"


def _said_it_collected(output: str, pid: int, temp: str) -> None:
    line = [x for x in output.splitlines() if "stale temp dir" in x]
    assert len(line) == 1 and re.search(r"removed \d+ stale temp dirs? left by kiln runs that died", line[0])
    assert f"{temp} (pid {pid})" in line[0], line
    assert not Path(temp).exists()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A loop-mounted ext4 filesystem as the output dir, its backing file sparse; yields (mount, image)."""
    image, mount = tmp_path / "fs.img", tmp_path / "small"
    mount.mkdir()
    yield mount, image
    subprocess.run(["umount", str(mount)], capture_output=True)


def _mkfs(image: Path, mount: Path, size: str) -> None:
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)


def _failed_cleanly(done: subprocess.CompletedProcess[str], out: Path) -> str:
    text = done.stdout + done.stderr
    assert done.returncode != 0, text[-3000:]
    assert "exited with code 1" in text or "Error 1" in text, text[-3000:]  # make reports kiln's exit 1
    assert str(out) in text and "needs about" in text, text[-3000:]
    left = sorted(p.name for p in out.iterdir() if p.name not in ("logs", "lost+found"))
    assert not left, f"left in the output dir: {left}"
    return text


def test_a_full_output_dir_is_refused_before_finalize_writes(built_image, small_fs):
    mount, image = small_fs
    _mkfs(image, mount, "200M")
    done = _finalize_only(mount)
    text = _failed_cleanly(done, mount)
    assert re.search(r"MiB free, but finalize needs about [0-9.]+ GiB there", text), text[-3000:]


def test_an_output_dir_that_fills_during_finalize_fails_clearly(built_image, small_fs, tmp_path):
    mount, image = small_fs
    _mkfs(image, mount, "12G")
    log = tmp_path / "log"
    flags = f"-var output_dir={mount} -var accelerator={_accel()} --no-verify"
    with open(log, "wb") as fh:
        child = subprocess.Popen(
            ["make", "--no-print-directory", "build-qemu-debian-12", "K8S_STANDIN=1", SITE_MAKE_VAR,
             f"PACKER_FLAGS={flags}", "FORMATS=qcow2 ova"],
            cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 600
    while "disk made from the tree" not in log.read_text(errors="replace"):
        assert child.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    st = os.statvfs(mount)  # another writer takes all but 8 MiB while qemu-img writes the qcow2
    filler = mount / "filler"
    subprocess.run(["fallocate", "-l", str(st.f_bavail * st.f_frsize - (8 << 20)), str(filler)], check=True)
    child.wait(timeout=600)
    filler.unlink()
    done = subprocess.CompletedProcess(child.args, child.returncode, log.read_text(errors="replace"), "")
    text = _failed_cleanly(done, mount)
    assert "no space left on device during finalize" in text, text[-3000:]
