"""Disk space: the pre-flight check before a stage writes gigabytes, and the one clear error when a
filesystem fills anyway (kiln's own writes raise OSError ENOSPC; a tool it runs says "No space left on
device" or "Disk quota exceeded" in its output).

    space.check(out_dir, needed, "finalize")       # DiskFullError before anything is written
    if space.filled(exc, paths): raise space.full(paths, "finalize", needed) from exc
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

from kiln.core.errors import CommandError, DiskFullError, KilnError

_TOOL_SAYS = (
    "No space left on device",
    "Disk quota exceeded",
    "not enough space",
    "Could not allocate block",
)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def free(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `path` (or its nearest
    existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def check(path: Path, needed: int, what: str) -> None:
    """DiskFullError (exit 1) when the filesystem of `path` has less than `needed` bytes free."""
    have = free(path)
    if have < needed:
        raise DiskFullError(
            f"{path}: {human(have)} free, but {what} needs about {human(needed)} there",
            hint=f"free {human(needed - have)} or more on that filesystem, or point output_dir/cache_dir "
            "at a larger one",
        )


def is_full(exc: BaseException) -> bool:
    """`exc` says a filesystem filled: an OSError ENOSPC/EDQUOT, or a tool whose output says so."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:  # through `raise ... from` chains
        seen.add(id(cur))
        if isinstance(cur, DiskFullError):
            return False  # already said
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = ""
        if isinstance(cur, CommandError):
            text = cur.output_tail
        elif isinstance(cur, KilnError):
            text = str(cur)
        if any(s in text for s in _TOOL_SAYS):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


NEARLY_FULL = 64 << 20  # a tool that failed with this little left was most likely stopped by it


def _own_enospc(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def filled(exc: BaseException, paths: Sequence[Path]) -> bool:
    """`exc` is one of `paths` filling up: kiln's own write failed with ENOSPC, or a command failed while
    one of `paths` has almost no space left (whatever it said: qemu-img's VMDK writer says "Invalid
    argument" when a write comes up short). A tool that only says "No space left on device" while every
    path has room is not this build host's disk (a build VM's disk, a guest's apt) and stays its own error."""
    if isinstance(exc, DiskFullError):
        return False
    if _own_enospc(exc):
        return True
    if not isinstance(exc, KilnError | OSError):
        return False
    return any(free(p) < NEARLY_FULL for p in paths)


def full(paths: Sequence[Path], what: str, needed: int | None) -> DiskFullError:
    """The error for a filesystem that filled while `what` ran: names the fullest of `paths` (the output
    dir, the cache, the temp dir), its free space and the space `what` needs (when known)."""
    fullest = min(paths, key=free) if paths else Path(".")  # the low one (filled() saw it), or the fullest
    have = free(fullest)
    need = f"; {what} needs about {human(needed)} there" if needed else ""
    return DiskFullError(
        f"{fullest}: no space left on device during {what} ({human(have)} free now{need})",
        hint="free space on that filesystem, or point output_dir/cache_dir at a larger one; nothing of "
        "this build was published or cached",
    )
