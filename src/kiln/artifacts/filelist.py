"""The per-file manifest of an image's root: NAME.files.jsonl, one JSON object per path, sorted by path.

    {"path": "/etc/hostname", "type": "f", "mode": "0644", "uid": 0, "gid": 0, "size": 12, "sha256": "..."}
    {"path": "/bin", "type": "l", "mode": "0777", "uid": 0, "gid": 0, "size": 7, "target": "usr/bin"}

Types: f (regular), d (directory), l (symlink, with its target), c/b (device, with "rdev"), p (FIFO),
s (socket). Written by finalize from the tree the disk is made of (the chroot runner), read by `kiln diff`.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from kiln.core import inputs
from kiln.core.builddir import sha256_file
from kiln.core.errors import InputError

SUFFIX = ".files.jsonl"

_TYPES = {
    stat.S_IFREG: "f",
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "l",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFIFO: "p",
    stat.S_IFSOCK: "s",
}


def scan(tree: Path) -> Iterator[dict[str, object]]:
    """Every path under `tree` (not following symlinks, not crossing into other filesystems), sorted."""
    root = os.fspath(tree)
    device = os.lstat(root).st_dev

    def walk(rel: str) -> Iterator[dict[str, object]]:
        full = os.path.join(root, rel) if rel else root
        try:
            names = sorted(os.listdir(full))
        except OSError:
            return
        for name in names:
            path = os.path.join(full, name)
            st = os.lstat(path)
            kind = _TYPES.get(stat.S_IFMT(st.st_mode), "?")
            entry: dict[str, object] = {
                "path": "/" + os.path.join(rel, name),
                "type": kind,
                "mode": f"{stat.S_IMODE(st.st_mode):04o}",
                "uid": st.st_uid,
                "gid": st.st_gid,
                "size": st.st_size if kind in ("f", "l") else 0,
            }
            if kind == "f":
                entry["sha256"] = sha256_file(Path(path))
            elif kind == "l":
                entry["target"] = os.readlink(path)
            elif kind in ("c", "b"):
                entry["rdev"] = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            yield entry
            if kind == "d" and st.st_dev == device:
                yield from walk(os.path.join(rel, name))

    yield from walk("")


def write(tree: Path, out: Path) -> Path:
    """NAME.files.jsonl for `tree`, written under a temp name and renamed."""
    part = out.with_name(out.name + ".part")
    with open(part, "w", errors="surrogateescape") as fh:
        for entry in scan(tree):
            fh.write(json.dumps(entry, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n")
    os.replace(part, out)
    return out


def read(path: Path) -> dict[str, dict[str, object]]:
    """path -> entry; InputError names the file and line of anything malformed."""
    return parse(inputs.read_text(path, "file manifest", limit=1 << 30), str(path))


def parse(text: str, where: str) -> dict[str, dict[str, object]]:
    """A manifest's text (from a file or a URL `where`) as path -> entry."""
    out: dict[str, dict[str, object]] = {}
    lines = text.split("\n")  # not splitlines: U+2028 in a name
    lines = lines[:-1] if lines and lines[-1] == "" else lines
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{where}:{number}: not a JSON object: {exc}") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise InputError(f"{where}:{number}: an entry needs a 'path'")
        out[entry["path"]] = entry
    return out
