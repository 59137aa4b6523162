"""The one reader for every file a user hands kiln: var files, key files, public keys, manifests,
build-dir state. Whatever the file is, the answer is its text (or parsed JSON) or an `InputError` that
names the path and what is wrong with it; never a traceback, a hang on a FIFO, or 21 GB read from /dev/zero.

Rules: a regular file (after following symlinks), at most `limit` bytes, valid UTF-8; JSON documents also
have bounded nesting, bounded integers, no NaN/Infinity and no lone surrogates.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from kiln.core.errors import InputError

KIB = 1024
MIB = 1024 * KIB
CONFIG_LIMIT = 1 * MIB  # var files, config.json, manifests, state files
KEY_LIMIT = 64 * KIB  # service-account keys, SSH public keys
MAX_DEPTH = 64
MAX_INT_DIGITS = 30  # 10^30 is far beyond any sane setting; Python's 4300-digit limit never comes into play
SHOW = 80  # a value echoed in an error is cut to this many characters


def clip(value: object, width: int = SHOW) -> str:
    """repr() of a value, cut to `width` characters with its full length noted: errors never echo 10 MB."""
    text = repr(value)
    if len(text) <= width:
        return text
    return f"{text[: width - 3]}... ({len(str(value))} characters)"


def human(size: int) -> str:
    """The one size formatter: "512 bytes", "1.5 MB", "20 GB" (binary units; one decimal below 10)."""
    for unit, factor in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= factor:
            value = size / factor
            text = f"{value:.1f}".rstrip("0").rstrip(".") if value < 10 else f"{value:.0f}"
            return f"{text} {unit}"
    return f"{size} bytes"


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_regular(path: Path, what: str = "file") -> os.stat_result:
    """stat() `path` (following symlinks); InputError unless it is an existing regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputError(f"{path}: {what} is a dangling symlink (its target does not exist)") from None
        raise InputError(f"{path}: {what} does not exist") from None
    except OSError as exc:
        raise InputError(f"{path}: {what} cannot be opened: {exc.strerror or exc}") from None
    except ValueError as exc:  # an embedded NUL byte
        raise InputError(f"{clip(str(path))}: {what} path is not valid ({exc})") from None
    for test, kind in _KINDS:
        if test(st.st_mode):
            raise InputError(f"{path}: {what} is {kind}, not a regular file")
    return st


def read_bytes(path: str | os.PathLike[str], what: str = "file", limit: int = CONFIG_LIMIT) -> bytes:
    """The bytes of a regular file of at most `limit` bytes."""
    p = Path(path)
    st = check_regular(p, what)
    if st.st_size > limit:
        raise InputError(f"{p}: {what} is {human(st.st_size)} (limit {human(limit)})")
    try:
        # O_NONBLOCK: should the file be swapped for a FIFO between stat and open, open() does not hang
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputError(f"{p}: {what} cannot be read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise InputError(f"{p}: {what} is not a regular file")
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise InputError(f"{p}: {what} cannot be read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InputError(f"{p}: {what} is larger than {human(limit)}")
    return data


def decode(data: bytes, label: str, what: str = "file") -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        raise InputError(f"{label}: {what} is not UTF-8 (byte 0x{bad} at offset {exc.start})") from None


def read_text(path: str | os.PathLike[str], what: str = "file", limit: int = CONFIG_LIMIT) -> str:
    """The text of a regular, UTF-8 file of at most `limit` bytes."""
    return decode(read_bytes(path, what, limit), str(path), what)


def _parse_int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > MAX_INT_DIGITS:
        raise _JSONLimit(f"a {len(digits)}-digit integer (limit {MAX_INT_DIGITS} digits)")
    return int(text)


def _parse_constant(name: str) -> Any:
    raise _JSONLimit(f"{name} is not valid JSON")


class _JSONLimit(ValueError):
    pass


def loads_json(text: str, label: str, what: str = "file") -> Any:
    """json.loads with kiln's limits; InputError naming `label` and the line/column when known."""
    try:
        data = json.loads(text, parse_int=_parse_int, parse_constant=_parse_constant)
    except _JSONLimit as exc:
        raise InputError(f"{label}: {what} holds {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{label}: line {exc.lineno} column {exc.colno}: malformed JSON: {exc.msg}"
        ) from None
    except RecursionError:
        raise InputError(f"{label}: {what} is nested too deeply (limit {MAX_DEPTH} levels)") from None
    except ValueError as exc:
        raise InputError(f"{label}: malformed JSON: {clip(str(exc))}") from None
    problem = check_data(data)
    if problem:
        raise InputError(f"{label}: {what} {problem}")
    return data


def check_data(data: Any, max_depth: int = MAX_DEPTH) -> str | None:
    """Walk parsed data without recursion: None, or what is wrong (too deep, a lone surrogate, a huge int)."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, where = stack.pop()
        if depth > max_depth:
            return f"is nested too deeply (limit {max_depth} levels)"
        if isinstance(value, str):
            if _has_surrogate(value):
                return f"holds a lone UTF-16 surrogate{(' at ' + where) if where else ''}"
        elif isinstance(value, bool) or value is None or isinstance(value, float):
            continue
        elif isinstance(value, int):
            if len(str(abs(value))) > MAX_INT_DIGITS:
                return f"holds an integer of more than {MAX_INT_DIGITS} digits"
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str) and _has_surrogate(k):
                    return "holds a key with a lone UTF-16 surrogate"
                stack.append((v, depth + 1, f"{where}.{k}" if where else str(k)))
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                stack.append((v, depth + 1, f"{where}[{i}]"))
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_json(path: str | os.PathLike[str], what: str = "file", limit: int = CONFIG_LIMIT) -> Any:
    """A regular UTF-8 JSON file within kiln's limits, parsed."""
    return loads_json(read_text(path, what, limit), str(path), what)


def read_json_object(
    path: str | os.PathLike[str], what: str = "file", limit: int = CONFIG_LIMIT
) -> dict[str, Any]:
    data = read_json(path, what, limit)
    if not isinstance(data, dict):
        kind = "list" if isinstance(data, list) else type(data).__name__
        raise InputError(f"{path}: {what} must hold a JSON object, not a {kind}")
    return data


# --- output directories kiln may replace -------------------------------------------------------------------

MARKER = ".kiln-output"


def mark(directory: Path, what: str) -> None:
    """Record that kiln made `directory` (so that a later run may replace it)."""
    (directory / MARKER).write_text(f"made by kiln: {what}\n")


def check_replaceable(directory: Path, what: str = "output directory") -> None:
    """InputError unless `directory` is absent, empty, or carries kiln's marker: kiln never replaces
    or deletes what it did not make."""
    if str(directory) in ("", "."):
        raise InputError(f"{what}: an empty path is not an output directory")
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        parent = directory.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{directory}: {what} cannot be made: {parent} is not a directory") from None
        return
    except (OSError, ValueError) as exc:
        raise InputError(f"{clip(str(directory))}: {what} cannot be used ({exc})") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise InputError(
            f"{directory}: {what} exists and is not a directory kiln made; kiln will not replace it"
        )
    try:
        entries = os.listdir(directory)
    except OSError as exc:
        raise InputError(f"{directory}: {what} cannot be read: {exc.strerror or exc}") from None
    if entries and MARKER not in entries:
        raise InputError(
            f"{directory}: {what} exists and was not made by kiln (no {MARKER} marker); "
            "kiln will not replace it",
            hint="choose another directory, or remove it yourself",
        )
