"""An SPDX 2.3 SBOM (JSON) per image: NAME.spdx.json, written by the finalize stage.

It lists every package installed in the image with its version and purl, read from the image's package
database (`dpkg-query` / `rpm -qa` in the build VM, the same list as NAME.packages), plus the Kubernetes
node binaries (kubelet, kubeadm, kubectl), containerd and the CNI plugins with their version, their sha256
where kiln verified one, and where they came from. `spdx-tools` (pyspdxtools) validates the result in the
tests; the document is plain data written here so that a build needs no extra library.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

from kiln import __version__
from kiln.config.typed import Settings
from kiln.core import redact

_SAFE = re.compile(r"[^A-Za-z0-9.-]+")
# SPDX's download-location grammar takes a host name with a domain and no port; anything else (a lab mirror
# at 10.0.2.2:8088, the stand-in server) goes into sourceInfo, with downloadLocation NOASSERTION.
_SPDX_URL = re.compile(r"^(https?|ftps?)://[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(/\S*)?$")


def _spdx_id(kind: str, name: str) -> str:
    return f"SPDXRef-{kind}-{_SAFE.sub('-', name)}"


def read_packages(path: Path) -> list[tuple[str, str]]:
    """NAME.packages: `name<TAB>version` per line."""
    out = []
    for line in path.read_text().splitlines():
        name, _, version = line.partition("\t")
        if name.strip():
            out.append((name.strip(), version.strip()))
    return out


def _package(
    spdx_id: str,
    name: str,
    version: str,
    purl: str | None,
    source: str,
    sha256: str | None,
    comment: str = "",
) -> dict[str, Any]:
    source = redact.line(source)  # a token in a download URL is not for the published SBOM
    sha256 = redact.line(sha256) if sha256 else sha256  # (nor in the URL of the sum file checked against)
    location = source if source and _SPDX_URL.match(source) else "NOASSERTION"
    pkg: dict[str, Any] = {
        "SPDXID": spdx_id,
        "name": name,
        "versionInfo": version or "NOASSERTION",
        "downloadLocation": location,
        "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "supplier": "NOASSERTION",
    }
    if purl:
        pkg["externalRefs"] = [
            {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl}
        ]
    if sha256 and re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        pkg["checksums"] = [{"algorithm": "SHA256", "checksumValue": sha256.lower()}]
    elif sha256:  # the URL of the checksum file it was checked against: not a digest, so a comment
        pkg["comment"] = f"{pkg.get('comment', '')} (sha256 checked against {sha256})".strip()
    if comment:
        pkg["comment"] = comment
    if source and source != "NOASSERTION":
        pkg["sourceInfo"] = f"downloaded from {source}"
    return pkg


def document(
    name: str, s: Settings, packages: list[tuple[str, str]], created: float | None = None
) -> dict[str, Any]:
    """The SPDX document of image `name` built with settings `s` (the resolved config) with `packages`."""
    debian = s.os_family == "debian"
    distro = s.os_name
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created if created is not None else time.time()))
    image_id = "SPDXRef-Image"
    pkgs: list[dict[str, Any]] = [
        _package(
            image_id,
            name,
            s.kubernetes_semver,
            None,
            "NOASSERTION",
            None,
            f"Kubernetes node image built by kiln {__version__}",
        )
    ]
    by_name = dict(packages)
    seen: set[str] = set()
    for pkg_name, version in packages:
        kind = "deb" if debian else "rpm"
        purl = f"pkg:{kind}/{distro}/{pkg_name}@{version}?arch=amd64"
        sid = _spdx_id("Package", pkg_name)
        while sid in seen:
            sid += "-x"
        seen.add(sid)
        pkgs.append(_package(sid, pkg_name, version, purl, "NOASSERTION", None))
    semver = s.kubernetes_semver
    sums = s.kubernetes_http_sha256
    http_source = s.kubernetes_http_source.rstrip("/")
    for binary in ("kubelet", "kubeadm", "kubectl"):
        if s.kubernetes_source_type == "http":
            source = f"{http_source}/{semver}/bin/linux/amd64/{binary}"
            pkgs.append(
                _package(
                    _spdx_id("Kubernetes", binary),
                    binary,
                    semver,
                    f"pkg:generic/{binary}@{semver}",
                    source,
                    sums.get(binary),
                    "downloaded over HTTP and checked against this sha256",
                )
            )
        elif binary not in by_name:
            repo = s.kubernetes_deb_repo if debian else s.kubernetes_rpm_repo
            pkgs.append(
                _package(
                    _spdx_id("Kubernetes", binary),
                    binary,
                    semver,
                    f"pkg:generic/{binary}@{semver}",
                    repo,
                    None,
                    "from the pkgs.k8s.io repository",
                )
            )
    # release downloads (not packages): (installed?, name, version key, purl, url key, sha256 key)
    http_containerd = s.containerd_source_type == "http"
    releases = (
        (http_containerd, "containerd", s.containerd_version,
         "pkg:github/containerd/containerd@v{bare}", s.containerd_url, s.containerd_sha256),
        (http_containerd and bool(s.runc_version), "runc", s.runc_version,
         "pkg:github/opencontainers/runc@v{bare}", s.runc_url, s.runc_sha256),
        (bool(s.crictl_version), "crictl", s.crictl_version,
         "pkg:github/kubernetes-sigs/cri-tools@v{bare}", s.crictl_url, s.crictl_sha256),
        (s.cni_source_type == "http", "cni-plugins", s.cni_plugins_version,
         "pkg:github/containernetworking/plugins@{version}", s.cni_url, s.cni_sha256),
    )  # fmt: skip
    for installed, name, version, purl, url, sha in releases:
        if not installed:
            continue
        pkgs.append(
            _package(
                _spdx_id("Runtime", name),
                name,
                version,
                purl.format(version=version, bare=version.lstrip("v")),
                url,
                sha or None,
                "release download, sha256-verified (against the published sum file when no sha256 is set)",
            )
        )
    relationships = [
        {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": image_id}
    ]
    relationships += [
        {"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": p["SPDXID"]}
        for p in pkgs[1:]
    ]
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": f"https://kiln.invalid/spdx/{name}-{uuid.uuid4()}",
        "creationInfo": {"created": when, "creators": [f"Tool: kiln-{__version__}"]},
        "documentDescribes": [image_id],
        "packages": pkgs,
        "relationships": relationships,
    }


def write(
    path: Path,
    name: str,
    settings: Settings,
    packages_file: Path,
    *,
    created: float | None = None,
    seed: str = "",
) -> Path:
    """NAME.spdx.json. Reproducible with `created` (the build's source date) and `seed` (its input hash):
    the document's namespace is derived from them instead of drawn at random."""
    packages = read_packages(packages_file) if packages_file.is_file() else []
    doc = document(name, settings, packages, created)
    if seed:
        doc["documentNamespace"] = f"https://kiln.invalid/spdx/{name}-{uuid.uuid5(uuid.NAMESPACE_URL, seed)}"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)
    return path
