"""The build as a chain of content-addressed stages, and the stage cache.

    base        the OS on a disk: kiln's bootstrap disk (cached by kiln.bootstrap), or the installer /
                cloud image (those targets install the OS inside the `os` stage's Packer run)
    os          extra_roles_before, node, containerd, cni, providers
    kubernetes  kubernetes, extra_roles_after, the package list, the in-guest goss check and sysprep
    finalize    qcow2, OVA, manifest, SBOM, verify, publish (never cached: it always runs)

A stage's ID is sha256(parent ID, stage name, the stage's layout version, the settings it reads, the
files it reads). Settings that only say where bytes come from (mirrors, proxies, the stand-in server's URL)
are left out (`Setting.location`), so changing them reuses every stage. The finished image's input hash is
the ID of `finalize`.

Cache layout (under cache_dir/stages/):

    ID/disk.qcow2      the stage's disk: a qcow2 overlay whose backing file is the parent stage's disk
    ID/record.json     stage, parent, target, inputs, size, created, last_used
    .locks/ID.lock     held while a build makes or uses ID (flock); prune never deletes a held stage
    .ID.tmp-*          a stage being written; renamed to ID only when complete (never mistaken for done)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kiln import __version__
from kiln.core.errors import InputError
from kiln.config.settings import BY_NAME

# Bump a stage's layout when kiln's code changes what that stage puts on the disk.
LAYOUT = {"base": 1, "os": 1, "kubernetes": 1, "finalize": 1}

_KUBERNETES_KEYS = {k for k in BY_NAME if k.startswith(("kubernetes_", "crictl_", "goss_"))} | {
    "extra_roles_after"
}
_FINALIZE_KEYS = {"cpus", "memory", "guest_os_type", "builder", "formats", "disk_size"}
_BASE_KEYS = {k for k in BY_NAME if k.startswith(("iso_", "cloudimg_", "bootstrap_", "boot_"))} | {
    "os_name", "os_version", "os_family", "install_method", "firmware", "disk_size",
}  # fmt: skip

# The files each stage reads (globs relative to the repo root). The templates are read by every Packer run.
FILES = {
    "base": ("bootstrap/*", "packer/http/**/*"),
    "os": (
        "ansible/playbook.yml", "ansible/ansible.cfg", "ansible/roles/node/**/*",
        "ansible/roles/containerd/**/*", "ansible/roles/cni/**/*", "ansible/roles/providers/**/*",
        "ansible/roles/extra_roles/**/*",
        "packer/templates/*", "packer/shims/*",
    ),
    "kubernetes": (
        "ansible/playbook.yml", "ansible/sysprep.yml", "ansible/ansible.cfg",
        "ansible/roles/kubernetes/**/*", "ansible/roles/extra_roles/**/*", "ansible/roles/sysprep/**/*",
        "goss/**/*", "packer/templates/*", "packer/shims/*",
    ),
    "finalize": ("goss/**/*",),
}  # fmt: skip
CACHED = ("os", "kubernetes")


def stage_settings(stage: str) -> list[str]:
    """The settings a stage reads (location settings never count)."""
    content = [s.name for s in BY_NAME.values() if not s.location]
    if stage == "base":
        return [k for k in content if k in _BASE_KEYS]
    if stage == "kubernetes":
        return [k for k in content if k in _KUBERNETES_KEYS]
    if stage == "finalize":
        return [k for k in content if k in _FINALIZE_KEYS]
    return [k for k in content if k not in _KUBERNETES_KEYS | _FINALIZE_KEYS | _BASE_KEYS]


def files_digest(repo_root: Path, patterns: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    seen: set[Path] = set()
    for pattern in patterns:
        for path in sorted(repo_root.glob(pattern)):
            if path.is_file() and path not in seen:
                seen.add(path)
                h.update(str(path.relative_to(repo_root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _extra_role_files(values: Mapping[str, Any], key: str, repo_root: Path) -> str:
    """Custom roles given as paths are inputs too: their files' content goes into the ID."""
    h = hashlib.sha256()
    for role in values.get(key) or ():
        path = Path(str(role))
        path = path if path.is_absolute() else repo_root / path
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file():
                    h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _user_goss_files(values: Mapping[str, Any], repo_root: Path) -> str:
    """The user's goss specs and vars file are inputs of the stage that runs the in-guest check."""
    h = hashlib.sha256()
    for key in ("goss_spec_dir", "goss_vars_file"):
        raw = str(values.get(key) or "")
        if not raw:
            continue
        path = Path(raw) if Path(raw).is_absolute() else repo_root / raw
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for f in files:
            if f.is_file():
                h.update(str(f).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class StageId:
    stage: str
    id: str
    parent: str
    inputs: dict[str, Any]

    @property
    def short(self) -> str:
        return self.id[:12]


def stage_ids(values: Mapping[str, Any], repo_root: Path, base_key: str = "") -> dict[str, StageId]:
    """The IDs of base, os, kubernetes and finalize for a resolved config (plain values)."""
    out: dict[str, StageId] = {}
    parent = ""
    for stage in ("base", "os", "kubernetes", "finalize"):
        inputs: dict[str, Any] = {
            "layout": LAYOUT[stage],
            "settings": {k: values.get(k) for k in stage_settings(stage)},
            "files": files_digest(repo_root, FILES[stage]),
        }
        if stage == "base" and base_key:
            inputs["bootstrap"] = base_key  # kiln.bootstrap's own key of the base disk
        if stage == "os":
            inputs["roles"] = _extra_role_files(values, "extra_roles_before", repo_root)
        if stage == "kubernetes":
            inputs["roles"] = _extra_role_files(values, "extra_roles_after", repo_root)
            inputs["user_specs"] = _user_goss_files(values, repo_root)
        if stage == "finalize":
            inputs["kiln"] = __version__
        blob = json.dumps({"parent": parent, "stage": stage, "inputs": inputs}, sort_keys=True, default=str)
        sid = hashlib.sha256(blob.encode()).hexdigest()
        out[stage] = StageId(stage, sid, parent, inputs)
        parent = sid
    return out


# --- the cache ---------------------------------------------------------------------------------------------

DISK = "disk.qcow2"
RECORD = "record.json"


@dataclass
class Record:
    id: str
    stage: str
    parent: str
    target: str
    parent_disk: str
    size: int
    created: float
    last_used: float
    inputs: dict[str, Any]


def root(cache_dir: Path) -> Path:
    return cache_dir / "stages"


def lookup(cache_dir: Path, sid: str) -> Record | None:
    """The finished cache entry `sid`, or None (a missing parent disk counts as missing)."""
    entry = root(cache_dir) / sid
    try:
        data = json.loads((entry / RECORD).read_text())
        record = Record(**data)
    except (OSError, ValueError, TypeError):
        return None
    if not (entry / DISK).is_file():
        return None
    if record.parent_disk and not Path(record.parent_disk).is_file():
        return None
    return record


def disk(cache_dir: Path, sid: str) -> Path:
    return root(cache_dir) / sid / DISK


def touch(cache_dir: Path, record: Record) -> None:
    record.last_used = time.time()
    _write_record(root(cache_dir) / record.id, record)


def _write_record(entry: Path, record: Record) -> None:
    tmp = entry / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(asdict(record), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, entry / RECORD)


@contextlib.contextmanager
def locked(cache_dir: Path, sid: str) -> Iterator[None]:
    """Hold the stage's lock: a second build making the same stage waits here, then reuses it."""
    locks = root(cache_dir) / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{sid}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _held(cache_dir: Path, sid: str) -> bool:
    path = root(cache_dir) / ".locks" / f"{sid}.lock"
    if not path.exists():
        return False
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def store(
    cache_dir: Path, sid: str, made: Path, record: Record, extra: Mapping[str, Path] | None = None
) -> Path:
    """Move the finished stage disk `made` (and copies of `extra` files: name -> path) into the cache
    atomically: a concurrent build sees the whole entry or none of it. Returns the cached disk path."""
    base = root(cache_dir)
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sid}.tmp-", dir=base))
    try:
        for name, path in (extra or {}).items():
            shutil.copyfile(path, tmp / name)
        shutil.move(str(made), tmp / DISK)
        record.size = (tmp / DISK).stat().st_size
        _write_record(tmp, record)
        os.rename(tmp, base / sid)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return base / sid / DISK


