"""The stage cache's entries checked against what was stored, before a build reuses one and in `kiln cache
check`.

A disk that filled, a cache restored by a CI runner's cache action or copied between machines, a bad sector:
an entry's files are then not what the build that made it wrote. Reused as they are, they fail later with a
tool's error (zstd's "premature end", a qcow2 that Packer's guest cannot read) on every build, or worse, they
do not fail. So every entry keeps the sha256 of its files (a stage's record.json, a base disk's info.json),
and a VM runner's overlay also the digest of the parent disk it was built on. A build checks an entry before
it reuses it (0.4 s for a 450 MB tree here, once per file in a run: kiln.core.digests); one that is damaged
or cannot be used is removed, with every stage built on its disk, and made again.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.build import stages
from kiln.core import digests, tempdirs

# --- one entry ---------------------------------------------------------------------------------------------


def check(cache_dir: Path, sid: str) -> tuple[stages.Record | None, str | None]:
    """The stage entry `sid` for a build to reuse: (its record, None); (None, None) when there is none; or
    (its record, or None when unreadable; why it cannot be reused) when it is there but unusable or damaged:
    then the caller `evict`s it and makes it again."""
    if not (stages.root(cache_dir) / sid).is_dir():
        return None, None
    record, why = stages.inspect(cache_dir, sid)
    if why is None and record is not None:
        why = record_damage(cache_dir, record)
    return record, why


def record_damage(cache_dir: Path, record: stages.Record) -> str | None:
    """kiln.core.digests.damage of the stage entry `record` (its disk or tree, and the files kept with it)."""
    artifact = stages.disk(cache_dir, record.id)
    return digests.damage(artifact.parent, record.digests, [artifact.name])


def base_check(entry: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A base disk's entry (a bootstrap base, a cloud image) for a build to reuse: stages.read_base, and its
    files checked against the digests its info.json keeps (one cached before them: its disk's presence)."""
    info, why = stages.read_base(entry)
    if info is None or why is not None:
        return info, why
    kept = info.get("digests")
    kept = kept if isinstance(kept, dict) and all(isinstance(v, str) for v in kept.values()) else {}
    return info, digests.damage(entry, kept, [stages.BASE_DISK])


def keep_digests(entry: Path, info: dict[str, Any]) -> dict[str, Any]:
    """A base disk cached before info.json kept digests, given them now (the caller holds its lock): so the
    overlays built on it from now on record its digest, and its next reuse is checked."""
    if isinstance(info.get("digests"), dict):
        return info
    info = {**info, "digests": digests.entry_digests(entry, stages.BASE_INFO)}
    digests.save(entry / stages.BASE_INFO, info)
    return info


def evict_base(cache_dir: Path, key: str) -> str:
    """`evict` the base disk `key`; what went, said for a log line."""
    entry = cache_dir / stages.BASE_ROOT / key
    return f"removed{on_it(evict(cache_dir, entry, entry / stages.BASE_DISK))}"


def evict_stage(cache_dir: Path, sid: str) -> str:
    """`evict` the stage entry `sid`; what went, said for a log line."""
    return f"removed{on_it(evict(cache_dir, stages.root(cache_dir) / sid, stages.disk(cache_dir, sid)))}"


def on_it(n: int) -> str:
    return "" if n == 0 else " with the stage built on it" if n == 1 else f" with the {n} stages built on it"


def evict(cache_dir: Path, entry: Path, disk_path: Path) -> int:
    """Remove the damaged or unusable cache entry dir `entry`, whose disk is `disk_path`, and every stage
    built on that disk, at any depth (a VM runner's overlays), held by a build or not: an overlay whose
    backing disk is gone, or made again (never the same bytes), is never right again. What stands on a disk
    goes first, so an interrupted removal leaves no overlay without its parent; one that a build stores on
    the old disk meanwhile records that disk's digest, and the next build finds it made again. Each is
    moved into a temp dir of this run's first, which the next run collects if this one dies. Returns how
    many stages went with it."""
    on = stages.built_on(cache_dir, disk_path, _readable(cache_dir))
    for path in [*(stages.root(cache_dir) / r.id for r in reversed(on)), entry]:
        tempdirs.remove(path)
    return len(on)


def _readable(cache_dir: Path) -> list[stages.Record]:
    """Every stage entry's record that can be read, its parent disk there or not."""
    return [r for r in (stages.inspect(cache_dir, e.name)[0] for e in _dirs(stages.root(cache_dir))) if r]


# --- kiln cache check --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    id: str
    kind: str  # "stage" or "base"
    problem: str  # "" when whole
    removed: str = ""  # what went, for a log line ("removed", "removed with the stage built on it")


def check_cache(cache_dir: Path, *, dry_run: bool) -> tuple[list[Finding], list[Finding], list[str]]:
    """Every entry (base disks first, then stages) checked as a build checks one before reusing it: (whole
    entries, damaged or unusable ones, those skipped because a build holds their lock now). The damaged are
    removed with the stages built on their disks, unless `dry_run`; a whole stage a removal takes with it is
    not counted whole (under `dry_run` either)."""
    whole: list[Finding] = []
    bad: list[Finding] = []
    busy: list[str] = []
    doomed: set[str] = set()
    bases = cache_dir / stages.BASE_ROOT
    for entry in _dirs(bases):
        with _try_lock(bases / f"{entry.name}.lock", dry_run) as got:
            if not got:
                busy.append(entry.name)
                continue
            _, problem = base_check(entry)
            if problem is None:
                whole.append(Finding(entry.name, "base", ""))
                continue
            doomed |= _doomed(cache_dir, entry / stages.BASE_DISK)
            gone = "" if dry_run else evict_base(cache_dir, entry.name)
            bad.append(Finding(entry.name, "base", problem, gone))
    for entry in _dirs(stages.root(cache_dir)):
        if entry.name in doomed or not entry.exists():
            continue  # goes with the disk it stands on
        with _try_lock(stages.root(cache_dir) / ".locks" / f"{entry.name}.lock", dry_run) as got:
            if not got:
                busy.append(entry.name)
                continue
            _, problem = check(cache_dir, entry.name)
            if problem is None:
                whole.append(Finding(entry.name, "stage", ""))
                continue
            doomed |= _doomed(cache_dir, stages.disk(cache_dir, entry.name))
            gone = "" if dry_run else evict_stage(cache_dir, entry.name)
            bad.append(Finding(entry.name, "stage", problem, gone))
    return [f for f in whole if f.id not in doomed], bad, [b for b in busy if b not in doomed]


def _doomed(cache_dir: Path, disk_path: Path) -> set[str]:
    return {r.id for r in stages.built_on(cache_dir, disk_path, _readable(cache_dir))}


@contextlib.contextmanager
def _try_lock(path: Path, dry_run: bool) -> Iterator[bool]:
    """The entry's lock (a build holds it while it makes the entry, or checks it before reusing it), taken
    without waiting and held through the check and a removal: True, or False when a build holds it. A dry
    run creates no lock file (an entry without one is not held) and opens it read-only."""
    if dry_run and not path.exists():
        yield True
        return
    if not dry_run:
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "r" if dry_run else "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _dirs(parent: Path) -> list[Path]:
    """The finished entries under `parent` (not temp dirs, locks or lock files)."""
    if not parent.is_dir():
        return []
    return [p for p in sorted(parent.iterdir()) if p.is_dir() and not p.name.startswith(".")]
