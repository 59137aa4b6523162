"""The Packer driver: version detection, `packer init` (>= 1.7), `packer validate`, `packer build`.

Every run goes through kiln.proc. The environment puts kiln's virtualenv first on PATH (Packer's ansible
provisioner runs `ansible-playbook` from there) and turns off Packer's update check. `build()` writes
Packer's whole output to a log file and shows the current stage (Packer's `==> NAME: ...` lines).
"""

from __future__ import annotations

import functools
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from . import proc
from .config import Config
from .errors import BuildError, CommandError, InputError

MODERN = (1, 7, 0)
STAGE_RE = re.compile(r"^(?:\S+ )?==> (?P<source>[\w.-]+): (?P<stage>.*)$")


@functools.cache
def version() -> tuple[int, int, int]:
    """The installed Packer's version, e.g. (1, 6, 6). ToolMissingError names the package if absent."""
    saved, proc.DRY_RUN = proc.DRY_RUN, False  # a read-only query: run it even under --dry-run
    try:
        text = proc.output(["packer", "version"], extra_env=_env_extra())
    finally:
        proc.DRY_RUN = saved
    match = re.search(r"Packer v?(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        raise InputError(f"packer version: cannot parse its output: {text.strip()[:200]!r}")
    return (int(match.group(1)), int(match.group(2)), int(match.group(3)))


def _env_extra(debug: bool = False) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    env = {
        "PATH": f"{venv_bin}{os.pathsep}{path}" if venv_bin not in path.split(os.pathsep) else path,
        "CHECKPOINT_DISABLE": "1",
        "PACKER_NO_COLOR": "1",
    }
    if debug:
        env["PACKER_LOG"] = "1"
    return env


def needs_init(packer_version: tuple[int, int, int]) -> bool:
    return packer_version >= MODERN


def init(render_dir: Path, log_file: IO[str] | None = None) -> None:
    """`packer init` (Packer >= 1.7): installs the plugins named in required_plugins. Needs the network."""
    try:
        proc.run(["packer", "init", "."], cwd=render_dir, extra_env=_env_extra(), log_file=log_file)
    except CommandError as err:
        raise BuildError(
            f"{render_dir}: packer init failed (exit {err.returncode})\n{err.output_tail.rstrip()}",
            hint="packer init downloads the qemu/vmware/ansible plugins from GitHub",
        ) from err


def validate(render_dir: Path, syntax_only: bool = False, only: Sequence[str] = ()) -> str:
    """Run the real `packer validate` on a rendered directory; ConfigError-like BuildError on failure."""
    argv = ["packer", "validate"]
    if syntax_only:
        argv.append("-syntax-only")
    if only:
        argv.append("-only=" + ",".join(f"{b}.node" for b in only))
    argv.append(".")
    if needs_init(version()) and not syntax_only:
        init(render_dir)
    try:
        return proc.output(argv, cwd=render_dir, extra_env=_env_extra())
    except CommandError as err:
        raise BuildError(
            f"{render_dir / 'node.pkr.hcl'}: packer validate failed\n{err.output_tail.rstrip()}"
        ) from err


def build(
    render_dir: Path,
    log_path: Path,
    only: Sequence[str] = (),
    debug: bool = False,
    on_stage: Callable[[str], None] | None = None,
    secret_values: Sequence[str] = (),
) -> None:
    """`packer build` with its whole output in log_path and each stage passed to on_stage (default: print).

    Raises BuildError naming the log on failure; Ctrl-C stops Packer and its QEMU (process group).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    show = on_stage or (lambda line: print(line, flush=True))
    started = time.monotonic()

    def on_line(line: str) -> None:
        match = STAGE_RE.match(line.strip())
        if match:
            elapsed = int(time.monotonic() - started)
            show(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {match.group('source')}: {match.group('stage')}")

    argv = ["packer", "build", "-color=false", "-on-error=cleanup"]
    if only:
        argv.append("-only=" + ",".join(f"{b}.node" for b in only))
    argv.append(".")
    with open(log_path, "a") as log_file:
        log_file.write(f"kiln: {proc.quote(argv)} (in {render_dir})\n")
        log_file.flush()
        if needs_init(version()):
            init(render_dir, log_file=log_file)
        try:
            proc.run(
                argv,
                cwd=render_dir,
                extra_env=_env_extra(debug),
                log_file=log_file,
                on_line=on_line,
                capture=False,
                secret_values=secret_values,
            )
        except CommandError as err:
            raise BuildError(
                f"{log_path}: packer build failed (exit {err.returncode})\n{err.output_tail.rstrip()}",
                hint=f"the whole log is {log_path}; rerun with --debug (DEBUG=1) for Packer's own log",
            ) from err


@dataclass(frozen=True)
class Validated:
    target: str
    render_dir: Path
    kiln_seconds: float  # render + python-hcl2 parse
    packer_seconds: float
    packer_output: str


def parse_rendered(template: Path) -> dict[str, object]:
    """python-hcl2 parses the rendered template; InputError names the file and line on a syntax error."""
    import hcl2

    try:
        return dict(hcl2.loads(template.read_text()))
    except Exception as exc:  # lark's exceptions carry line/column
        line = getattr(exc, "line", "?")
        raise InputError(f"{template}:{line}: python-hcl2 cannot parse the rendered template: {exc}") from exc


def validate_target(
    config: Config,
    work_dir: Path,
    syntax_only: bool = False,
    packer_version: tuple[int, int, int] | None = None,
) -> Validated:
    """Render `config` with placeholder build credentials into work_dir, parse it with python-hcl2, then
    run the real `packer validate`. Returns the time spent in kiln and in Packer."""
    from .render import placeholder_context, render

    started = time.perf_counter()
    context = placeholder_context(config, work_dir / "context")
    rendered = render(config, context, work_dir / "rendered", packer_version or version())
    parsed = parse_rendered(rendered.template)
    if "build" not in parsed or "source" not in parsed:
        raise InputError(f"{rendered.template}: rendered template has no source or build block")
    kiln_seconds = time.perf_counter() - started
    started = time.perf_counter()
    output = validate(rendered.dir, syntax_only=syntax_only)
    return Validated(config.target, rendered.dir, kiln_seconds, time.perf_counter() - started, output)
