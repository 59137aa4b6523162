"""The bucket layout kiln publishes, shared by upload, images and release:

gs://BUCKET/CHANNEL/VERSION/FILE      CHANNEL: release for vX.Y.Z / vX.Y.Z-N, else ci
gs://BUCKET/CHANNEL/VERSION/FILE.sha256
gs://BUCKET/index.json                every published image (kiln.release)
"""

from __future__ import annotations

import re

CHANNELS = ("ci", "release")
RELEASE_RE = re.compile(r"^v\d+\.\d+\.\d+(-\d+)?$")
INDEX = "index.json"
OBJECT_RE = re.compile(r"^(?P<channel>ci|release)/(?P<version>[^/]+)/(?P<file>[^/]+)$")


def channel_for(version: str, forced: str | None = None) -> str:
    """'release' for vX.Y.Z / vX.Y.Z-N, else 'ci'; `forced` ('ci' or 'release') wins."""
    if forced:
        return forced
    return "release" if RELEASE_RE.match(version) else "ci"


def object_name(channel: str, version: str, filename: str) -> str:
    return f"{channel}/{version}/{filename}"
