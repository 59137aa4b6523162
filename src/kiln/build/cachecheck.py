"""`kiln cache check`: every entry of the stage cache checked against the digests its record keeps (as a
build checks an entry before it reuses it: kiln.build.stages.check), and the damaged or unusable ones
removed with the stages built on their disks. For a cache restored by a CI runner's cache action or copied
between machines, before the builds that use it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kiln.build import stages


@dataclass(frozen=True)
class Finding:
    id: str
    kind: str  # "stage" or "base"
    problem: str  # "" when whole
    removed: str = ""  # what went, for a log line ("removed", "removed with the stage built on it")


def check_cache(cache_dir: Path, *, dry_run: bool) -> tuple[list[Finding], list[Finding]]:
    """(whole entries, damaged or unusable ones). The damaged are removed unless `dry_run`; an entry a build
    is making now is neither checked nor removed."""
    whole: list[Finding] = []
    bad: list[Finding] = []
    bases = cache_dir / stages.BASE_ROOT
    for entry in _dirs(bases):
        if stages.held(bases / f"{entry.name}.lock"):
            continue  # a build is making it
        problem = _base_problem(entry)
        if problem is None:
            whole.append(Finding(entry.name, "base", ""))
            continue
        gone = "" if dry_run else stages.evict_base(cache_dir, entry.name)
        bad.append(Finding(entry.name, "base", problem, gone))
    for entry in _dirs(stages.root(cache_dir)):
        if stages.held(stages.root(cache_dir) / ".locks" / f"{entry.name}.lock") or not entry.exists():
            continue  # a build is making it (or checking it, before it reuses it); or it went with another
        with stages.locked(cache_dir, entry.name):
            _, problem = stages.check(cache_dir, entry.name)
            if problem is None:
                whole.append(Finding(entry.name, "stage", ""))
                continue
            gone = "" if dry_run else "removed" + stages.on_it(
                stages.evict(cache_dir, entry, stages.disk(cache_dir, entry.name)))  # fmt: skip
            bad.append(Finding(entry.name, "stage", problem, gone))
    # a stage found whole before the parent it stands on was removed went with it
    kept = [f for f in whole if dry_run or (stages.root(cache_dir) / f.id).exists() or f.kind == "base"]
    return kept, bad


def _dirs(parent: Path) -> list[Path]:
    """The finished entries under `parent` (not temp dirs, locks or lock files)."""
    if not parent.is_dir():
        return []
    return [p for p in sorted(parent.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def _base_problem(entry: Path) -> str | None:
    try:
        info = json.loads((entry / "info.json").read_text())
    except (OSError, ValueError):
        return f"{entry / 'info.json'}: missing or unreadable"
    if not isinstance(info, dict):
        return f"{entry / 'info.json'}: not an object"
    return stages.base_damage(entry, info)
