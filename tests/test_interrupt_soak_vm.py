"""Interrupts at moments nobody picked: real chroot-runner builds of debian-12, each with another
`extra_packages` (so that the os stage is made again), stopped by SIGINT, SIGTERM or SIGKILL at a random
moment of the build (mmdebstrap, a chroot stage, packing a tree, finalize); after each, no mount in any
mount namespace and no process under the test's directory (by command line or by root: a chrooted one),
no temp dir after a SIGINT or SIGTERM, and `kiln cache check` finds every entry whole. Then a build to the
end collects what the SIGKILLed runs left and succeeds.

`make test-soak` runs it (737 s here, its own cache: the first rounds build the base);
`KILN_SOAK_SEED` and `KILN_SOAK_ROUNDS` pick the moments and their number. Not part of `make test`."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import default_signals, processes_naming
from test_deaths_vm import _mounts_anywhere

REPO = Path(__file__).resolve().parents[1]
KILN = str(REPO / ".venv" / "bin" / "kiln")
NAME = "debian-12+kube-v1.36.1"
PACKAGES = ["jq", "tree", "less", "file", "bc", "lsof", "strace", "psmisc", "nano", "zstd"]
pytestmark = [
    pytest.mark.vm,
    pytest.mark.soak,
    pytest.mark.skipif(os.geteuid() != 0, reason="the chroot runner needs root"),
]


def _left_under(root: Path) -> list[str]:
    """Live processes that name `root` on their command line or run chrooted under it."""
    return processes_naming(str(root), chrooted=True)


def _temp_dirs(root: Path, pids: list[int]) -> list[Path]:
    """kiln's temp dirs under `root` (output dir, cache), and those of the runs `pids` in the system's."""
    host = [p for pid in pids for p in Path(tempfile.gettempdir()).glob(f".kiln-*.tmp-{pid}-*")]
    return [p for p in root.rglob(".*.tmp-*") if p.is_dir()] + host


def _build(root: Path, extra: str, log: Path) -> subprocess.Popen[bytes]:
    argv = [KILN, "build", "debian-12", "--no-verify", "--var-file", str(root / "standin.json"),
            "--var", f"cache_dir={root / 'cache'}", "--var", f"output_dir={root / 'out'}",
            "--var", "formats=qcow2", "--var", f"extra_packages={extra}"]  # fmt: skip
    with open(log, "wb") as fh:
        env = {**os.environ, "PACKER_VAR_FILES": ""}
        return subprocess.Popen(
            argv, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, preexec_fn=default_signals, env=env
        )


def _cache_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KILN, "cache", "check", "--dry-run", "--var", f"cache_dir={root / 'cache'}"],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip


def test_interrupts_at_random_moments_leave_nothing_and_the_next_build_succeeds(tmp_path: Path) -> None:
    seed = int(os.environ.get("KILN_SOAK_SEED", "11"))
    rounds = int(os.environ.get("KILN_SOAK_ROUNDS", "9"))
    rng = random.Random(seed)
    standin = [sys.executable, str(REPO / "hack" / "k8s_standin.py")]
    port = 18000 + seed % 1000
    made = subprocess.run([*standin, "vars", "--version", "v1.36.1", "--url", f"http://10.0.2.2:{port}"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    (tmp_path / "standin.json").write_text(made.stdout)
    server = subprocess.Popen([*standin, "serve", "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    problems: list[str] = []
    pids: list[int] = []  # every run's kiln: its temp dirs in the system temp dir carry its pid
    try:
        time.sleep(2)
        for i in range(rounds):
            extra = " ".join(rng.sample(PACKAGES, 2))
            sig = rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
            delay = rng.uniform(2, 140)
            log = tmp_path / f"round{i}.log"
            child = _build(tmp_path, extra, log)
            pids.append(child.pid)
            try:
                code = child.wait(timeout=delay)
                print(f"round {i}: {extra!r} ended by itself before {delay:.0f}s, exit {code}")
                assert code == 0, log.read_text()[-3000:]
                continue
            except subprocess.TimeoutExpired:
                lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
                child.send_signal(sig)
                code = child.wait(timeout=180)
            last = lines[-1][:80] if lines else ""
            print(f"round {i}: {extra!r} {sig.name} at {delay:.0f}s ({last!r}) -> {code}")
            if code != (-signal.SIGKILL if sig == signal.SIGKILL else 130):
                problems.append(f"round {i}: {sig.name}: exit {code}")
            deadline = time.monotonic() + 20  # the watchdog ends a SIGKILLed kiln's children
            while (_left_under(tmp_path) or _mounts_anywhere(tmp_path)) and time.monotonic() < deadline:
                time.sleep(0.5)
            if _left_under(tmp_path) or _mounts_anywhere(tmp_path):
                problems.append(f"round {i}: left {_left_under(tmp_path)} {_mounts_anywhere(tmp_path)}")
            if sig != signal.SIGKILL and _temp_dirs(tmp_path, pids[-1:]):
                problems.append(f"round {i}: temp dirs left {_temp_dirs(tmp_path, pids[-1:])}")
            checked = _cache_check(tmp_path)
            if checked.returncode != 0:
                problems.append(
                    f"round {i}: kiln cache check: {checked.stdout[-600:]}{checked.stderr[-600:]}"
                )
        # a build to the end: it collects the SIGKILLed runs' temp dirs and succeeds
        log = tmp_path / "final.log"
        code = _build(tmp_path, "jq tree", log).wait(timeout=1800)
        assert code == 0, log.read_text()[-4000:]
        assert (tmp_path / "out" / NAME / f"{NAME}.qcow2").is_file()
        assert not _temp_dirs(tmp_path, pids), _temp_dirs(tmp_path, pids)
        assert _cache_check(tmp_path).returncode == 0
    finally:
        server.terminate()
        server.wait()
    assert not problems, "\n".join(problems)
