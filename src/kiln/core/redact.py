"""Credentials in URLs, kept out of what kiln writes down or shows.

A proxy, mirror or download URL may carry its login (`http://alice:s3cret@proxy:3128`, `https://TOKEN@host`):
the build needs it as given, but the build log, config.json, the provenance, the SBOM and the terminal get
the URL with its user part as `***`. Build-time passwords kiln makes itself are masked by kiln.core.proc.
"""

from __future__ import annotations

import re
from typing import Any

_USERINFO = re.compile(r"(?<=://)[^/?#@\s]+@")


def line(text: str) -> str:
    """`text` with the user part of every URL in it (`scheme://USER[:PASSWORD]@`) replaced by `***`."""
    return _USERINFO.sub("***@", text) if "@" in text else text


def credentials(value: Any) -> Any:
    """A plain value (strings, list items, mapping values) with `line` applied to every string in it."""
    if isinstance(value, str):
        return line(value)
    if isinstance(value, list | tuple):
        return [credentials(v) for v in value]
    if isinstance(value, dict):
        return {k: credentials(v) for k, v in value.items()}
    return value
