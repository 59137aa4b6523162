"""`kiln diff A B`: what differs between two builds.

    packages   added, removed and changed (NAME.packages: name TAB version)
    files      added, removed and changed paths in the root, and which of type, mode, owner, size, content
               or link target changed (NAME.files.jsonl, kiln.artifacts.filelist)
    config     each setting whose value differs, with each side's value and origin (config.json)
    artifacts  the sha256 of each artifact both builds have (qcow2, OVA, ISO, ...: NAME.EXT.sha256)

Either side can be a published image instead (`published`: the URL of any of its files): its config,
package set and artifact digests come from its provenance (NAME.intoto.jsonl, which release publishes),
its file manifest from NAME.files.jsonl beside it.

Artifacts are matched by kind (what follows the build's name), so builds of two Kubernetes versions
compare. A section one side cannot answer (a VM-runner build has no file manifest) says so and counts as
no difference. `equal()` is what the exit code says: 0 equal, 1 different.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.artifacts import filelist
from kiln.config.settings import SETTINGS
from kiln.core import inputs
from kiln.core.builddir import CONFIG, BuildDir
from kiln.core.errors import InputError

log = logging.getLogger(__name__)

# where and how a build ran, not what it makes (the settings in no stage ID: output_dir, mirrors, proxies,
# download URLs, whose content the checksums pin): shown, not counted as a difference
WHERE = frozenset(s.name for s in SETTINGS if s.location)
_FILE_FIELDS = ("type", "mode", "uid", "gid", "size", "sha256", "target", "rdev")


def packages(build: BuildDir) -> dict[str, str] | None:
    path = build.path / f"{build.name}.packages"
    return read_packages(path) if path.is_file() else None


# cloud-init's NoCloud reads a seed from a URL on the kernel command line (`ds=NAME;s=URL`) under the name
# nocloud-net before 24.1; 24.1's nocloud reads both local and remote seeds and deprecates nocloud-net,
# which `cloud-init status` then reports as a recoverable error (exit 2)
NOCLOUD_BOTH = (24, 1)


def seed_datasource(build: BuildDir) -> str:
    """The datasource name for a NoCloud seed served over HTTP to `build`'s image, from its cloud-init's
    version; nocloud-net, which every cloud-init reads, where the package list does not say (none, or one
    kiln cannot read: a warning)."""
    try:
        found = (packages(build) or {}).get("cloud-init", "")
    except InputError as err:
        log.warning("%s; the seed's datasource is nocloud-net, which every cloud-init reads", err.message)
        found = ""
    match = re.match(r"(?:\d+:)?(\d+)\.(\d+)", found)
    if match and (int(match[1]), int(match[2])) >= NOCLOUD_BOTH:
        return "nocloud"
    return "nocloud-net"


def read_packages(path: Path) -> dict[str, str]:
    """NAME.packages: name TAB version per line."""
    out = {}
    for number, line in enumerate(inputs.read_text(path, "package list").splitlines(), 1):
        if not line.strip():
            continue
        name, sep, version = line.partition("\t")
        if not sep:
            raise InputError(f"{path}:{number}: want NAME<TAB>VERSION, got {inputs.clip(line)}")
        out[name] = version
    return out


def config(build: BuildDir) -> dict[str, dict[str, Any]]:
    path = build.path / CONFIG
    if not path.is_file():
        return {}
    raw = inputs.read_json_object(path, "build config")
    return {
        k: (v if isinstance(v, dict) and "value" in v else {"value": v, "origin": ""}) for k, v in raw.items()
    }


def artifacts(build: BuildDir) -> dict[str, str]:
    """kind -> sha256 (kind: the file name after the build's name, '.qcow2'), from the provenance's subjects
    (what a published image is compared by, too), else from the sha256 sidecars."""
    from kiln.artifacts import provenance

    envelope = build.path / f"{build.name}{provenance.SUFFIX}"
    if envelope.is_file():
        _, stmt, _ = provenance.read(envelope)
        return {_kind(rel, build.name): d for rel, d in provenance.subjects(stmt, str(envelope))}
    out = {}
    for sidecar in sorted(build.path.glob(f"{build.name}*.sha256")):
        kind = sidecar.name[len(build.name) : -len(".sha256")]
        digest = inputs.read_text(sidecar, "sha256 file").split()
        if digest:
            out[kind] = digest[0]
    return out


def _kind(rel: str, name: str) -> str:
    return rel[len(name) :] if rel.startswith(name + ".") else rel


@dataclass
class Side:
    """What one side of a comparison says about its image; None: that side cannot answer the section."""

    label: str
    packages: dict[str, str] | None
    files: dict[str, dict[str, Any]] | None
    files_source: str  # where the file manifest is (or would be), for "not compared" lines
    config: dict[str, dict[str, Any]]
    artifacts: dict[str, str]


def local(build: BuildDir) -> Side:
    listing = build.path / f"{build.name}{filelist.SUFFIX}"
    return Side(
        str(build.path),
        packages(build),
        filelist.read(listing) if listing.is_file() else None,
        str(listing),
        config(build),
        artifacts(build),
    )


def published(url: str, say: Any = None) -> Side:
    """A published image, from the URL of any of its files: its provenance's resolved config, package set
    (purls) and subjects' digests, and the file manifest published beside it."""
    from kiln.artifacts import layout, provenance
    from kiln.core import fetch

    folder, name = layout.published_image(url)
    where = f"{folder}/{urllib.parse.quote(name)}{provenance.SUFFIX}"
    raw = fetch.fetch(where)
    if raw is None:
        raise InputError(f"{where}: not published; kiln diff reads a published image's provenance",
                         hint="`kiln release` publishes NAME.intoto.jsonl beside each image")  # fmt: skip
    _, stmt, _ = provenance.parse(raw.decode("utf-8", "replace"), where)
    build_def = (stmt.get("predicate") or {}).get("buildDefinition") or {}
    values = (build_def.get("externalParameters") or {}).get("config")
    if not isinstance(values, dict):
        raise InputError(f"{where}: no resolved config in the provenance (externalParameters.config)")
    pkgs: dict[str, str] = {}
    for dep in build_def.get("resolvedDependencies") or []:
        uri = dep.get("uri", "") if isinstance(dep, dict) else ""
        if uri.startswith("pkg:deb/"):
            pkg, _, version = uri.split("?", 1)[0].rpartition("/")[2].partition("@")
            pkgs[pkg] = urllib.parse.unquote(version)
    arts = {}
    for rel, digest in provenance.subjects(stmt, where):
        arts[_kind(rel, name)] = digest
    listing_url = f"{folder}/{urllib.parse.quote(name)}{filelist.SUFFIX}"
    text = fetch.fetch(listing_url)
    files = None
    if text is not None:
        import hashlib

        got, want = hashlib.sha256(text).hexdigest(), arts.get(filelist.SUFFIX)
        if got != want:  # the manifest must be the one the provenance names
            raise InputError(
                f"{listing_url}: sha256 {got}, but the provenance says {want or '(not a subject)'}"
            )
        files = filelist.parse(text.decode("utf-8", "replace"), listing_url)
    return Side(
        f"{folder}/{name}",
        pkgs,
        files,
        listing_url,
        {k: {"value": v, "origin": "provenance"} for k, v in values.items()},
        arts,
    )


def _dict_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {
        "added": {k: b[k] for k in sorted(b.keys() - a.keys())},
        "removed": {k: a[k] for k in sorted(a.keys() - b.keys())},
        "changed": {k: [a[k], b[k]] for k in sorted(a.keys() & b.keys()) if a[k] != b[k]},
    }


def diff(a: Side, b: Side) -> dict[str, Any]:
    out: dict[str, Any] = {"a": a.label, "b": b.label}
    pa, pb = a.packages, b.packages
    out["packages"] = _dict_diff(pa, pb) if pa is not None and pb is not None else {"unavailable": True}
    fa, fb = a.files, b.files
    if fa is not None and fb is not None:
        changed = {}
        for path in sorted(fa.keys() & fb.keys()):
            fields = [f for f in _FILE_FIELDS if fa[path].get(f) != fb[path].get(f)]
            if fields:
                changed[path] = fields
        out["files"] = {
            "added": sorted(fb.keys() - fa.keys()),
            "removed": sorted(fa.keys() - fb.keys()),
            "changed": changed,
        }
    else:
        missing = [s.files_source for s in (a, b) if s.files is None]
        out["files"] = {"unavailable": True, "missing": missing}
    ca, cb = a.config, b.config
    differing = [
        key
        for key in sorted(ca.keys() | cb.keys())
        if (ca.get(key) or {}).get("value") != (cb.get(key) or {}).get("value")
    ]
    out["config"] = {k: {"a": ca.get(k), "b": cb.get(k)} for k in differing if k not in WHERE}
    out["config_where"] = {k: {"a": ca.get(k), "b": cb.get(k)} for k in differing if k in WHERE}
    aa, ab = a.artifacts, b.artifacts
    out["artifacts"] = {
        kind: {"a": aa.get(kind), "b": ab.get(kind), "equal": aa.get(kind) == ab.get(kind)}
        for kind in sorted(aa.keys() | ab.keys())
    }
    return out


def equal(result: dict[str, Any]) -> bool:
    for section in ("packages", "files"):
        part = result[section]
        if not part.get("unavailable") and any(part[k] for k in ("added", "removed", "changed")):
            return False
    return not result["config"] and all(v["equal"] for v in result["artifacts"].values())


def render(result: dict[str, Any], limit: int = 40) -> str:
    """The human form: one section per kind of difference, at most `limit` lines each."""
    lines = [f"a: {result['a']}", f"b: {result['b']}"]

    def section(title: str, items: list[str]) -> None:
        lines.append(f"{title}: {len(items) or 'no'} difference{'s' if len(items) != 1 else ''}")
        lines.extend(f"  {item}" for item in items[:limit])
        if len(items) > limit:
            lines.append(f"  ... {len(items) - limit} more (--json shows all)")

    p = result["packages"]
    if p.get("unavailable"):
        lines.append("packages: not compared (a package list is missing)")
    else:
        section(
            "packages",
            [f"+ {k} {v}" for k, v in p["added"].items()]
            + [f"- {k} {v}" for k, v in p["removed"].items()]
            + [f"~ {k} {va} -> {vb}" for k, (va, vb) in p["changed"].items()],
        )
    f = result["files"]
    if f.get("unavailable"):
        lines.append(f"files: not compared (no file manifest: {', '.join(f['missing'])})")
    else:
        section(
            "files",
            [f"+ {x}" for x in f["added"]]
            + [f"- {x}" for x in f["removed"]]
            + [f"~ {x} ({', '.join(fields)})" for x, fields in f["changed"].items()],
        )

    def shown(side: dict[str, Any] | None) -> str:
        if side is None:
            return "(unset)"
        origin = f" [{side.get('origin')}]" if side.get("origin") else ""
        return f"{inputs.clip(str(side.get('value')))}{origin}"

    section("config", [f"~ {k}: {shown(v['a'])} -> {shown(v['b'])}" for k, v in result["config"].items()])
    where = result.get("config_where") or {}
    if where:
        lines.append(f"where it was built ({len(where)}, not counted: output dir, mirrors, URLs, ...):")
        lines.extend(f"  ~ {k}: {shown(v['a'])} -> {shown(v['b'])}" for k, v in list(where.items())[:limit])
    section(
        "artifacts",
        [
            f"~ {kind}: {(v['a'] or '(none)')[:16]} -> {(v['b'] or '(none)')[:16]}"
            for kind, v in result["artifacts"].items()
            if not v["equal"]
        ],
    )
    lines.append("equal" if equal(result) else "different")
    return "\n".join(lines)
