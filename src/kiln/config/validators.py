"""The checks settings declare: each validator takes an (already type-checked) value and returns a problem
or None. The settings table (`settings.py`) names them; nothing else validates a setting's value."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# A validator takes the (already type-checked) value and returns a problem or None.
Validator = Callable[[Any], "str | None"]

_NUM = r"(?:0|[1-9][0-9]*)"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_BUILD_ID = r"[0-9A-Za-z-]+"
SEMVER_RE = re.compile(
    rf"v({_NUM})\.({_NUM})\.({_NUM})(-{_PRE_ID}(?:\.{_PRE_ID})*)?(\+{_BUILD_ID}(?:\.{_BUILD_ID})*)?\Z",
    re.ASCII,
)
SERIES_RE = re.compile(rf"v{_NUM}\.{_NUM}\Z", re.ASCII)
SHA256_RE = re.compile(r"[0-9a-f]{64}\Z", re.ASCII)
DURATION_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|ms|s|m|h))+\Z", re.ASCII)
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*\Z", re.ASCII)
HASH_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
_HEX_RE = re.compile(r"[0-9a-fA-F]+\Z", re.ASCII)


def _show(value: object) -> str:
    """A value quoted for an error message, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}... ({len(str(value))} characters)"


def unprintable(value: str) -> str | None:
    """None if every character is printable, else what the first bad one is."""
    for index, ch in enumerate(value):
        if not ch.isprintable():
            return f"character {ch!r} at position {index} is not printable"
    return None


def _one_of(*choices: str) -> Validator:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)} (got {_show(value)})"

    return check


def _semver(value: str) -> str | None:
    return (
        None
        if SEMVER_RE.match(value)
        else f"malformed semver {_show(value)} (want vMAJOR.MINOR.PATCH with ASCII digits and no leading "
        "zeros, e.g. v1.30.2)"
    )


def _series(value: str) -> str | None:
    return (
        None if SERIES_RE.match(value) else f"malformed series {_show(value)} (want vMAJOR.MINOR, e.g. v1.30)"
    )


def url_problem(value: str, schemes: tuple[str, ...] = ("http", "https", "file")) -> str | None:
    """None for a well-formed URL: a known scheme, a host (http/https), a port in range, no whitespace."""
    from urllib.parse import urlsplit

    if any(ch.isspace() for ch in value) or unprintable(value):
        return "holds whitespace or control characters"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        return f"is malformed ({exc})"
    if parts.scheme not in schemes:
        return f"has no {' / '.join(s + '://' for s in schemes)} scheme"
    if parts.scheme == "file":
        return None if parts.path.startswith("/") and not parts.netloc else "must be file:///ABSOLUTE/PATH"
    if not parts.hostname:
        return "has no host"
    host = parts.hostname
    if ":" not in host and not all(c.isalnum() or c in ".-_" for c in host):
        return f"host {host!r} is not a host name or address"
    if port is not None and not 0 < port < 65536:
        return f"has port {port} out of range"
    return None


def _url(value: str) -> str | None:
    if value.startswith("/") and not unprintable(value):
        return None
    problem = url_problem(value)
    if problem is None:
        return None
    return (
        f"not a URL {_show(value)}: {problem} (want http://HOST/..., https://, file:// or an absolute path)"
    )


def _proxy(value: str) -> str | None:
    problem = url_problem(value, ("http", "https"))
    return None if problem is None else f"not a proxy URL {_show(value)}: {problem} (want http://HOST:PORT)"


def checksum_problem(value: str) -> str | None:
    """Packer checksum forms: none, TYPE:HEX of the type's length, bare HEX (type from its length),
    file:URL."""
    if value == "none":
        return None
    if value.startswith("file:"):
        rest = value[len("file:") :]
        if not rest:
            return "file: needs a URL or path after it"
        return None if _url(rest) is None else f"file:{_show(rest)} is not a URL or absolute path"
    kind, sep, digest = value.partition(":")
    if not sep:
        kind, digest = "", value
    if not _HEX_RE.match(digest):
        return "the digest is not hexadecimal"
    if not kind:
        if len(digest) not in HASH_LENGTHS.values():
            return f"a bare digest of {len(digest)} hex digits matches no checksum type"
        return None
    if kind not in HASH_LENGTHS:
        return f"unknown checksum type {_show(kind)} (want {', '.join(HASH_LENGTHS)})"
    if len(digest) != HASH_LENGTHS[kind]:
        return f"a {kind} digest has {HASH_LENGTHS[kind]} hex digits, not {len(digest)}"
    return None


def _checksum(value: str) -> str | None:
    problem = checksum_problem(value)
    if problem is None:
        return None
    return f"malformed checksum {_show(value)}: {problem} (want TYPE:HEX, e.g. sha256:..., or file:URL)"


