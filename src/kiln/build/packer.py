"""The Packer driver: version detection, `packer init` (>= 1.7), `packer validate`, `packer build`.

Every run goes through kiln.core.proc. The environment puts kiln's virtualenv first on PATH (Packer's ansible
provisioner runs `ansible-playbook` from there) and turns off Packer's update check. `build()` writes
Packer's whole output to a log file and shows the current stage (Packer's `==> NAME: ...` lines).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kiln.core import proc, tempdirs
from kiln.core.errors import BuildError, CommandError, InputError
from kiln.core.runtime import Runtime

MODERN = (1, 7, 0)
STAGE_RE = re.compile(r"^(?:\S+ )?==> (?P<source>[\w.-]+): (?P<stage>.*)$")
ON_ERROR = ("cleanup", "abort", "ask", "run-cleanup-provisioner")


@dataclass(frozen=True)
class PackerFlags:
    """Packer's own `packer build` flags, as image-builder users pass them in PACKER_FLAGS.

    on_error: Packer's -on-error (cleanup by default; abort keeps the failed VM's output for inspection,
    ask asks at the terminal). debug: Packer's -debug (pause before each step). timestamp_ui: Packer's
    -timestamp-ui. ask and debug talk to the terminal, so Packer then runs attached to it. (Packer's -force
    is kiln's --force: rebuild even when the build dir is up to date.)
    """

    on_error: str = "cleanup"
    debug: bool = False
    timestamp_ui: bool = False

    @property
    def interactive(self) -> bool:
        return self.on_error == "ask" or self.debug

    @property
    def keeps_output(self) -> bool:
        """A failed build leaves its work for inspection (kiln keeps the temp build dir too)."""
        return self.on_error in ("abort", "ask") or self.debug

    def check_terminal(self, dry_run: bool) -> None:
        """InputError when an interactive flag meets a stdin that is no terminal (nothing would answer)."""
        if self.interactive and not dry_run and not os.isatty(0):
            raise InputError(
                "-on-error=ask and -debug ask questions at a terminal, and stdin is not one",
                hint="use -on-error=abort to keep a failed build's work without a terminal",
            )

    def argv(self) -> list[str]:
        return (
            [f"-on-error={self.on_error}"] + ["-debug"] * self.debug + ["-timestamp-ui"] * self.timestamp_ui
        )


def version(runtime: Runtime) -> tuple[int, int, int]:
    """The installed Packer's version, e.g. (1, 6, 6). ToolMissingError names the package if absent.
    A read-only query: it runs even under --dry-run."""
    rt = runtime.live()
    key = rt.path
    if key not in _VERSIONS:
        _VERSIONS[key] = _version(rt)
    return _VERSIONS[key]


_VERSIONS: dict[str, tuple[int, int, int]] = {}  # per tool PATH: one `packer version` per process


def _version(runtime: Runtime) -> tuple[int, int, int]:
    text = proc.output(["packer", "version"], runtime=runtime)
    match = re.search(r"Packer v?(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        raise InputError(f"packer version: cannot parse its output: {text.strip()[:200]!r}")
    return (int(match.group(1)), int(match.group(2)), int(match.group(3)))


def _env_extra(debug: bool = False) -> dict[str, str]:
    """Packer's own debug log; the rest of Packer's environment comes with the Runtime."""
    return {"PACKER_LOG": "1"} if debug else {}


def needs_init(packer_version: tuple[int, int, int]) -> bool:
    return packer_version >= MODERN


def init(render_dir: Path, log_file: IO[str] | None = None, *, runtime: Runtime) -> None:
    """`packer init` (Packer >= 1.7): installs the plugins named in required_plugins. Needs the network."""
    try:
        proc.run(["packer", "init", "."], cwd=render_dir, log_file=log_file, runtime=runtime)
    except CommandError as err:
        raise BuildError(
            f"{render_dir}: packer init failed (exit {err.returncode})\n{err.output_tail.rstrip()}",
            hint="packer init downloads the qemu/vmware/ansible plugins from GitHub",
        ) from err


def validate(
    render_dir: Path, syntax_only: bool = False, only: Sequence[str] = (), *, runtime: Runtime
) -> str:
    """Run the real `packer validate` on a rendered directory; ConfigError-like BuildError on failure."""
    argv = ["packer", "validate"]
    if syntax_only:
        argv.append("-syntax-only")
    if only:
        argv.append("-only=" + ",".join(f"{b}.node" for b in only))
    argv.append(".")
    if needs_init(version(runtime)) and not syntax_only:
        init(render_dir, runtime=runtime)
    try:
        return proc.output(argv, cwd=render_dir, runtime=runtime)
    except CommandError as err:
        raise BuildError(
            f"{render_dir / 'node.pkr.hcl'}: packer validate failed\n{err.output_tail.rstrip()}"
        ) from err


def build(
    render_dir: Path,
    log_path: Path,
    only: Sequence[str] = (),
    on_stage: Callable[[str], None] | None = None,
    secret_values: Sequence[str] = (),
    *,
    flags: PackerFlags = PackerFlags(),
    runtime: Runtime,
) -> None:
    """`packer build` with its whole output in log_path and each stage passed to on_stage (default: print).

    Raises BuildError naming the log on failure; Ctrl-C stops Packer and its QEMU (process group). With an
    interactive flag (-on-error=ask, -debug) Packer runs attached to the terminal, which it needs.
    """
    flags.check_terminal(runtime.dry_run)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    show = on_stage or (lambda line: print(line, flush=True))
    started = time.monotonic()

    def on_line(line: str) -> None:
        match = STAGE_RE.match(line.strip())
        if match:
            elapsed = int(time.monotonic() - started)
            show(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {match.group('source')}: {match.group('stage')}")

    argv = ["packer", "build", "-color=false", *flags.argv()]
    if only:
        argv.append("-only=" + ",".join(f"{b}.node" for b in only))
    argv.append(".")
    with open(log_path, "a") as log_file:
        log_file.write(f"kiln: {proc.quote(argv)} (in {render_dir})\n")
        log_file.flush()
        if needs_init(version(runtime)):
            init(render_dir, log_file=log_file, runtime=runtime)
        # Packer's own temp files (its crash log, the Ansible provisioner's inventory, shell-local scripts,
        # its plugins' sockets) in a temp dir of this run's: removed after it, and collected by the next run
        # if this one is killed (kill -9 leaves them otherwise). Short, in the temp dir: sockets live there.
        own_tmp = (
            contextlib.nullcontext(None)
            if runtime.dry_run
            else tempdirs.scratch(Path(tempfile.gettempdir()), "kiln-packer")
        )
        try:
            with own_tmp as tmp:
                proc.run(
                    argv,
                    cwd=render_dir,
                    extra_env={**_env_extra(runtime.debug), **({"TMPDIR": str(tmp)} if tmp else {})},
                    log_file=log_file,
                    on_line=on_line,
                    capture=False,
                    attach=flags.interactive,
                    secret_values=secret_values,
                    runtime=runtime,
                )
        except CommandError as err:
            raise BuildError(
                f"{log_path}: packer build failed (exit {err.returncode})\n{err.output_tail.rstrip()}",
                hint=f"the whole log is {log_path}; rerun with --debug (DEBUG=1) for Packer's own log",
            ) from err
