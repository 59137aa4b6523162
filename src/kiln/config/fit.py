"""Does a var file fit the target it is layered on? A var file written for another OS (a CentOS 7 file on
ubuntu-2404, a Rocky 8 file on rockylinux-9, a cloud image's file on an installer target) is refused, naming
the file, the key and the targets it fits, instead of building a chimera.

The OS file gives the target's identity (os_name, os_version, os_family, install_method); a later layer may
repeat it, and may refine a version (24.04.1 on 24.04), but not change it. image-builder's own identity keys
(distribution, distro_version, distribution_version, disk_image) are checked too, though kiln ignores them
otherwise.

Imports: the config wing's leaves (settings) and kiln.core.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# the names image-builder's files give a distribution, in kiln's spelling
_DISTRO = {"rocky": "rockylinux"}  # image-builder's `distribution` spelling of kiln's os_name
# image-builder's identity keys that kiln otherwise ignores -> the kiln key they speak for
IDENTITY_KEYS = {
    "distribution": "os_name",
    "distro_version": "os_version",
    "distribution_version": "os_version",
}


def _same_version(given: str, target: str, dotless: bool = False) -> bool:
    """24.04 and 24.04.1 fit 24.04, and with `dotless` (image-builder's distribution_version) 2404 does too;
    8 does not fit 9."""
    given, target = given.strip().lower(), target.strip().lower()
    return given == target or given.startswith(target + ".") or (dotless and given == target.replace(".", ""))


def _os_files(root: Path) -> dict[str, Mapping[str, Any]]:
    from kiln.config.settings import SHARED_FILES

    found: dict[str, Mapping[str, Any]] = {}
    for path in sorted((root / "config").glob("*.json")):
        if path.stem in SHARED_FILES:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            found[path.stem] = data
    return found


def _fits(os_files: Mapping[str, Mapping[str, Any]], want: Mapping[str, str]) -> list[str]:
    out = []
    for name, data in os_files.items():
        ok = True
        for key, value in want.items():
            have = str(data.get(key, "installer" if key == "install_method" else ""))
            ok = ok and (_same_version(value, have, dotless=True) if key == "os_version" else value == have)
        if ok:
            out.append(name)
    return out


def check_fit(
    root: Path,
    target: str,
    os_values: Mapping[str, Any],
    layer_values: Sequence[tuple[str, Mapping[str, Any]]],
    problems: list[str],
) -> None:
    """`os_values`: the target's values after its own files; `layer_values`: (label, raw data) of each var
    file and of -var, in order. Appends one problem per key that names another OS."""
    os_files: dict[str, Mapping[str, Any]] | None = None
    for label, data in layer_values:
        want: dict[str, str] = {}
        spelled: dict[str, str] = {}
        for key, value in data.items():
            kiln_key = {"distro_name": "os_name"}.get(key, IDENTITY_KEYS.get(key, key))
            if kiln_key not in ("os_name", "os_version", "os_family") or value in (None, ""):
                continue
            if not isinstance(value, str | int | float) or "{{" in str(value):
                continue  # a type error the key's own check reports; a {{user}} reference resolved later
            text = str(value).strip().lower()
            if kiln_key == "os_name":
                text = _DISTRO.get(text, text)
            want[kiln_key] = text
            spelled[kiln_key] = key
        disk_image = str(data.get("disk_image", "")).lower() == "true"
        wrong = [
            k
            for k, v in want.items()
            if not (
                _same_version(v, str(os_values[k]), dotless=spelled[k] in IDENTITY_KEYS)
                if k == "os_version"
                else v == str(os_values[k])
            )
        ]
        cloud = disk_image and os_values["install_method"] == "installer"
        if not wrong and not cloud:
            continue
        if os_files is None:
            os_files = _os_files(root)
        if cloud:
            want["install_method"] = "cloudimg"
            spelled.setdefault("install_method", "disk_image")
        fits = [t for t in _fits(os_files, want) if t != target]
        it_is = " ".join(want[k] for k in ("os_name", "os_version") if k in want) or "another OS"
        it_is += " from a cloud image" if cloud else ""
        fit = f"it fits {', '.join(fits)}" if fits else f"no kiln target builds {it_is}"
        this = f"{target} ({os_values['os_name']} {os_values['os_version']}, {os_values['install_method']})"
        for key in wrong:
            problems.append(
                f"{label}: {spelled[key]}: {data[spelled[key]]} does not fit target {this}; {fit}"
            )
        if cloud:
            problems.append(
                f"{label}: disk_image: true (a cloud image as the base) does not fit target {this}, which "
                f"installs from an ISO; {fit}"
            )
