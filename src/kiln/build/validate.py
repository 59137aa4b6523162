"""`kiln validate`: render a target with placeholder credentials, parse it with python-hcl2, then run the
real `packer validate`. Its own module so that render (templates) and packer (the driver) never import
each other."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from kiln.build import packer
from kiln.build.render import placeholder_context, render
from kiln.config import Config
from kiln.core.errors import InputError
from kiln.core.runtime import Runtime


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
    *,
    runtime: Runtime,
) -> Validated:
    """Render `config` with placeholder build credentials into work_dir, parse it with python-hcl2, then
    run the real `packer validate`. Returns the time spent in kiln and in Packer."""
    started = time.perf_counter()
    context = placeholder_context(config, work_dir / "context", runtime=runtime)
    version = packer_version or packer.version(runtime)
    rendered = render(config, context, work_dir / "rendered", version, runtime)
    parsed = parse_rendered(rendered.template)
    if "build" not in parsed or "source" not in parsed:
        raise InputError(f"{rendered.template}: rendered template has no source or build block")
    kiln_seconds = time.perf_counter() - started
    started = time.perf_counter()
    output = packer.validate(rendered.dir, syntax_only=syntax_only, runtime=runtime)
    return Validated(config.target, rendered.dir, kiln_seconds, time.perf_counter() - started, output)
