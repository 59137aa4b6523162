"""Where a build's artifacts live: each kind's files in the build dir and the object names they are
published as under CHANNEL/VERSION/, and the reverse (which image a published file belongs to). The uploader,
the release index, `kiln provenance verify URL` and `kiln diff ... URL` all read this one table."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

from kiln.core.builddir import MANIFEST, BuildDir
from kiln.core.errors import InputError
from kiln.core.inputs import clip


def layout(name: str, layered: bool = False) -> dict[str, list[tuple[str, str]]]:
    """Artifact kind -> [(file in the build dir, object file name under CHANNEL/VERSION/)] for build NAME.

    Names are prefixed with NAME so that builds of several OSes for one Kubernetes version share a version
    folder without clashing; the live formats get a folder per format, as epoxy-images deploys them."""
    return {
        "ova": [(f"{name}.ova",) * 2],
        "qcow2": [(f"{name}.qcow2",) * 2],
        "packages": [(f"{name}.packages",) * 2],
        "sbom": [(f"{name}.spdx.json",) * 2],
        "provenance": [(f"{name}.intoto.jsonl",) * 2],  # the signed provenance (kiln.artifacts.provenance)
        "files": [(f"{name}.files.jsonl",) * 2],  # the root's file manifest (kiln.artifacts.filelist)
        "manifest": [(MANIFEST, f"{name}.{MANIFEST}")],
        "iso": [(f"{name}.iso", f"iso/{name}.iso")],
        "platform": [(f"{name}.platform.tgz", f"platform/{name}.platform.tgz")],
        "squashfs": [
            (f"squashfs/{n}", f"squashfs/{name}/{n}")
            for n in (
                "filesystem.squashfs",
                "filesystem.squashfs.hash",
                "filesystem.manifest",
                "filesystem.packages",
            )
        ],  # fmt: skip
        "netboot": [
            (f"netboot/{n}", f"netboot/{name}/{n}")
            for n in (
                "vmlinuz",
                "initrd",
                "boot.ipxe",
                *(_LAYERED if layered else ("filesystem.squashfs",)),
            )
        ]
        + ([("netboot/base.squashfs", SHARED_BASE)] if layered else []),
        # base + overlay: the overlay beside the image; the base once per content, outside any version
        # folder (SHARED_BASE: the uploader names it by the build's overlay.json, shared_base_object)
        "overlay": [
            (f"overlay/{n}", f"overlay/{name}/{n}")
            for n in ("overlay.squashfs", "filesystem.module", "overlay.json")
        ]
        + [("overlay/base.squashfs", SHARED_BASE)],
    }


SHARED_BASE = "{shared base}"
_LAYERED = (
    "overlay.squashfs",
    "kiln-live.cpio",
)  # a base + overlay netboot set (kiln.artifacts.layers)
BASES = "bases"  # bucket folder of the base squashfs images: bases/SHA256/base.squashfs


def shared_base_object(bd: BuildDir) -> str:
    """The object name of a build's base squashfs: by its content, so that every version built on one os
    stage (and every release of them) publishes it once."""
    info = bd.path / "overlay" / "overlay.json"
    try:
        digest = str(json.loads(info.read_text())["base"]["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{info}: no base digest to publish the base under ({err})") from None
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise InputError(f"{info}: base.sha256: not a sha256 ({clip(digest)})")
    return f"{BASES}/{digest}/base.squashfs"


KINDS = tuple(layout("NAME"))
# what release publishes beside the image when the build has it: a reader can check and compare it
# (`kiln provenance verify URL`, `kiln diff BUILD URL`)
RECORDS = ("sbom", "provenance", "files", "packages")


def files_of(bd: BuildDir, kind: str) -> list[tuple[Path, str]]:
    """(local file, object file name) for each file of an artifact kind."""
    layered = (bd.path / "netboot" / "kiln-live.cpio").is_file()
    return [(bd.path / local, obj) for local, obj in layout(bd.name, layered)[kind]]


def object_file(name: str, local: str) -> str | None:
    """The object file name (under CHANNEL/VERSION/) a file of build NAME is published as, if any (an
    artifact's .sha256 sidecar goes beside the artifact's object)."""
    pairs = [pair for layered in (False, True) for files in layout(name, layered).values() for pair in files]
    found = next((obj for rel, obj in pairs if rel == local), None)
    if found is None and local.endswith(".sha256"):
        base = next((obj for rel, obj in pairs if rel == local[: -len(".sha256")]), None)
        found = base + ".sha256" if base is not None else None
    return found


def local_file(name: str, obj: str) -> str | None:
    """The file in the build dir that object file name `obj` (under CHANNEL/VERSION/) was published from."""
    pairs = [pair for layered in (False, True) for files in layout(name, layered).values() for pair in files]
    found = next((rel for rel, o in pairs if o == obj), None)
    if found is None and obj.endswith(".sha256"):
        base = next((rel for rel, o in pairs if o == obj[: -len(".sha256")]), None)
        found = base + ".sha256" if base is not None else None
    return found


# what follows NAME in the file name of a published record or image, at the version folder's top level
_TOP = (".ova", ".qcow2", ".packages", ".spdx.json", ".intoto.jsonl", ".files.jsonl", ".packer-manifest.json",
        ".ova.sha256", ".qcow2.sha256")  # fmt: skip


def names_published(text: str) -> bool:
    """Whether a command-line word names a published image (a URL, gs://..., or a published file's name or
    path) rather than a local build directory (which wins when it exists)."""
    if "://" in text:
        return True
    return not Path(text).is_dir() and text.endswith((*_TOP, ".iso", ".platform.tgz"))


def published_image(url: str) -> tuple[str, str]:
    """(version folder URL, NAME) of the image a published file's URL belongs to: any of its top-level
    files (NAME.ova, NAME.intoto.jsonl, ...), its ISO (iso/NAME.iso) or platform tarball."""
    folder = url.rpartition("/")[0]
    if not url.startswith(("http://", "https://")):
        raise InputError(f"{clip(url)}: not an http(s) URL of a published image's file")
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    for sub, suffix in (("/iso", ".iso"), ("/platform", ".platform.tgz")):
        if folder.endswith(sub) and name.endswith(suffix):
            return folder[: -len(sub)], name[: -len(suffix)]
    for suffix in sorted(_TOP, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return folder, name[: -len(suffix)]
    raise InputError(
        f"{clip(url)}: not the URL of a published image's file",
        hint="give the URL of its NAME.ova, NAME.qcow2 or NAME.intoto.jsonl",
    )