def _sha256(value: str) -> str | None:
    return None if SHA256_RE.match(value) else f"not a sha256 hex digest: {_show(value)}"


def _sha256_map(value: dict[str, str]) -> str | None:
    bad = [k for k, v in value.items() if not SHA256_RE.match(str(v))]
    return f"not sha256 hex digests for: {', '.join(sorted(bad))}" if bad else None


def _duration(value: str) -> str | None:
    return None if DURATION_RE.match(value) else f"malformed duration {_show(value)} (want e.g. 10s, 5m, 2h)"


def _name(value: str) -> str | None:
    return (
        None if NAME_RE.match(value) else f"malformed name {_show(value)} (lowercase letters, digits, . _ -)"
    )


def _between(minimum: int, maximum: int) -> Validator:
    def check(value: int) -> str | None:
        if value < minimum:
            return f"must be at least {minimum} (got {value})"
        if value > maximum:
            return f"must be at most {maximum} (got {_show(value)})"
        return None

    return check


_BARE_VERSION_RE = re.compile(r"v?[0-9]+\.[0-9]+(?:\.[0-9]+)?(?:[-+][0-9A-Za-z.-]+)?\Z", re.ASCII)
_IMAGE_RE = re.compile(r"[a-z0-9][a-z0-9._/:@-]*\Z", re.ASCII)


def _bare_version(value: str) -> str | None:
    return None if _BARE_VERSION_RE.match(value) else f"malformed version {_show(value)} (want e.g. 1.30.0)"


def _image_ref(value: str) -> str | None:
    return None if _IMAGE_RE.match(value) else f"malformed image reference {_show(value)}"


def _json_object(value: str) -> str | None:
    import json

    try:
        data = json.loads(value)
    except (ValueError, RecursionError):
        return f"not a JSON object: {_show(value)}"
    return None if isinstance(data, dict) else f"must be a JSON object, not {type(data).__name__}"


_FORMATS = ("qcow2", "ova", "squashfs", "iso", "netboot", "platform", "overlay")


def _formats(value: list[str]) -> str | None:
    bad = [f for f in value if f not in _FORMATS]
    return f"unknown format(s) {', '.join(map(_show, bad))} (known: {', '.join(_FORMATS)})" if bad else None


def _abs_path(value: str) -> str | None:
    return None if value.startswith("/") else f"must be an absolute path in the guest (got {_show(value)})"


_APT_WORD = re.compile(r"[A-Za-z0-9._:/~+-]+", re.ASCII)


def _apt_repo(value: str) -> str | None:
    """An apt repository: a URL, or image-builder's "URL SUITE [COMPONENT...]"."""
    words = value.split()
    if not words:
        return "is empty"
    problem = _url(words[0])
    if problem:
        return problem
    for word in words[1:]:
        if not _APT_WORD.fullmatch(word):
            return f"suite/component {word!r} is not an apt suite or component name"
    return None


def _sha256_or_url(value: str) -> str | None:
    """A sha256 hex digest, or the URL of a checksum file (image-builder's files give either; Ansible's
    get_url takes `sha256:URL`)."""
    if SHA256_RE.match(value) or _url(value) is None:
        return None
    return f"not a sha256 hex digest or the URL of a checksum file: {_show(value)}"


def _urls(value: str) -> str | None:
    """One URL, or several separated by spaces (yum's gpgkey, as image-builder's older files give it)."""
    for word in value.split() or [value]:
        problem = _url(word)
        if problem:
            return f"{_show(word)}: {problem}" if len(value.split()) > 1 else problem
    return None


_BUCKET_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{1,220}[a-z0-9])?", re.ASCII)


def bucket_problem(name: str) -> str | None:
    """GCS's bucket naming rules: 3-63 characters (222 with dots, 63 per dot-separated part), lowercase
    letters, digits, -, _ and .; starting and ending with a letter or digit; not an IP address."""
    if not _BUCKET_RE.fullmatch(name) or len(name) < 3:
        return (
            f"{_show(name)} is not a GCS bucket name (3-63 lowercase letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit)"
        )
    if "." not in name and len(name) > 63 or any(len(part) > 63 for part in name.split(".")):
        return f"{_show(name)} is too long for a GCS bucket name"
    if re.fullmatch(r"[0-9.]+", name) or name.startswith("goog") or ".." in name:
        return f"{_show(name)} is not allowed as a GCS bucket name"
    return None


def bucket_name(text: str) -> str:
    """A bucket as users write it (`gs://b`, `gs://b/`, `b`) -> `b`."""
    text = text.strip()
    if text.lower().startswith("gs://"):
        text = text[5:]
    return text.rstrip("/")


def _bucket(value: str) -> str | None:
    return bucket_problem(bucket_name(value))