def entries(cache_dir: Path) -> list[Record]:
    base = root(cache_dir)
    if not base.is_dir():
        return []
    out = []
    for entry in sorted(base.iterdir()):
        if entry.name.startswith("."):
            continue
        record = lookup(cache_dir, entry.name)
        if record is not None:
            out.append(record)
    return out


def prune(cache_dir: Path, max_size: int | None = None, older_than_days: float | None = None) -> list[Record]:
    """Delete least recently used stages first until the cache fits `max_size` bytes and nothing is older
    than `older_than_days` (by last use). A stage held by a running build is never deleted, and a stage goes
    together with the stages built on it (their disks would lose their backing file). Stale temp entries of
    interrupted builds go too."""
    if max_size is None and older_than_days is None:
        raise InputError("cache prune: give --max-size and/or --older-than")
    base = root(cache_dir)
    for stale in base.glob(".*.tmp-*") if base.is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True)
    records = entries(cache_dir)
    children: dict[str, list[Record]] = {}
    for r in records:
        children.setdefault(r.parent, []).append(r)

    def family(r: Record) -> list[Record]:
        out = [r]
        for child in children.get(r.id, []):
            out += family(child)
        return out

    removed: list[Record] = []
    gone: set[str] = set()
    now = time.time()
    total = sum(r.size for r in records)
    for r in sorted(records, key=lambda r: r.last_used):
        if r.id in gone:
            continue
        too_old = older_than_days is not None and now - r.last_used > older_than_days * 86400
        too_big = max_size is not None and total > max_size
        if not (too_old or too_big):
            continue
        group = [x for x in family(r) if x.id not in gone]
        if any(_held(cache_dir, x.id) for x in group):
            continue
        for x in group:
            shutil.rmtree(base / x.id, ignore_errors=True)
            gone.add(x.id)
            total -= x.size
            removed.append(x)
    return removed


def parse_size(text: str) -> int:
    """'20G', '500M', '1T', '1024' (bytes) -> bytes; InputError otherwise."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (t[:-1], t[-1]) if t and t[-1] in "KMGT" else (t, "")
    if not number.isascii() or not number.isdigit():
        raise InputError(f"--max-size {text!r}: want a size such as 20G, 500M or 1T")
    return int(number) * units[unit]
