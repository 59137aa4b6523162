"""The build as a chain of content-addressed stages, and the stage cache.

    base        the OS on a disk: kiln's bootstrap disk (cached by kiln.build.bootstrap), or the installer /
                cloud image (those targets install the OS inside the `os` stage's Packer run)
    os          extra_roles_before, node, containerd, cni, providers
    kubernetes  kubernetes, extra_roles_after, the package list, the in-guest goss check and sysprep
    finalize    qcow2, OVA, manifest, SBOM, verify, publish (never cached: it always runs)

`STAGES` is the stage table: each stage's name, layout version, how it runs, whether it is cached, what it
makes and the files it reads. The settings it reads are declared by each setting (`Setting.stage`). The
build, its dry run, the stage IDs and `kiln cache ls|prune` all read the table.

A stage's ID is sha256(parent ID, stage name, the stage's layout version, the settings it reads, the
files it reads, by content and by path relative to their root). Settings that only say where bytes come
from (mirrors, proxies, the stand-in server's URL) are left out (`Setting.location`), so changing them
reuses every stage; the same inputs in any checkout give the same IDs. The finished image's input hash is
the ID of `finalize`.

Cache layout (under cache_dir/stages/; the bootstrap base disks under cache_dir/bootstrap/, see
kiln.build.bootstrap, are listed and pruned with them):

    ID/disk.qcow2      the stage's disk: a qcow2 overlay whose backing file is the parent stage's disk
    ID/tree.tar.zst    or, for a chroot-provisioned stage, its root tree, packed (kiln.build.chroot)
    ID/record.json     stage, parent, target, inputs, size, created, last_used, the sha256 of every other
                       file of the entry and of the parent disk it stands on: a build that reuses it checks
                       them first, and one that is not what was stored is made again (kiln.build.cachecheck)
    .locks/ID.lock     held while a build makes or uses ID (flock); prune never deletes a held stage
    .ID.tmp-PID-*      a stage being written, locked by its build (kiln.core.tempdirs); renamed to ID only
                       when complete (never mistaken for done)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from kiln import __version__
from kiln.config.settings import BY_NAME, SETTINGS, STAGE_NAMES
from kiln.core import digests, tempdirs
from kiln.core.errors import InputError


@dataclass(frozen=True)
class Stage:
    """One row of the stage table: everything the build, its dry run, the stage IDs and the cache know
    about a stage comes from here (and the settings it reads from each Setting's `stage`)."""

    name: str
    layout: int  # bump when kiln's code changes what this stage puts on the disk
    # (os and kubernetes 2: a chroot stage is walled off from the host, so a tree no longer takes its name;
    # 3: a stage's ansible_mounts lists the image's file systems, and `mount -o remount` is skipped, so a
    # role that reads them, such as dev-sec's os_hardening, writes other files)
    runner: str  # how it runs: "bootstrap" (mmdebstrap, no VM), "packer" (a Packer VM), "local" (host tools)
    cached: bool  # kept in cache_dir (the base under bootstrap/, the others under stages/)
    makes: str  # what it makes, as the progress line says
    files: tuple[str, ...]  # globs under the data root whose content is an input
    user_files: tuple[str, ...] = ()  # settings naming the user's files (roles, specs) whose content counts


STAGES: tuple[Stage, ...] = (
    Stage("base", 1, "bootstrap", True, "the OS on a disk (GPT, ESP, ext4 root) from distro packages",
          ("bootstrap/*", "packer/http/**/*")),
    Stage("os", 3, "packer", True, "extra_roles_before, node, containerd, cni, providers",
          ("ansible/playbook.yml", "ansible/ansible.cfg", "ansible/library/*", "ansible/stage_plugins/**/*",
           "ansible/roles/node/**/*",
           "ansible/roles/containerd/**/*", "ansible/roles/cni/**/*", "ansible/roles/providers/**/*",
           "ansible/roles/extra_roles/**/*", "packer/templates/*", "packer/shims/*"),
          ("extra_roles_before",)),
    Stage("kubernetes", 4, "packer", True, "kubernetes, extra_roles_after, goss check, sysprep",
          ("ansible/playbook.yml", "ansible/sysprep.yml", "ansible/ansible.cfg", "ansible/library/*",
           "ansible/stage_plugins/**/*", "ansible/roles/kubernetes/**/*", "ansible/roles/extra_roles/**/*",
           "ansible/roles/sysprep/**/*", "goss/**/*", "packer/templates/*", "packer/shims/*"),
          ("extra_roles_after", "goss_spec_dir", "goss_vars_file")),
    Stage("finalize", 1, "local", False, "qcow2, OVA, sha256, manifest, SBOM, live formats, verify",
          ("goss/**/*",)),
)  # fmt: skip
BY_STAGE: dict[str, Stage] = {s.name: s for s in STAGES}
assert tuple(BY_STAGE) == STAGE_NAMES, "the stage table and the settings' stage names agree"


def stage_settings(stage: str) -> list[str]:
    """The settings a stage reads, as each setting declares it (location settings never count)."""
    return [s.name for s in SETTINGS if stage in s.stages and not s.location]


def files_digest(root: Path, patterns: tuple[str, ...]) -> str:
    """Content and paths relative to `root`: the same files in any checkout (or wheel) hash the same."""
    h = hashlib.sha256()
    seen: set[Path] = set()
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            if path.is_file() and path not in seen:
                seen.add(path)
                h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _user_path(
    key: str, item: str, root: Path, work_root: Path, roles_path: Sequence[Path] = ()
) -> Path | None:
    """Where the file or folder the user named lies. Roles resolve as Ansible resolves them (a name in
    ansible/roles/, then in each folder of ANSIBLE_ROLES_PATH, then a path from the playbook's folder or the
    work root); specs and vars files from the work root."""
    path = Path(item)
    if path.is_absolute():
        return path if path.exists() else None
    if key.startswith("extra_roles"):
        candidates = [root / "ansible" / "roles" / item, *(d / item for d in roles_path),
                      root / "ansible" / item, work_root / item]  # fmt: skip
    else:
        candidates = [work_root / item]
    return next((c for c in candidates if c.exists()), None)


def _named(values: Mapping[str, Any], key: str) -> list[str]:
    """What the user named in `key`: one path (a string) or a list of roles."""
    raw = values.get(key) or ()
    return [raw] if isinstance(raw, str) else [str(item) for item in raw]


EXTRA_ROLES = ("extra_roles_before", "extra_roles_after")


def _extra_roles(
    values: Mapping[str, Any], root: Path, work_root: Path, roles_path: Sequence[Path]
) -> list[tuple[str, str, Path | None]]:
    """(key, role as written, where kiln finds it or None) for each of the user's extra roles."""
    return [
        (key, item, _user_path(key, item, root, work_root, roles_path))
        for key in EXTRA_ROLES
        for item in _named(values, key)
    ]


def unfound_roles(
    values: Mapping[str, Any], root: Path, work_root: Path, roles_path: Sequence[Path]
) -> list[tuple[str, str]]:
    """(key, role) for each extra role kiln cannot find: its content is not part of the stage's ID (a role
    Ansible finds elsewhere, in a collection, or one that does not exist)."""
    found = _extra_roles(values, root, work_root, roles_path)
    return [(key, item) for key, item, path in found if path is None]


def roles_for_ansible(
    values: Mapping[str, Any], root: Path, work_root: Path, roles_path: Sequence[Path]
) -> dict[str, list[str]]:
    """extra_roles_before/after as Ansible is to run them: the role kiln hashed. Ansible looks for a role
    where `_user_path` does, except last: a relative path from its own working directory (Packer's render
    dir, or wherever kiln was started), not the work root. A role kiln found there is given by its absolute
    path; names and the rest stay as written."""
    out: dict[str, list[str]] = {key: [] for key in EXTRA_ROLES}
    for key, item, path in _extra_roles(values, root, work_root, roles_path):
        out[key].append(str(path) if path == work_root / item else item)
    return out


def user_files_digest(
    values: Mapping[str, Any], keys: tuple[str, ...], root: Path, work_root: Path, roles_path: Sequence[Path]
) -> str:
    """The user's roles, specs and vars files named by `keys`: their content and their paths relative to
    what was named (never absolute paths), so the same files anywhere give the same ID."""
    h = hashlib.sha256()
    for key in keys:
        for item in _named(values, key):
            h.update(f"{key}\0{item}\0".encode() if key.startswith("extra_roles") else key.encode() + b"\0")
            path = _user_path(key, item, root, work_root, roles_path)
            if path is None:
                h.update(b"(missing)\0")
                continue
            files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
            for f in files:
                rel = f.relative_to(path) if f != path else Path(f.name)
                h.update(str(rel).encode() + b"\0" + f.read_bytes() + b"\0")
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


def stage_ids(
    values: Mapping[str, Any], root: Path, work_root: Path, roles_path: Sequence[Path], base_key: str = ""
) -> dict[str, StageId]:
    """The IDs of every stage in the table for a resolved config (plain values). `root` is the data root
    (kiln's own files), `work_root` where the user's relative paths point (kiln.core.paths.work_root),
    `roles_path` where Ansible finds a role by name besides ansible/roles (Runtime.roles_path)."""
    out: dict[str, StageId] = {}
    parent = ""
    for stage in STAGES:
        inputs: dict[str, Any] = {
            "layout": stage.layout,
            "settings": {
                k: values.get(k)
                for k in stage_settings(stage.name)
                if not as_before(k, values.get(k, BY_NAME[k].default))
            },
            "files": files_digest(root, stage.files),
        }
        if stage.user_files:
            inputs["user_files"] = user_files_digest(values, stage.user_files, root, work_root, roles_path)
        if stage.name == "base" and base_key:
            inputs["bootstrap"] = base_key  # kiln.build.bootstrap's own key of the base disk
        if stage.name == "os" and not values.get("source_date_epoch"):
            inputs["stage_source_date"] = STAGE_SOURCE_DATE  # the date the stages' tools are given
        if stage.name == "kubernetes":
            unpinned = _unpinned_kubernetes_source(values)
            if unpinned:
                inputs["unpinned_source"] = unpinned
        if stage.name == "finalize":
            inputs["kiln"] = __version__
        blob = json.dumps(
            {"parent": parent, "stage": stage.name, "inputs": inputs}, sort_keys=True, default=str
        )
        sid = hashlib.sha256(blob.encode()).hexdigest()
        out[stage.name] = StageId(stage.name, sid, parent, inputs)
        parent = sid
    return out


def as_before(key: str, value: Any) -> bool:
    """A setting newer than the cached stages, at the default they were made with (Setting.new_in_ids):
    left out of the stage IDs, and of the base disk's key (kiln.build.bootstrap.BaseSpec.key)."""
    setting = BY_NAME[key]
    return setting.new_in_ids and value == setting.default


def _unpinned_kubernetes_source(values: Mapping[str, Any]) -> str:
    """With the http source and a binary whose sum kubernetes_http_sha256 does not give, the binary is only
    what the source serves (checked against the .sha256 beside it): the source then names the content and
    goes into the stage ID, as a location otherwise would not."""
    if values.get("kubernetes_source_type") != "http":
        return ""
    sums = values.get("kubernetes_http_sha256") or {}
    if all(name in sums for name in ("kubelet", "kubeadm", "kubectl")):
        return ""
    return str(values.get("kubernetes_http_source") or "")


# The date the os and kubernetes stages' tools are given (SOURCE_DATE_EPOCH: mkinitramfs's cpio, ...) and
# their trees' times are clamped to when source_date_epoch is not set: a constant, not the commit's time,
# so that a stage cached at one commit is the same bytes as one made at the next (the finished image's times
# are then clamped to source_date_epoch, by default the commit's time, which is later).
STAGE_SOURCE_DATE = 1704067200  # 2024-01-01T00:00:00Z

# --- the cache ---------------------------------------------------------------------------------------------

DISK = "disk.qcow2"
TREE = "tree.tar.zst"  # a chroot-provisioned stage keeps its root tree (kiln.build.chroot) instead of a disk
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
    digests: dict[str, str] = field(default_factory=dict)  # file name -> sha256 (entries since 2026-12-06)
    parent_digest: str = ""  # the parent disk's sha256 as its entry kept it when this one was built on it


def root(cache_dir: Path) -> Path:
    return cache_dir / "stages"


def lookup(cache_dir: Path, sid: str) -> Record | None:
    """The finished cache entry `sid`, or None (a missing parent disk counts as missing)."""
    record, why = inspect(cache_dir, sid)
    return None if why else record


def inspect(cache_dir: Path, sid: str) -> tuple[Record | None, str | None]:
    """The entry `sid`'s record (None when unreadable), and why the entry cannot be reused, or None: no
    such entry, its record unreadable, its disk or tree missing, the disk it stands on gone or made again
    since (a VM runner's overlay records its parent disk's digest: kiln.build.cachecheck)."""
    entry = root(cache_dir) / sid
    if not entry.is_dir():
        return None, f"{entry}: no such entry"
    record = _read_record(entry)
    if record is None:
        return None, f"{entry / RECORD}: missing or unreadable"
    if not ((entry / DISK).is_file() or (entry / TREE).is_file()):
        return record, f"{entry}: neither {DISK} nor {TREE}"
    if record.parent_disk and not Path(record.parent_disk).is_file():
        return record, f"{record.parent_disk}: the disk it stands on is gone"
    if record.parent_digest and recorded_digest(Path(record.parent_disk)) != record.parent_digest:
        return record, f"{record.parent_disk}: the disk it stands on was made again since"
    return record, None


def recorded_digest(disk_path: Path) -> str:
    """The sha256 the cache keeps for `disk_path` (a stage's disk in its record.json, a base disk in its
    info.json), or "" when none is kept."""
    for name in (RECORD, BASE_INFO):
        try:
            data = json.loads((disk_path.parent / name).read_text())
        except (OSError, ValueError):
            continue
        kept = data.get("digests") if isinstance(data, dict) else None
        if isinstance(kept, dict) and isinstance(kept.get(disk_path.name), str):
            return str(kept[disk_path.name])
    return ""


_FIELDS = {f.name for f in fields(Record)}


def _raw_record(entry: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((entry / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_record(entry: Path) -> Record | None:
    """The entry's record, or None; keys a later kiln adds are left out here (and kept on disk: `touch`)."""
    data = _raw_record(entry)
    try:
        record = Record(**{k: v for k, v in (data or {}).items() if k in _FIELDS})
    except TypeError:
        return None
    kept = record.digests
    if not isinstance(kept, dict) or not all(isinstance(v, str) for v in kept.values()):
        return None
    return record if isinstance(record.parent_disk, str) and isinstance(record.parent_digest, str) else None


def disk(cache_dir: Path, sid: str) -> Path:
    """The entry's artifact: its disk, or its packed tree for a chroot-provisioned stage."""
    entry = root(cache_dir) / sid
    return entry / TREE if (entry / TREE).is_file() else entry / DISK


def touch(cache_dir: Path, record: Record, *, size: int = 0, kept: Mapping[str, str] | None = None) -> None:
    """Record a use of the entry (and `size` more bytes and the digests `kept` of files added to it), on
    the record as it is on disk now, under the record's own lock: what another build wrote meanwhile, and
    keys a later kiln wrote, stay. An entry removed meanwhile (with a damaged disk it stood on) is left."""
    record.last_used = time.time()
    entry = root(cache_dir) / record.id
    (root(cache_dir) / ".locks").mkdir(parents=True, exist_ok=True)
    with open(root(cache_dir) / ".locks" / f"{record.id}.record", "w") as lock, contextlib.suppress(OSError):
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = _raw_record(entry) or asdict(record)
        data["last_used"] = record.last_used
        data["size"] = int(data.get("size") or 0) + size
        before = data.get("digests")
        data["digests"] = {**(before if isinstance(before, dict) else {}), **(kept or {})}
        digests.save(entry / RECORD, data)


def _write_record(entry: Path, record: Record) -> None:
    digests.save(entry / RECORD, asdict(record))


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


def use_lock(cache_dir: Path, record_or_stage: str, key: str) -> Path:
    """The file a build holds a shared lock on while it uses an entry (as a backing disk, or to finalize
    from): `kiln cache prune` never deletes an entry whose use lock is held."""
    if record_or_stage == "base":
        return cache_dir / BASE_ROOT / f"{key}.use"
    return root(cache_dir) / ".locks" / f"{key}.use"


def hold_shared(path: Path, stack: contextlib.ExitStack) -> None:
    """Take a shared lock on `path` until `stack` closes (several builds may use one entry at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = stack.enter_context(open(path, "a"))
    fcntl.flock(fh, fcntl.LOCK_SH)


def held(path: Path) -> bool:
    """Someone holds the flock on `path` (a running build making or using that entry)."""
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
    """Move the finished stage disk (or packed tree) `made` (and copies of `extra` files: name -> path) into
    the cache atomically: a concurrent build sees the whole entry or none of it. Returns the cached path."""
    base = root(cache_dir)
    base.mkdir(parents=True, exist_ok=True)
    owned = tempdirs.create(base, sid)
    tmp = owned.path
    try:
        for name, path in (extra or {}).items():
            shutil.copyfile(path, tmp / name)
        name = TREE if made.name == TREE else DISK
        shutil.move(str(made), tmp / name)
        record.size = (tmp / name).stat().st_size
        record.digests = digests.entry_digests(tmp, RECORD)
        _write_record(tmp, record)
        os.rename(tmp, base / sid)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        owned.release()
    return base / sid / name


BASE_ROOT = "bootstrap"  # cache_dir/bootstrap/KEY/{base.qcow2,info.json,...}: kiln.build.bootstrap's entries
BASE_DISK = "base.qcow2"
BASE_INFO = "info.json"  # a base disk's record (kiln.build.bootstrap, kiln.build.cloudimg): its digests kept


def read_base(entry: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A base disk's entry (a bootstrap base, a cloud image) as its info.json keeps it, its bytes unchecked
    (kiln.build.cachecheck.base_check checks them): (its info, None); (None, None) when there is none; or
    (its info if readable, why it cannot be used: info.json unreadable, its disk missing)."""
    if not entry.is_dir():
        return None, None
    try:
        info = json.loads((entry / BASE_INFO).read_text())
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict):
        return None, f"{entry / BASE_INFO}: missing or unreadable"
    return info, None if (entry / BASE_DISK).is_file() else f"{entry / BASE_DISK}: missing"


def entries(cache_dir: Path) -> list[Record]:
    """Every finished cache entry: the bootstrap base disks and the stages built on them."""
    return _base_entries(cache_dir) + _stage_entries(cache_dir)


def _stage_entries(cache_dir: Path) -> list[Record]:
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


def _base_entries(cache_dir: Path) -> list[Record]:
    """The bootstrap base disks as records (stage "base"); last use is info.json's mtime, which
    kiln.build.bootstrap touches on every reuse."""
    base = cache_dir / BASE_ROOT
    if not base.is_dir():
        return []
    out = []
    for entry in sorted(base.iterdir()):
        if entry.name.startswith("."):  # a base being made, or removed
            continue
        info, why = read_base(entry)
        if info is None or why:
            continue
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
        used = (entry / BASE_INFO).stat().st_mtime
        suite = str(info.get("suite", ""))
        label = str(info.get("label") or f"bootstrap {suite}".strip())
        out.append(Record(entry.name, "base", "", label, "", size, used, used, {}))
    return out


def entry_disk(cache_dir: Path, record: Record) -> Path:
    if record.stage == "base":
        return cache_dir / BASE_ROOT / record.id / BASE_DISK
    return disk(cache_dir, record.id)


def _entry_dir(cache_dir: Path, record: Record) -> Path:
    return entry_disk(cache_dir, record).parent


def _held_entry(cache_dir: Path, record: Record) -> bool:
    """A build is making the entry (its lock) or using it (its use lock)."""
    if record.stage == "base":  # kiln.build.bootstrap's lock
        making = cache_dir / BASE_ROOT / f"{record.id}.lock"
    else:
        making = root(cache_dir) / ".locks" / f"{record.id}.lock"
    return held(making) or held(use_lock(cache_dir, record.stage, record.id))


def collect_stale(cache_dir: Path, *, dry_run: bool = False) -> list[tempdirs.Stale]:
    """Temp entries (stages and base disks) whose build died, removed (kiln.core.tempdirs.collect)."""
    return [
        *tempdirs.collect(root(cache_dir), dry_run=dry_run),
        *tempdirs.collect(cache_dir / BASE_ROOT, dry_run=dry_run),
    ]


def prune(
    cache_dir: Path,
    max_size: int | None = None,
    older_than_days: float | None = None,
    *,
    dry_run: bool = False,
) -> list[Record]:
    """Delete least recently used entries first until the cache fits `max_size` bytes and nothing is older
    than `older_than_days` (by last use). An entry held by a running build is never deleted, and an entry
    goes together with the stages built on it (their disks would lose their backing file). Temp entries
    of builds that died are `collect_stale`'s (`kiln cache prune` runs both). `dry_run`: the same choice,
    returned, and nothing deleted."""
    if max_size is None and older_than_days is None:
        raise InputError("cache prune: give --max-size and/or --older-than")
    records = entries(cache_dir)

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
        group = [x for x in [r, *built_on(cache_dir, entry_disk(cache_dir, r), records)] if x.id not in gone]
        if any(_held_entry(cache_dir, x) for x in group):
            continue
        for x in reversed(group):  # what stands on a disk first: an interrupted prune leaves no orphan
            if not dry_run:  # moved aside first: an interrupt leaves a temp dir to collect, not half an entry
                tempdirs.remove(_entry_dir(cache_dir, x))
            gone.add(x.id)
            total -= x.size
            removed.append(x)
    return removed


def built_on(cache_dir: Path, disk_path: Path, records: Sequence[Record]) -> list[Record]:
    """Every entry of `records` built on `disk_path`, at any depth (a stage's disk is backed by its
    parent's: linked by path)."""
    children: dict[str, list[Record]] = {}
    for r in records:
        if r.parent_disk:
            children.setdefault(str(Path(r.parent_disk)), []).append(r)
    out: list[Record] = []
    todo = list(children.get(str(disk_path), []))
    while todo:
        r = todo.pop(0)
        if r not in out:
            out.append(r)
            todo += children.get(str(entry_disk(cache_dir, r)), [])
    return out


def parse_size(text: str) -> int:
    """'20G', '500M', '1T', '1024' (bytes) -> bytes; InputError otherwise."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (t[:-1], t[-1]) if t and t[-1] in "KMGT" else (t, "")
    if not number.isascii() or not number.isdigit():
        raise InputError(f"--max-size {text!r}: want a size such as 20G, 500M or 1T")
    return int(number) * units[unit]
