"""Shared fixtures. `built_image`: the one debian-12 image every VM test uses, built once per session.

It runs exactly what a user runs on a fresh machine of this kind: `make build-qemu-debian-12 K8S_STANDIN=1`
(with FORMATS listing every format)
(the stand-in kubelet/kubeadm/kubectl TEST FIXTURE over local HTTP, because dl.k8s.io is unreachable),
under TCG unless KILN_TEST_ACCELERATOR says otherwise, into a per-session output directory. The base disk
cache stays in the repo's .cache/kiln so that repeated local runs reuse it.

It starts in the background as soon as collection shows a selected test needs it; the tests that need no
VM run first, meanwhile (_SharedBuild).

KILN_TEST_BUILD_DIR=path reuses an existing finished build directory instead of building (local iteration).
"""

from __future__ import annotations

import os
import signal
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


class _SharedBuild:
    """The shared image's `make`, started in the background once collection shows that a selected test needs
    it: it builds while the tests that do not need it run (they are ordered first, see
    pytest_collection_modifyitems), so the two cores are shared instead of the build waiting for them. Its
    output goes to a file (nothing reads a pipe meanwhile); make gets SIGTERM if pytest dies (and kiln
    follows make: tests/test_signals.py)."""

    def __init__(self) -> None:
        self.make: subprocess.Popen[bytes] | None = None
        self.out_root = Path()
        self.log = Path()
        self.started = 0.0
        self.image: BuiltImage | None = None

    def start(self, out_root: Path) -> None:
        from kiln.core import proc

        accel = os.environ.get("KILN_TEST_ACCELERATOR", "tcg")
        flags = f"-var output_dir={out_root} -var accelerator={accel}"
        argv = ["make", "--no-print-directory", "build-qemu-debian-12", "K8S_STANDIN=1", SITE_MAKE_VAR,
                f"PACKER_FLAGS={flags}", f"FORMATS={ALL_FORMATS}"]  # fmt: skip
        self.out_root, self.log = out_root, out_root.parent / f"{out_root.name}.make.log"
        self.started = time.monotonic()
        with open(self.log, "wb") as log:
            self.make = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         preexec_fn=proc.parent_death_signal(signal.SIGTERM))  # fmt: skip

    def result(self) -> BuiltImage:
        if self.image is None:
            assert self.make is not None
            waited = time.monotonic()
            code = self.make.wait()
            output = self.log.read_text(errors="replace")
            seconds = time.monotonic() - self.started
            if code != 0:
                pytest.fail(f"make build-qemu-debian-12 failed (exit {code}):\n{output[-6000:]}")
            dirs = [p for p in self.out_root.iterdir() if p.is_dir() and not p.name.startswith(".")
                    and p.name != "logs"]  # fmt: skip
            assert len(dirs) == 1, f"expected one build dir in {self.out_root}, got {dirs}"
            waited = time.monotonic() - waited
            said = f"built_image: {dirs[0]} in {seconds:.0f}s; its first test waited {waited:.0f}s for it"
            with open(self.log, "a") as log:
                log.write(said + "\n")
            print(f"\n{said}")
            self.image = BuiltImage(BuildDir.open(dirs[0]), output, seconds)
        return self.image

    def stop(self) -> None:
        """A session that ends before the build does (-x, an interrupted run): the build stops with it."""
        if self.make is not None and self.make.poll() is None:
            self.make.terminate()
            try:
                self.make.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.make.kill()
                self.make.wait()


_SHARED = _SharedBuild()


def _needs_image(item: pytest.Item) -> bool:
    return "built_image" in getattr(item, "fixturenames", ())


@pytest.hookimpl(tryfirst=True)  # before plugins that drop items by position (--sw); deselection keeps order
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests without a VM first, then those on the shared image, then the other VM tests (each builds
    its own): the shared image builds in the background during the first group, and no other VM build runs
    beside it. The order within each group (a module's tests, say) stays."""
    items.sort(key=lambda item: 1 if _needs_image(item) else 2 if item.get_closest_marker("vm") else 0)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the shared image's build when the session will run a test that needs it: not for a session
    that only lists (--collect-only, --fixtures, --setup-plan) or stops at a collection error."""
    opt = session.config.option
    listing = ("collectonly", "showfixtures", "show_fixtures_per_test", "setupplan")
    if any(getattr(opt, name, False) for name in listing) or os.environ.get("KILN_TEST_BUILD_DIR"):
        return
    if session.testsfailed and not getattr(opt, "continue_on_collection_errors", False):
        return
    if any(_needs_image(item) for item in session.items):
        _SHARED.start(session.config._tmp_path_factory.mktemp("kiln-output"))  # type: ignore[attr-defined]


def pytest_sessionfinish() -> None:
    _SHARED.stop()


@pytest.fixture(scope="session")
def built_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    reuse = os.environ.get("KILN_TEST_BUILD_DIR")
    if reuse:
        return BuiltImage(BuildDir.open(reuse), "", 0.0)
    if _SHARED.make is None:  # not started at collection (a test that asks for it at run time)
        _SHARED.start(tmp_path_factory.mktemp("kiln-output"))
    return _SHARED.result()


def default_signals() -> None:
    """preexec_fn for a child that a test will signal: a suite started in the background (`cmd &`) or under
    `nohup` inherits SIGINT or SIGHUP ignored, and an ignored disposition survives exec; give both back."""
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


def processes_naming(text: str, *, chrooted: bool = False) -> list[str]:
    """Command lines of the live processes that name `text` (a test's temp dir) anywhere in their argv; with
    `chrooted`, also those whose root directory is under it (a dpkg or daemon in a chroot stage's tree)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "status").read_text()
            root = os.readlink(entry / "root") if chrooted else ""
        except OSError:
            continue
        if (text in argv or (chrooted and root.startswith(text))) and "zombie" not in state.lower():
            found.append(f"{entry.name}: {argv}")
    return found
