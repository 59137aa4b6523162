"""The settings table: every config key declared once.

Each `Setting` carries the key's type, default, help text, the file it normally lives in and its
validation. `config.py` (layering, coercion, validation), the README's configuration table
(`kiln config --table`) and the rendered templates all read this table; nothing else declares keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A validator takes the (already type-checked) value and returns a problem or None.
Validator = Callable[[Any], "str | None"]

SEMVER_RE = re.compile(r"^v(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
SERIES_RE = re.compile(r"^v\d+\.\d+$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
DURATION_RE = re.compile(r"^\d+(ms|s|m|h)$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def _one_of(*choices: str) -> Validator:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)} (got {value!r})"

    return check


def _semver(value: str) -> str | None:
    return (
        None
        if SEMVER_RE.match(value)
        else f"malformed semver {value!r} (want vMAJOR.MINOR.PATCH, e.g. v1.30.2)"
    )


def _series(value: str) -> str | None:
    return None if SERIES_RE.match(value) else f"malformed series {value!r} (want vMAJOR.MINOR, e.g. v1.30)"


def _url(value: str) -> str | None:
    if value == "" or re.match(r"^(https?|file)://\S+$", value) or value.startswith("/"):
        return None
    return f"not a URL {value!r} (want http://, https://, file:// or an absolute path)"


def _proxy(value: str) -> str | None:
    if value == "" or re.match(r"^https?://\S+$", value):
        return None
    return f"not a proxy URL {value!r} (want http://HOST:PORT)"


def _checksum(value: str) -> str | None:
    if (
        value == "none"
        or re.match(r"^(sha256|sha512|sha1|md5):[0-9a-fA-F]+$", value)
        or value.startswith("file:")
    ):
        return None
    return f"malformed checksum {value!r} (want TYPE:HEX, e.g. sha256:..., or file:URL)"


def _sha256(value: str) -> str | None:
    return None if value == "" or SHA256_RE.match(value) else f"not a sha256 hex digest: {value!r}"


def _sha256_map(value: dict[str, str]) -> str | None:
    bad = [k for k, v in value.items() if not SHA256_RE.match(str(v))]
    return f"not sha256 hex digests for: {', '.join(sorted(bad))}" if bad else None


def _duration(value: str) -> str | None:
    return None if DURATION_RE.match(value) else f"malformed duration {value!r} (want e.g. 10s, 5m, 2h)"


def _name(value: str) -> str | None:
    return None if NAME_RE.match(value) else f"malformed name {value!r} (lowercase letters, digits, . _ -)"


def _positive(minimum: int) -> Validator:
    def check(value: int) -> str | None:
        return None if value >= minimum else f"must be at least {minimum} (got {value})"

    return check


def _abs_path(value: str) -> str | None:
    return None if value.startswith("/") else f"must be an absolute path in the guest (got {value!r})"


@dataclass(frozen=True)
class Setting:
    name: str
    type: type  # str, int, bool, list (of str) or dict (str -> str)
    default: Any
    help: str
    file: str  # the file it normally lives in: common, os, kubernetes, containerd, cni
    validator: Validator | None = None
    derived: bool = False  # default computed from other keys unless set explicitly

    @property
    def type_name(self) -> str:
        return {str: "string", int: "number", bool: "bool", list: "list of strings", dict: "map"}[self.type]


S = Setting
SETTINGS: tuple[Setting, ...] = (
    # --- the target: what OS, how it gets onto the disk (config/<build_name>.json) ------------------------
    S("build_name", str, "", "Image name; the OS file is config/BUILD_NAME.json. Required.", "os", _name),
    S(
        "os_name",
        str,
        "",
        "Distribution: ubuntu, debian, centos, rockylinux. Required.",
        "os",
        _one_of("ubuntu", "debian", "centos", "rockylinux"),
    ),
    S("os_version", str, "", "Distribution version, e.g. 22.04, 12, 9. Required.", "os"),
    S(
        "os_family",
        str,
        "debian",
        "Package family: debian (apt) or redhat (yum/dnf).",
        "os",
        _one_of("debian", "redhat"),
    ),
    S(
        "install_method",
        str,
        "installer",
        "How the OS gets onto the disk: installer (ISO + boot_command + boot files), cloudimg (cloud image + "
        "cloud-init seed, qemu only), bootstrap (base disk built locally from distro packages, qemu only).",
        "os",
        _one_of("installer", "cloudimg", "bootstrap"),
    ),
    S(
        "firmware",
        str,
        "bios",
        "Boot firmware of the build VM and the image: bios or efi (OVMF on qemu).",
        "os",
        _one_of("bios", "efi"),
    ),
    S("guest_os_type", str, "other5xlinux-64guest", "VMware guest OS id written to the VMX/OVF.", "os"),
    S("iso_url", str, "", "installer: URL of the installer ISO.", "os", _url),
    S("iso_checksum", str, "", "installer: checksum of the ISO as TYPE:HEX (or file:URL).", "os", _checksum),
    S(
        "boot_command",
        list,
        [],
        "installer: keys Packer types at the boot menu. {{ .HTTPIP }} and "
        "{{ .HTTPPort }} reach Packer's HTTP server, which serves the boot files.",
        "os",
    ),
    S("boot_wait", str, "10s", "installer: wait before typing boot_command.", "os", _duration),
    S(
        "boot_files",
        list,
        [],
        "installer/cloudimg: boot files under packer/http/ (preseed, autoinstall "
        "user-data/meta-data, kickstart), rendered with the build's SSH key and served over HTTP.",
        "os",
    ),
    S("cloudimg_url", str, "", "cloudimg: URL of the cloud image (qcow2).", "os", _url),
    S("cloudimg_checksum", str, "", "cloudimg: checksum of the cloud image as TYPE:HEX.", "os", _checksum),
    S("bootstrap_suite", str, "", "bootstrap: Debian suite for mmdebstrap, e.g. bookworm.", "os"),
    S(
        "bootstrap_mirror",
        str,
        "http://deb.debian.org/debian",
        "bootstrap: Debian mirror for mmdebstrap.",
        "os",
        _url,
    ),
    S(
        "bootstrap_packages",
        list,
        [],
        "bootstrap: extra packages in the base disk (kernel, sshd, cloud-init and "
        "python3 are always included).",
        "os",
    ),
    S("ssh_timeout", str, "60m", "How long Packer waits for SSH into the build VM.", "os", _duration),
    # --- common: the build VM and the provisioning environment (config/common.json) ------------------------
    S(
        "builder",
        str,
        "vmware-iso",
        "Default Packer builder for `kiln build` / `make build-<os>`: qemu or "
        "vmware-iso (the OVA path). `--only` and build-qemu-/build-ova- targets override it.",
        "common",
        _one_of("qemu", "vmware-iso"),
    ),
    S("cpus", int, 2, "vCPUs of the build VM and the OVF.", "common", _positive(1)),
    S("memory", int, 4096, "Memory of the build VM and the OVF, MiB.", "common", _positive(512)),
    S("disk_size", int, 20480, "Disk size of the image, MiB.", "common", _positive(2048)),
    S(
        "accelerator",
        str,
        "auto",
        "QEMU accelerator: auto (kvm only when a probe proves it works), kvm, tcg.",
        "common",
        _one_of("auto", "kvm", "tcg"),
    ),
    S("headless", bool, True, "Hide the VM console (FOREGROUND=1 / --foreground set it to false).", "common"),
    S("http_proxy", str, "", "Proxy for package downloads in the guest.", "common", _proxy),
    S("https_proxy", str, "", "HTTPS proxy for package downloads in the guest.", "common", _proxy),
    S("no_proxy", str, "", "Comma-separated hosts that bypass the proxies.", "common"),
    S(
        "apt_mirror",
        str,
        "",
        "Debian/Ubuntu mirror used in the guest instead of the distro default.",
        "common",
        _url,
    ),
    S(
        "apt_cache",
        str,
        "",
        "apt-cacher-ng style cache URL (Acquire::http::Proxy) in the guest.",
        "common",
        _proxy,
    ),
    S("extra_packages", list, [], "Extra distro packages installed in the image.", "common"),
    S(
        "extra_roles_before",
        list,
        [],
        "Custom Ansible roles (names or paths) run before kiln's roles.",
        "common",
    ),
    S(
        "extra_roles_after",
        list,
        [],
        "Custom Ansible roles (names or paths) run after kiln's roles, before sysprep.",
        "common",
    ),
    S(
        "ssh_username",
        str,
        "builder",
        "Build user: created by the installer/seed with a per-build SSH key, removed by sysprep.",
        "common",
        _name,
    ),
    S("output_dir", str, "packer/output", "Where finished builds go (relative to the repo root).", "common"),
    S(
        "cache_dir",
        str,
        ".cache/kiln",
        "Downloads and base disks cache (relative to the repo root).",
        "common",
    ),
    # --- Kubernetes (config/kubernetes.json) ---------------------------------------------------------------
    S(
        "kubernetes_semver",
        str,
        "v1.30.2",
        "The Kubernetes version: the one field users change.",
        "kubernetes",
        _semver,
    ),
    S(
        "kubernetes_series",
        str,
        "",
        "Minor series, derived from kubernetes_semver (v1.30).",
        "kubernetes",
        _series,
        derived=True,
    ),
    S(
        "kubernetes_deb_version",
        str,
        "",
        "Debian package version, derived (1.30.2-1.1).",
        "kubernetes",
        derived=True,
    ),
    S(
        "kubernetes_rpm_version",
        str,
        "",
        "RPM package version, derived (1.30.2).",
        "kubernetes",
        derived=True,
    ),
    S(
        "kubernetes_source_type",
        str,
        "pkg",
        "pkg (distro repos from pkgs.k8s.io) or http (binaries from "
        "kubernetes_http_source with sha256 checksums).",
        "kubernetes",
        _one_of("pkg", "http"),
    ),
    S(
        "kubernetes_deb_repo",
        str,
        "",
        "pkg: apt repo, derived from the series (https://pkgs.k8s.io/core:/stable:/v1.30/deb/).",
        "kubernetes",
        _url,
        derived=True,
    ),
    S(
        "kubernetes_deb_gpg_key",
        str,
        "",
        "pkg: apt repo signing key URL, derived (REPO/Release.key).",
        "kubernetes",
        _url,
        derived=True,
    ),
    S(
        "kubernetes_rpm_repo",
        str,
        "",
        "pkg: yum repo, derived (https://pkgs.k8s.io/core:/stable:/v1.30/rpm/).",
        "kubernetes",
        _url,
        derived=True,
    ),
    S(
        "kubernetes_rpm_gpg_key",
        str,
        "",
        "pkg: yum repo signing key URL, derived (REPO/repodata/repomd.xml.key).",
        "kubernetes",
        _url,
        derived=True,
    ),
    S(
        "kubernetes_http_source",
        str,
        "",
        "http: base URL; binaries at BASE/SEMVER/bin/linux/amd64/NAME.",
        "kubernetes",
        _url,
    ),
    S(
        "kubernetes_http_sha256",
        dict,
        {},
        "http: sha256 of each binary (kubelet, kubeadm, kubectl).",
        "kubernetes",
        _sha256_map,
    ),
    # --- containerd (config/containerd.json) ---------------------------------------------------------------
    S(
        "containerd_source_type",
        str,
        "pkg",
        "pkg (distro containerd package) or http (release tarball).",
        "containerd",
        _one_of("pkg", "http"),
    ),
    S("containerd_version", str, "1.7.18", "http: containerd release version.", "containerd"),
    S("containerd_url", str, "", "http: URL of the containerd release tarball.", "containerd", _url),
    S("containerd_sha256", str, "", "http: sha256 of the tarball.", "containerd", _sha256),
    # --- CNI plugins (config/cni.json) ----------------------------------------------------------------------
    S(
        "cni_source_type",
        str,
        "pkg",
        "pkg (distro containernetworking-plugins) or http (release tarball).",
        "cni",
        _one_of("pkg", "http"),
    ),
    S("cni_plugins_version", str, "v1.4.1", "http: CNI plugins release version.", "cni"),
    S("cni_url", str, "", "http: URL of the CNI plugins tarball.", "cni", _url),
    S("cni_sha256", str, "", "http: sha256 of the tarball.", "cni", _sha256),
    S(
        "cni_bin_dir",
        str,
        "/opt/cni/bin",
        "Where the CNI plugin binaries live in the image.",
        "cni",
        _abs_path,
    ),
)
del S

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
# The layer files every target reads, in layering order (the OS file goes between common and kubernetes).
SHARED_FILES = ("common", "kubernetes", "containerd", "cni")
LAYER_ORDER = ("common", "os", "kubernetes", "containerd", "cni")


def markdown_table() -> str:
    """The README's configuration table, generated from SETTINGS."""
    rows = ["| key | file | type | default | meaning |", "|-----|------|------|---------|---------|"]
    for s in SETTINGS:
        file = "config/BUILD_NAME.json" if s.file == "os" else f"config/{s.file}.json"
        if s.derived:
            default = "derived"
        elif s.default in ("", [], {}):
            default = "(empty)"
        else:
            default = f"`{_fmt(s.default)}`"
        rows.append(f"| `{s.name}` | {file} | {s.type_name} | {default} | {s.help.replace('|', '/')} |")
    return "\n".join(rows)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
