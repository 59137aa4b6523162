"""Your own goss specs and vars (goss_spec_dir, goss_vars_file, goss_vars_inline): where they are, and how
their vars layer with kiln's. Used by the build phase in a tree (kiln.goss.treephase), on a host
(kiln.goss.verify) and by `kiln goss render`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.core import inputs, paths
from kiln.core.errors import InputError
from kiln.goss import specs as goss

log = logging.getLogger(__name__)


def user_path(raw: str, root: Path) -> Path:
    """A user's goss location, relative to the checkout (or, for an installed wheel, the current dir)."""
    path = Path(raw)
    return path if path.is_absolute() else paths.work_root(root, Path.cwd()) / path


def user_vars(
    values: Mapping[str, Any], root: Path, kiln_vars: Mapping[str, Any], *, say: bool = False
) -> dict[str, Any]:
    """kiln's vars with the user's: goss_vars_file's under them, as defaults (image-builder's goss-vars.yaml
    gives `containerd_version: ""` and the like, which Packer's inline vars override), goss_vars_inline's over
    them, as goss --vars-inline (InputError names the file). With `say`, the log names the file's keys
    whose values lost (the build's preflight says it once)."""
    out: dict[str, Any] = {}
    raw = str(values.get("goss_vars_file") or "")
    if raw:
        out.update(goss.read_vars_file(user_path(raw, root), "goss_vars_file"))
        shadowed = sorted(k for k in out if k in kiln_vars and out[k] != kiln_vars[k])
        if shadowed:
            (log.info if say else log.debug)(
                "goss_vars_file %s: the build's own %s win (goss_vars_inline wins over both)", raw, shadowed
            )
    out.update(kiln_vars)
    inline = values.get("goss_vars_inline") or ""
    if isinstance(inline, Mapping):
        out.update(inline)
    elif inline:
        data = inputs.loads_json(str(inline), "goss_vars_inline", "value")
        if not isinstance(data, dict):
            raise InputError("goss_vars_inline: must be a JSON object")
        out.update(data)
    return out


def user_spec(values: Mapping[str, Any], phase: str, root: Path) -> Path | None:
    """The user's entry gossfile for `phase` in goss_spec_dir, or None."""
    raw = str(values.get("goss_spec_dir") or "")
    if not raw:
        return None
    folder = user_path(raw, root)
    names = ["goss.yaml"] if phase == "build" else ["goss-final.yaml", "goss.yaml"]
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise InputError(f"{folder}: goss_spec_dir has no {' or '.join(names)}")


@dataclass
class PhaseSpecs:
    """One phase's specs as every check reads them: kiln's entry (validated), the user's resources (from
    their entry for the phase, if any), both rendered with the same vars."""

    spec: goss.Spec
    theirs: list[goss.Resource]
    user_entry: Path | None
    vars: dict[str, Any]


def load_phase(
    values: Mapping[str, Any],
    phase: str,
    *,
    spec_dir: Path,
    root: Path,
    extra_vars: Mapping[str, Any] | None = None,
    say: bool = False,
) -> PhaseSpecs:
    """kiln's vars for `phase` (with `extra_vars`), the user's layered on them (user_vars, `say` as there),
    kiln's entry and the user's loaded with them: GossSpecError or InputError names the file and line."""
    kiln_vars = goss.render_vars(values, {"phase": phase, **(extra_vars or {})}, spec_dir=spec_dir)
    vars_ = user_vars(values, root, kiln_vars, say=say)
    spec = goss.load_spec(spec_dir / goss.ENTRY[phase], vars_)
    entry = user_spec(values, phase, root)
    theirs = goss.load_spec(entry, vars_).resources if entry is not None else []
    return PhaseSpecs(spec, theirs, entry, vars_)
