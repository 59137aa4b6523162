"""cloud-init NoCloud seeds: an ISO9660 volume labelled `cidata` holding user-data, meta-data and,
optionally, network-config. Written with pycdlib (pure Python, no root, no xorriso)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import pycdlib

SEED_FILES = ("user-data", "meta-data", "network-config", "vendor-data")


def write_iso(path: str | os.PathLike[str], files: Mapping[str, str | bytes], label: str = "cidata") -> Path:
    """Write `files` (name -> content) into an ISO at `path`, atomically (temp file, then rename)."""
    out = Path(path)
    iso = pycdlib.PyCdlib()
    # Joliet and Rock Ridge carry the real lower-case names with dashes that cloud-init looks for.
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=label)
    try:
        for index, (name, content) in enumerate(sorted(files.items())):
            data = content.encode() if isinstance(content, str) else content
            iso_name = f"/F{index:07d}.;1"  # ISO9660 level-3 8.3 name; readers use Joliet/RR names
            iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path=f"/{name}")
        tmp = out.with_name(f".{out.name}.tmp")
        out.parent.mkdir(parents=True, exist_ok=True)
        iso.write(str(tmp))
    finally:
        iso.close()
    os.replace(tmp, out)
    return out
