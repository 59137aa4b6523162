"""Shared fixtures. `built_image`: the one debian-12 image every VM test uses, built once per session.

It runs exactly what a user runs on a fresh machine of this kind: `make build-qemu-debian-12 K8S_STANDIN=1`
(with FORMATS listing every format)
(the stand-in kubelet/kubeadm/kubectl TEST FIXTURE over local HTTP, because dl.k8s.io is unreachable),
under TCG unless KILN_TEST_ACCELERATOR says otherwise, into a per-session output directory. The base disk
cache stays in the repo's .cache/kiln so that repeated local runs reuse it.

KILN_TEST_BUILD_DIR=path reuses an existing finished build directory instead of building (local iteration).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kiln.core.builddir import BuildDir

REPO = Path(__file__).resolve().parents[1]
# the session image carries every format, so that the live-format tests boot what the suite built
ALL_FORMATS = "qcow2 ova squashfs iso netboot platform"
# the site var file layered into the shared image (tests/fixtures/site/README.md): image-builder settings
SITE_VAR_FILES = (REPO / "tests" / "fixtures" / "site" / "node.json",)
SITE_MAKE_VAR = "PACKER_VAR_FILES=" + " ".join(str(p) for p in SITE_VAR_FILES)


@dataclass(frozen=True)
class BuiltImage:
    dir: BuildDir
    output: str  # what `make` printed (the stages); empty when reused
    seconds: float

    @property
    def path(self) -> Path:
        return self.dir.path


@pytest.fixture(scope="session")
def built_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    reuse = os.environ.get("KILN_TEST_BUILD_DIR")
    if reuse:
        return BuiltImage(BuildDir.open(reuse), "", 0.0)
    out_root = tmp_path_factory.mktemp("kiln-output")
    accel = os.environ.get("KILN_TEST_ACCELERATOR", "tcg")
    flags = f"-var output_dir={out_root} -var accelerator={accel}"
    started = time.monotonic()
    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "build-qemu-debian-12",
            "K8S_STANDIN=1",
            SITE_MAKE_VAR,
            f"PACKER_FLAGS={flags}",
            f"FORMATS={ALL_FORMATS}",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        pytest.fail(f"make build-qemu-debian-12 failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}")
    dirs = [p for p in out_root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "logs"]
    assert len(dirs) == 1, f"expected one build dir in {out_root}, got {dirs}"
    print(f"\nbuilt_image: {dirs[0]} in {seconds:.0f}s")
    return BuiltImage(BuildDir.open(dirs[0]), proc.stdout, seconds)


def default_signals() -> None:
    """preexec_fn for a child that a test will signal: a suite started in the background (`cmd &`) or under
    `nohup` inherits SIGINT or SIGHUP ignored, and an ignored disposition survives exec; give both back."""
    import signal

    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def interrupt_build(
    argv: list[str],
    log: Path,
    marker: str,
    sig: int,
    *,
    wait: float,
    poll: float,
    settle: float,
    code: int = 130,
) -> None:
    """Start `kiln build` (argv) logging to `log`, send `sig` `settle` seconds after `marker` shows in the
    log, and check that it exits `code` (kiln: 130; `make`, which ends by the signal it was sent: minus
    that signal). It must still be running until the marker shows (within `wait`)."""
    with open(log, "wb") as fh:
        child = subprocess.Popen(argv, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PACKER_VAR_FILES": ""},
                                 preexec_fn=default_signals)  # fmt: skip
    try:
        deadline = time.monotonic() + wait
        while marker not in log.read_text() and time.monotonic() < deadline:
            assert child.poll() is None, log.read_text()[-3000:]
            time.sleep(poll)
        time.sleep(settle)
        child.send_signal(sig)
        assert child.wait(timeout=120) == code, log.read_text()[-3000:]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def processes_naming(text: str) -> list[str]:
    """Command lines of the live processes that name `text` (a test's temp dir) anywhere in their argv."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "status").read_text()
        except OSError:
            continue
        if text in argv and "zombie" not in state.lower():
            found.append(f"{entry.name}: {argv}")
    return found
