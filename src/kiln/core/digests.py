"""The sha256 of a cache entry's files, kept when it is stored and checked before it is reused
(kiln.build.cachecheck): once per file and run."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kiln.core import builddir

_HASHED: dict[tuple[int, ...], str] = {}  # (device, inode, size, mtime, ctime): sha256, this process's


def _sha256(path: Path) -> str:
    """builddir.sha256_file, once per file and process: a build of several Kubernetes versions, or a dry
    run before a build, checks the same base and os entries again."""
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _HASHED:
        _HASHED[key] = builddir.sha256_file(path)
    return _HASHED[key]


def file_digests(entry: Path, names: Sequence[str]) -> dict[str, str]:
    """name -> sha256 of each of `entry`'s files `names`."""
    return {name: _sha256(entry / name) for name in sorted(names)}


def entry_digests(entry: Path, record: str) -> dict[str, str]:
    """file_digests of a cache entry's files that its `record` (record.json, info.json) keeps: all but the
    record itself and temp files (dot names)."""
    names = [
        f.name for f in entry.iterdir() if f.is_file() and f.name != record and not f.name.startswith(".")
    ]
    return file_digests(entry, names)


def save(path: Path, data: Mapping[str, Any]) -> None:
    """Write an entry's record (`path`: record.json, info.json) whole or not at all: through a temp name of
    this process's, so that two writers never move each other's half-written file into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def damage(entry: Path, digests: Mapping[str, str], needed: Sequence[str] = ()) -> str | None:
    """Why the files of the cache entry `entry` are not the ones it was stored with (their sha256
    `digests`), or None. An entry stored before its record kept digests is checked for its `needed` files
    only: its record's size may count files added since. A file removed meanwhile (another build removing
    the entry) is missing, not an error."""
    try:
        for name in [*needed, *sorted(digests)]:
            if not (entry / name).is_file():
                return f"{entry / name}: missing"
        for name, digest in sorted(digests.items()):
            path = entry / name
            found = _sha256(path)
            if found != digest:
                was = f"sha256 {found[:12]}.., not {digest[:12]}..; {path.stat().st_size} bytes"
                return f"{path}: not the bytes stored ({was})"
    except FileNotFoundError as e:
        return f"{e.filename}: missing"
    return None
