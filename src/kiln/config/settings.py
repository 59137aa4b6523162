"""The settings table: every config key declared once.

Each `Setting` carries the key's type, default, help text, the file it normally lives in and its
validation. `config.py` (layering, coercion, validation), the README's configuration table
(`hack/readme-table.py`) and the rendered templates all read this table; nothing else declares keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
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


_FORMATS = ("qcow2", "ova", "squashfs", "iso", "netboot", "platform")


def _formats(value: list[str]) -> str | None:
    bad = [f for f in value if f not in _FORMATS]
    return f"unknown format(s) {', '.join(map(_show, bad))} (known: {', '.join(_FORMATS)})" if bad else None


def _abs_path(value: str) -> str | None:
    return None if value.startswith("/") else f"must be an absolute path in the guest (got {_show(value)})"


@dataclass(frozen=True)
class Setting:
    name: str
    type: type  # str, int, bool, list (of str) or dict (str -> str)
    default: Any
    help: str
    file: str  # the file it normally lives in: common, os, kubernetes, containerd, cni
    validator: Validator | None = None
    derived: bool = False  # default computed from other keys unless set explicitly
    multiline: bool = False  # may hold newlines (e.g. a TOML fragment); other strings must be printable
    # where bytes come from or go to, or how the build VM runs, not what lands in the image (a mirror, a
    # proxy, the stand-in server's port, the output dir): left out of the input hash, so changing it does
    # not force a rebuild
    location: bool = False
    # the names image-builder users give this setting in their var files (kiln config shows
    # `FILE (image-builder: NAME)` as the origin of a value set under such a name)
    aliases: tuple[str, ...] = ()

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
        aliases=("distro_name",),
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
        "Boot firmware of the build VM and the image: bios or efi (OVMF on qemu; an OVMF image path, as "
        "image-builder's qemu files give it, means efi).",
        "os",
        _one_of("bios", "efi"),
    ),
    S("guest_os_type", str, "other5xlinux-64guest", "VMware guest OS id written to the VMX/OVF.", "os"),
    S("iso_url", str, "", "installer: URL of the installer ISO.", "os", _url),
    S(
        "iso_checksum",
        str,
        "",
        "installer: checksum of the ISO as TYPE:HEX, bare HEX, or file:URL (a bare URL means file:URL).",
        "os",
        _checksum,
    ),
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
    S("cpus", int, 2, "vCPUs of the build VM and the OVF (1-256).", "common", _between(1, 256)),
    S(
        "memory",
        int,
        4096,
        "Memory of the build VM and the OVF, MiB (512 to 4 TiB).",
        "common",
        _between(512, 4 << 20),
    ),
    S(
        "disk_size",
        int,
        20480,
        "Disk size of the image, MiB (2 GiB to 64 TiB).",
        "common",
        _between(2048, 64 << 20),
    ),
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
    S(
        "extra_packages",
        list,
        [],
        "Extra distro packages installed in the image (a list, or a space-separated string).",
        "common",
        aliases=("extra_debs", "extra_rpms"),
    ),
    S(
        "extra_roles_before",
        list,
        [],
        "Custom Ansible roles (names or paths) run before kiln's roles.",
        "common",
        aliases=("node_custom_roles_pre",),
    ),
    S(
        "extra_roles_after",
        list,
        [],
        "Custom Ansible roles (names or paths) run after kiln's roles, before sysprep.",
        "common",
        aliases=("node_custom_roles_post", "custom_role_names"),
    ),
    S(
        "ssh_username",
        str,
        "builder",
        "Build user: created by the installer/seed with a per-build SSH key, removed by sysprep.",
        "common",
        _name,
    ),
    S(
        "output_dir",
        str,
        "packer/output",
        "Where finished builds go (relative to the repo root).",
        "common",
        aliases=("output_directory",),
    ),
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
        "v1.36.1",
        "The Kubernetes version: the one field users change.",
        "kubernetes",
        _semver,
    ),
    S(
        "kubernetes_series",
        str,
        "",
        "Minor series, derived from kubernetes_semver (v1.36).",
        "kubernetes",
        _series,
        derived=True,
    ),
    S(
        "kubernetes_deb_version",
        str,
        "",
        "Debian package version, derived (1.36.1-1.1).",
        "kubernetes",
        derived=True,
    ),
    S(
        "kubernetes_rpm_version",
        str,
        "",
        "RPM package version, derived (1.36.1).",
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
        "pkg: apt repo, derived from the series (https://pkgs.k8s.io/core:/stable:/v1.36/deb/).",
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
        "pkg: yum repo, derived (https://pkgs.k8s.io/core:/stable:/v1.36/rpm/).",
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
        "http: sha256 of each binary (kubelet, kubeadm, kubectl); keys VERSION/NAME give sums for several "
        "versions at once (--kubernetes-version).",
        "kubernetes",
        _sha256_map,
    ),
    # --- containerd (config/containerd.json) ---------------------------------------------------------------
    S(
        "containerd_source_type",
        str,
        "http",
        "http (containerd's release tarball; the default, as the distros' packages are too old for current "
        "Kubernetes) or pkg (the distro's containerd package).",
        "containerd",
        _one_of("pkg", "http"),
    ),
    S(
        "containerd_version",
        str,
        "2.3.2",
        "containerd version. http: the release installed; both sources: the version goss checks "
        "`containerd --version` against (with pkg, set the distro package's version).",
        "containerd",
        _bare_version,
    ),
    S(
        "containerd_url",
        str,
        "",
        "http: URL of the containerd release tarball, derived from containerd_version (containerd's GitHub "
        "release) when not set.",
        "containerd",
        _url,
        derived=True,
    ),
    S(
        "containerd_sha256",
        str,
        "",
        "http: sha256 of the tarball; empty: checked against the release's published URL.sha256sum.",
        "containerd",
        _sha256,
    ),
    # --- CNI plugins (config/cni.json) ----------------------------------------------------------------------
    S(
        "cni_source_type",
        str,
        "pkg",
        "pkg (distro containernetworking-plugins) or http (release tarball).",
        "cni",
        _one_of("pkg", "http"),
        aliases=("kubernetes_cni_source_type",),
    ),
    S(
        "cni_plugins_version",
        str,
        "v1.9.1",
        "http: CNI plugins release version.",
        "cni",
        aliases=("kubernetes_cni_semver",),
    ),
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
    S(
        "goss_spec_dir",
        str,
        "",
        "Your own goss specs, run in addition to kiln's: DIR/goss.yaml in the build's in-guest check, "
        "DIR/goss-final.yaml (else DIR/goss.yaml) in kiln verify. Relative to the repo root.",
        "common",
    ),
    S(
        "goss_vars_file",
        str,
        "",
        "A YAML or JSON file of goss vars merged over kiln's (for kiln's specs and yours). Relative to the "
        "repo root.",
        "common",
    ),
    S(
        "goss_vars_inline",
        str,
        "",
        "goss vars as a JSON object (text), merged over goss_vars_file, as goss --vars-inline.",
        "common",
        _json_object,
    ),
    S(
        "gcs_bucket",
        str,
        "",
        "GCS bucket `kiln upload` and `kiln release` publish to when --bucket and KILN_GCS_BUCKET are not "
        "given (then capv-images).",
        "common",
        _name,
        location=True,
    ),
    S(
        "formats",
        list,
        ["qcow2", "ova"],
        "What the build writes: qcow2, ova (always), and the live formats squashfs, iso (hybrid BIOS/UEFI "
        "live ISO), netboot (kernel, initrd, squashfs, boot.ipxe), platform (Triton-style tarball). "
        "FORMATS=... in make.",
        "common",
        _formats,
    ),
    # --- what image-builder users commonly set (kubernetes.json, containerd.json, common.json there) -------
    S(
        "crictl_version",
        str,
        "",
        "crictl (cri-tools) release to install, e.g. 1.36.0. Not set: with the http Kubernetes source, "
        "derived from the series (v1.36 gives 1.36.0); with pkg, the packages' cri-tools.",
        "kubernetes",
        _bare_version,
    ),
    S(
        "crictl_url",
        str,
        "",
        "crictl release tarball URL; derived from crictl_version (cri-tools' GitHub release) when not set.",
        "kubernetes",
        _url,
    ),
    S(
        "crictl_sha256",
        str,
        "",
        "sha256 of the crictl tarball (required with crictl_url).",
        "kubernetes",
        _sha256,
    ),
    S(
        "runc_version",
        str,
        "",
        "runc version. With the http containerd source: runc's release binary of this version is installed "
        "(runc_url); with either source goss checks `runc --version`. Empty: the distro's runc, unchecked.",
        "containerd",
        _bare_version,
    ),
    S(
        "runc_url",
        str,
        "",
        "http: URL of the runc binary; derived from runc_version (runc's GitHub release, runc.amd64) when "
        "not set.",
        "containerd",
        _url,
    ),
    S(
        "runc_sha256",
        str,
        "",
        "sha256 of the runc binary; empty: checked against runc.sha256sum next to runc_url.",
        "containerd",
        _sha256,
    ),
    S(
        "pause_image",
        str,
        "registry.k8s.io/pause:3.10.1",
        "The sandbox (pause) image containerd uses; the goss check looks for it in containerd's config.",
        "containerd",
        _image_ref,
    ),
    S(
        "kubernetes_container_registry",
        str,
        "registry.k8s.io",
        "Registry kubeadm pulls the control-plane images from (written to "
        "/etc/kiln/kubeadm-image-repository).",
        "kubernetes",
        _image_ref,
    ),
    S(
        "containerd_additional_settings",
        str,
        "",
        "TOML appended to /etc/containerd/config.toml (image-builder's containerd_additional_settings).",
        "containerd",
        multiline=True,
    ),
    S(
        "extra_repos",
        list,
        [],
        "Extra apt sources (`deb URL SUITE COMPONENTS` lines, or .list/.sources file paths on the build "
        "host) added before packages are installed.",
        "common",
    ),
    S(
        "disable_public_repos",
        bool,
        False,
        "Remove the distro's default package sources during the build (use extra_repos / apt_mirror "
        "instead).",
        "common",
    ),
    S(
        "ansible_user_vars",
        str,
        "",
        "Extra `key=value ...` pairs (or a JSON object) passed to ansible-playbook --extra-vars.",
        "common",
    ),
    S(
        "extra_kernel_boot_params",
        str,
        "",
        "Kernel command-line parameters added to GRUB_CMDLINE_LINUX in the image.",
        "common",
    ),
)
del S

# Settings that say where bytes come from or go, or how the build VM runs, not what lands in the image.
_LOCATION = frozenset(
    {
        "bootstrap_mirror", "accelerator", "headless", "http_proxy", "https_proxy", "no_proxy", "apt_mirror",
        "apt_cache", "output_dir", "cache_dir", "kubernetes_http_source", "containerd_url", "cni_url",
        "runc_url", "crictl_url",
        "ssh_timeout", "boot_wait",
    }
)  # fmt: skip
SETTINGS = tuple(replace(s, location=True) if s.name in _LOCATION else s for s in SETTINGS)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
# image-builder keys kiln accepts and does not use, each with the reason. A var file that sets one gets a
# single warning line listing them; they are never silently dropped and never an error.
_FLATCAR = "Flatcar-only (kiln builds no Flatcar images)"
_GOSS = "kiln runs goss specs itself (goss_spec_dir, goss_vars_file, goss_vars_inline); no goss download"
_OWN = "kiln's OS files and templates own this; set the kiln key instead"
_NOPW = "kiln logs in with a per-build SSH key, never a password"
_RPM = "RPM/yum detail of image-builder's roles; kiln's redhat targets use the derived pkgs.k8s.io repo"
_UNUSED = "image-builder feature kiln does not have"
_VSPHERE = "vSphere builder setting (vsphere-iso/vsphere-clone); kiln builds locally with qemu or vmware-iso"
_ARCH = "kiln builds amd64"
_ECR = "ECR credential provider: " + _UNUSED
_IMMUTABLE = "immutable-root images: " + _UNUSED
_META = "image-builder's build metadata; kiln writes its own (build_date, build_timestamp, kiln_version)"
IMAGE_BUILDER_IGNORED: dict[str, str] = {
    # keys of image-builder's current config/, qemu/, ova/ and raw/ var files (2026)
    "node_custom_roles_post_sysprep": "kiln runs extra roles before sysprep only (extra_roles_after)",
    "node_ansible_tmpdir": _OWN,
    "netplan_removal_excludes": "kiln's sysprep keeps the image's network config to cloud-init",
    "containerd_enable_limit_no_file": "kiln's containerd unit sets LimitNOFILE=infinity",
    "containerd_image_pull_progress_timeout": "set it in containerd_additional_settings",
    "goss_retry_timeout": _GOSS,
    "goss_sleep": _GOSS,
    "kubernetes_rpm_repo_arch": _ARCH,
    "crictl_arch": _ARCH,
    **{
        f"ecr_credential_provider_{k}": _ECR
        for k in (
            "arch",
            "aws_profile",
            "base_url",
            "binary_filename",
            "install_dir",
            "match_images",
            "os",
            "version",
        )
    },
    **{
        f"immutable_{k}": _IMMUTABLE
        for k in (
            "data_partition",
            "data_partition_fstype",
            "data_partition_label",
            "data_partition_mount",
            "data_partition_mount_options",
            "persistent_paths",
            "read_only_root",
            "root_partition_size",
            "tmpfs_paths",
        )
    },
    "autoinstall_profile": _OWN,
    "ansible_collections_path": _OWN,
    "artifact_name": "kiln names artifacts BUILD_NAME+kube-KUBERNETES_SEMVER",
    "vm_name": "kiln names artifacts BUILD_NAME+kube-KUBERNETES_SEMVER",
    "image_name": "kiln names artifacts BUILD_NAME+kube-KUBERNETES_SEMVER",
    "base_output_dir": "use output_dir",
    "ib_version": _META,
    "build_version": _META,
    "base_build_version": _META,
    "kubernetes_typed_version": "kiln derives it and writes it to the manifest's custom_data",
    "boot_disable_ipv6": _OWN,
    "boot_media_path": _OWN,
    "floppy_dirs": _OWN,
    "cd_files": _OWN,
    "cd_label": _OWN,
    "cd_content_location": _OWN,
    "cdrom_adapter_type": _OWN,
    "cdrom_type": _OWN,
    "http_directory": _OWN,
    "http_ip": _OWN,
    "http_port_min": _OWN,
    "http_port_max": _OWN,
    "cpu_model": _OWN,
    "machine_type": _OWN,
    "vnc_bind_address": _OWN,
    "disk_compression": "kiln always compresses the qcow2",
    "disk_discard": _OWN,
    "disk_image": "kiln's cloudimg targets (install_method) say when a cloud image is the base",
    "machine_id_mode": "kiln's sysprep empties /etc/machine-id",
    "distribution_version": _OWN,
    "distro_version_slug": _OWN,
    "remove_nameserver": "kiln's sysprep resets resolv.conf",
    "oem_id": _FLATCAR,
    "channel_name": _FLATCAR,
    "release_version": _FLATCAR,
    "vmx_version": _OWN,
    "source_path": "vmware-vmx builds: " + _UNUSED,
    "export_manifest": _VSPHERE,
    "enable_disk_packing": _VSPHERE,
    "ip_settle_timeout": _VSPHERE,
    "ip_wait_timeout": _VSPHERE,
    "vsphere_guest_os_type": _VSPHERE,
    "destroy": _VSPHERE,
    **{
        k: _VSPHERE
        for k in (
            "cluster",
            "datacenter",
            "datastore",
            "folder",
            "network",
            "resource_pool",
            "template",
            "linked_clone",
            "convert_to_template",
            "create_snapshot",
            "insecure_connection",
            "username",
            "password",
            "vcenter_server",
        )
    },
    "ansible_common_vars": "image-builder's way to pass its keys to Ansible; kiln passes every setting",
    "ansible_common_ssh_args": _OWN,
    "ansible_extra_vars": "use ansible_user_vars",
    "ansible_scp_extra_args": _OWN,
    "existing_ansible_ssh_args": _OWN,
    "build_target": "image-builder's virt/cloud switch; kiln's targets say how they are built",
    "build_timestamp": "kiln records build_date and build_timestamp itself",
    "boot_command_prefix": _OWN,
    "boot_command_suffix": _OWN,
    "os_display_name": "display only; kiln shows os_name and os_version",
    "distro_version": "kiln derives it from os_version",
    "distro_arch": "kiln builds amd64",
    "shutdown_command": "kiln's sysprep powers the VM off (kiln-finalize)",
    "unmount_iso": _OWN,
    "iso_checksum_type": "give the type as a TYPE: prefix, or a bare digest (type from its length)",
    "ssh_password": _NOPW,
    "format": "kiln always writes qcow2 (and the OVA)",
    "qemu_binary": _OWN,
    "disk_interface": _OWN,
    "net_device": _OWN,
    "cri_flavour": "kiln installs containerd",
    "crictl_source_type": "crictl_version / crictl_url choose the source",
    "kubeadm_template": _UNUSED,
    "kubernetes_load_additional_imgs": _UNUSED,
    "kubernetes_rpm_gpg_check": _RPM,
    "kubernetes_goarch": "kiln builds amd64",
    "kubernetes_enable_automatic_resource_sizing": _UNUSED,
    "kubernetes_apiserver_port": _UNUSED,
    "systemd_prefix": _FLATCAR,
    "sysusr_prefix": _FLATCAR,
    "sysusrlocal_prefix": _FLATCAR,
    "python_path": _FLATCAR,
    "containerd_cri_socket": "kiln's containerd listens on the default socket",
    "containerd_gvisor_runtime": _UNUSED,
    "containerd_gvisor_version": _UNUSED,
    "containerd_sha256_windows": "kiln builds Linux images",
    "containerd_service_url": "kiln's containerd role writes the unit",
    "containerd_wasm_shims_url": _UNUSED,
    "containerd_wasm_shims_version": _UNUSED,
    "containerd_wasm_shims_sha256": _UNUSED,
    "containerd_wasm_shims_runtimes": _UNUSED,
    "containerd_wasm_shims_runtime_versions": _UNUSED,
    "enable_containerd_audit": _UNUSED,
    "kubernetes_cni_deb_version": "the pkg source installs the distro's containernetworking-plugins",
    "kubernetes_cni_rpm_version": _RPM,
    "kubernetes_cni_http_source": "kiln takes the full tarball URL in cni_url",
    "kubernetes_cni_http_checksum": "kiln takes the tarball's sha256 in cni_sha256",
    "kubernetes_cni_http_checksum_arch": "kiln builds amd64",
    "firstboot_custom_roles_pre": _UNUSED,
    "firstboot_custom_roles_post": _UNUSED,
    "pip_conf_file": _UNUSED,
    "redhat_epel_rpm": _RPM,
    "epel_rpm_gpg_key": _RPM,
    "reenable_public_repos": "kiln restores the distro sources after a build that disabled them",
    "remove_extra_repos": "extra_repos stay in the image; remove them with an extra role",
    "goss_arch": _GOSS,
    "goss_entry_file": _GOSS,
    "goss_format": _GOSS,
    "goss_format_options": _GOSS,
    "goss_inspect_mode": _GOSS,
    "goss_download_path": _GOSS,
    "goss_remote_folder": _GOSS,
    "goss_remote_path": _GOSS,
    "goss_skip_install": _GOSS,
    "goss_tests_dir": _GOSS,
    "goss_url": _GOSS,
    "goss_version": _GOSS,
    "load_additional_components": _UNUSED,
    "additional_executables": _UNUSED,
    "additional_executables_destination_path": _UNUSED,
    "additional_executables_list": _UNUSED,
    "additional_registry_images": _UNUSED,
    "additional_registry_images_list": _UNUSED,
    "additional_s3": _UNUSED,
    "additional_s3_access": _UNUSED,
    "additional_s3_bucket": _UNUSED,
    "additional_s3_ceph": _UNUSED,
    "additional_s3_destination_path": _UNUSED,
    "additional_s3_endpoint": _UNUSED,
    "additional_s3_object": _UNUSED,
    "additional_s3_secret": _UNUSED,
    "additional_url_images": _UNUSED,
    "additional_url_images_list": _UNUSED,
    "ecr_credential_provider": _UNUSED,
    "debug_tools": _UNUSED,
    "amazon_ssm_agent_rpm": _UNUSED,
    "block_nouveau_loading": _UNUSED,
    "ubuntu_repo": "use apt_mirror",
    "ubuntu_security_repo": "use apt_mirror",
    "node_conformance": "use `kiln conformance`",
}
ALIASES: dict[str, Setting] = {a: s for s in SETTINGS for a in s.aliases}

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


# image-builder keys that kiln implements under the same name (its var files set them unchanged)
IMAGE_BUILDER_SAME_NAME = (
    "build_name", "guest_os_type", "iso_url", "iso_checksum", "boot_wait", "cpus", "memory", "disk_size",
    "accelerator", "headless", "http_proxy", "https_proxy", "no_proxy", "ssh_username", "ssh_timeout",
    "kubernetes_semver", "kubernetes_series", "kubernetes_deb_version", "kubernetes_rpm_version",
    "kubernetes_source_type", "kubernetes_deb_repo", "kubernetes_deb_gpg_key", "kubernetes_rpm_repo",
    "kubernetes_rpm_gpg_key", "kubernetes_http_source", "kubernetes_container_registry", "containerd_version",
    "containerd_url", "containerd_sha256", "containerd_additional_settings", "crictl_version", "crictl_url",
    "crictl_sha256", "runc_version", "runc_url", "runc_sha256", "pause_image", "extra_repos",
    "disable_public_repos", "ansible_user_vars", "extra_kernel_boot_params",
)  # fmt: skip


def image_builder_table() -> str:
    """The README's "Coming from image-builder" table, generated from the settings table."""
    rows = ["| image-builder key | in kiln |", "|-------------------|---------|"]
    entries: list[tuple[str, str]] = []
    entries += [(name, f"same name (`{name}`)") for name in IMAGE_BUILDER_SAME_NAME]
    entries += [(alias, f"mapped to `{s.name}`") for alias, s in ALIASES.items()]
    entries += [(name, f"ignored: {why}") for name, why in IMAGE_BUILDER_IGNORED.items()]
    for name, what in sorted(entries):
        rows.append(f"| `{name}` | {what} |")
    return "\n".join(rows)
