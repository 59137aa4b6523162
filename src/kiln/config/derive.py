"""Derived values: what kiln computes from the one field users change (the Kubernetes semver gives the series,
the deb and rpm versions and the pkgs.k8s.io repos; versions give release URLs), and image-builder's Packer
spellings read as what they meant. A value set explicitly in any layer is never overwritten."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kiln.config.validators import SEMVER_RE

DEFAULT = "default"  # the origin of a value nobody set
DERIVED = "derived"  # the origin of a value kiln computed


def derived_kubernetes(semver: str) -> dict[str, str]:
    """kubernetes_series / _deb_version / _rpm_version and the pkgs.k8s.io repos from one semver."""
    match = SEMVER_RE.match(semver)
    if not match:
        return {}
    major, minor = match.group(1), match.group(2)
    series = f"v{major}.{minor}"
    bare = semver[1:]
    deb_repo = f"https://pkgs.k8s.io/core:/stable:/{series}/deb/"
    rpm_repo = f"https://pkgs.k8s.io/core:/stable:/{series}/rpm/"
    return {
        "kubernetes_series": series,
        "kubernetes_deb_version": f"{bare}-1.1",
        "kubernetes_rpm_version": bare,
        "kubernetes_deb_repo": deb_repo,
        "kubernetes_deb_gpg_key": f"{deb_repo}Release.key",
        "kubernetes_rpm_repo": rpm_repo,
        "kubernetes_rpm_gpg_key": f"{rpm_repo}repodata/repomd.xml.key",
    }


def packer_spellings(values: dict[str, Any], origins: dict[str, str]) -> None:
    """Packer spellings image-builder's var files use, in kiln's form: a checksum given as the URL of a
    checksum file (with the old iso_checksum_type "file") is file:URL; a qemu firmware given as the path of
    an OVMF/EFI image (`"firmware": "OVMF.fd"`) is efi; on a cloudimg target, iso_url and iso_checksum name
    the cloud image (image-builder's qemu cloudimg files use them for it)."""
    if values.get("install_method") == "cloudimg" and values.get("iso_url"):
        for kind in ("url", "checksum"):
            if values.get(f"iso_{kind}"):
                values[f"cloudimg_{kind}"] = values[f"iso_{kind}"]
                origins[f"cloudimg_{kind}"] = f"{origins[f'iso_{kind}']} (image-builder: iso_{kind})"
    for key in ("iso_checksum", "cloudimg_checksum"):
        value = values.get(key)
        if isinstance(value, str) and re.match(r"(?i)https?://", value):
            values[key] = f"file:{value}"
    firmware = values.get("firmware")
    if isinstance(firmware, str) and re.search(r"(?i)(ovmf|edk2|efi).*\.(fd|bin)$", firmware):
        values["firmware"] = "efi"
    # apt repos as image-builder's files write them: quoted ("\"URL SUITE\""), and extra_repos entries as
    # "URL SUITE [COMPONENT...]" instead of a deb line
    for key in ("cni_sha256", "containerd_sha256", "crictl_sha256", "runc_sha256"):
        value = values.get(key)
        if isinstance(value, str) and value.lower().startswith("sha256:"):
            values[key] = value[len("sha256:") :]  # image-builder's checksums carry Ansible's TYPE: prefix
    for key in ("kubernetes_deb_repo", "kubernetes_rpm_gpg_key"):
        if isinstance(values.get(key), str):
            values[key] = " ".join(_unquote(values[key]).split())
    repos = values.get("extra_repos")
    if isinstance(repos, list):
        values["extra_repos"] = [_deb_line(r) if isinstance(r, str) else r for r in repos]


def _unquote(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _deb_line(entry: str) -> str:
    """An extra_repos entry: a deb line or a path stays; "URL SUITE [COMPONENT...]" becomes a deb line."""
    entry = _unquote(entry)
    words = entry.split()
    if len(words) < 2 or not re.match(r"(?i)https?://", words[0]):
        return entry
    if len(words) == 2 and not words[1].endswith("/"):
        words.append("main")
    return "deb " + " ".join(words)


CRICTL_RELEASE = (
    "https://github.com/kubernetes-sigs/cri-tools/releases/download/v{v}/crictl-v{v}-linux-amd64.tar.gz"
)
RUNC_RELEASE = "https://github.com/opencontainers/runc/releases/download/v{v}/runc.amd64"
CONTAINERD_RELEASE = (
    "https://github.com/containerd/containerd/releases/download/v{v}/containerd-{v}-linux-amd64.tar.gz"
)


def derive(values: dict[str, Any], origins: dict[str, str]) -> None:
    derived = derived_kubernetes(str(values["kubernetes_semver"]))
    containerd = str(values["containerd_version"]).removeprefix("v")
    derived["containerd_url"] = CONTAINERD_RELEASE.format(v=containerd)
    if values["kubernetes_source_type"] == "http" and "kubernetes_series" in derived:
        # kubeadm needs crictl; the packages bring cri-tools, the http source brings the minor's release
        derived["crictl_version"] = derived["kubernetes_series"][1:] + ".0"
    crictl = str(values["crictl_version"] or derived.get("crictl_version", "")).removeprefix("v")
    if crictl:
        derived["crictl_url"] = CRICTL_RELEASE.format(v=crictl)
    runc = str(values["runc_version"]).removeprefix("v")
    if runc and values["containerd_source_type"] == "http":
        derived["runc_url"] = RUNC_RELEASE.format(v=runc)
    if values["kubernetes_source_type"] == "http":
        derived["kubernetes_http_source"] = K8S_RELEASES
    cni = str(values["cni_plugins_version"])
    if values["cni_source_type"] == "http" and cni:
        source = str(values["cni_http_source"]).rstrip("/")
        derived["cni_url"] = f"{source}/{cni}/cni-plugins-linux-amd64-{cni}.tgz"
    for key, value in derived.items():
        _derive(key, value, values, origins)
    if values["cni_source_type"] == "http" and values["cni_url"]:
        _derive("cni_sha256", f"{values['cni_url']}.sha256", values, origins)


K8S_RELEASES = "https://dl.k8s.io/release"  # image-builder's default kubernetes_http_source


def _derive(key: str, value: Any, values: dict[str, Any], origins: dict[str, str]) -> None:
    """Set a derived value where no layer set one (a layer's explicit "" stays, and is refused later)."""
    if origins[key] == DEFAULT:
        values[key] = value
        origins[key] = DERIVED


def select_versioned_sums(values: dict[str, Any]) -> None:
    """kubernetes_http_sha256 may hold sums for several versions as "VERSION/NAME" keys (one var file for a
    build of several Kubernetes versions); keep the plain NAME entries and those of kubernetes_semver, so
    that the value, and the stage IDs, depend only on this build's version."""
    sums = values.get("kubernetes_http_sha256")
    if not isinstance(sums, Mapping) or not any("/" in str(k) for k in sums):
        return
    prefix = f"{values['kubernetes_semver']}/"
    chosen = {k: v for k, v in sums.items() if "/" not in str(k)}
    chosen.update({str(k)[len(prefix) :]: v for k, v in sums.items() if str(k).startswith(prefix)})
    values["kubernetes_http_sha256"] = chosen
