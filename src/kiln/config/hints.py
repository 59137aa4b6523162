"""Words for a config error: the 'did you mean' of an unknown key, and the one hint that fits the problems.

Imports: the config wing's tables (settings, imagebuilder).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from kiln.config.imagebuilder import ALIASES, IMAGE_BUILDER_IGNORED
from kiln.config.settings import BY_NAME


def suggest(key: str) -> str:
    """'did you mean': the nearest name among kiln's keys and image-builder's names for them; only when none
    is near, the nearest image-builder key kiln ignores. A weak match suggests nothing rather than the
    wrong key."""

    def nearest(names: Iterable[str]) -> str:
        best, score = "", 0.0
        for name in names:
            ratio = difflib.SequenceMatcher(None, key, name).ratio()
            if ratio > score:
                best, score = name, ratio
        return best if score >= 0.8 else ""

    best = nearest([*BY_NAME, *ALIASES])
    if best in ALIASES:
        return f" (did you mean '{best}', image-builder's name for '{ALIASES[best].name}'?)"
    if best:
        return f" (did you mean '{best}'?)"
    best = nearest(IMAGE_BUILDER_IGNORED)
    return f" (did you mean '{best}'? kiln accepts and ignores that image-builder key)" if best else ""


def hint_for(problems: list[str], target: str) -> str:
    """One hint that fits what went wrong (the first kind of problem that applies)."""
    text = "\n".join(problems)
    if "does not fit target" in text:
        return "build the target the file was written for, or drop the file from PACKER_VAR_FILES"
    if "malformed" in text or "must hold a" in text:
        return "fix the file's syntax at the line given; `kiln config TARGET --var-file FILE` checks it"
    if "not found" in text or "cannot read" in text:
        return (
            "check the paths in PACKER_VAR_FILES / --var-file (relative paths start at the current directory)"
        )
    if "unknown key" in text:
        return "docs/settings.md lists kiln's keys; docs/image-builder.md the image-builder keys kiln knows"
    if "wrong type" in text:
        return "docs/settings.md gives each key's type; -var values are converted from text"
    if "required when" in text:
        return "set the required keys, or choose another source type"
    return f"`kiln config {target}` shows where each value comes from"
