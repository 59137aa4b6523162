"""GENERATED from the settings table (kiln/config/keys_*.py) by hack/generate.py: do not edit.

`Settings` is the typed, frozen view of a resolved config: one field per setting, with the type the table
declares (lists are tuples, maps read-only). `Config.settings` carries it; build directories give one with
`Settings.from_values(build.values())`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from kiln.config.settings import SETTINGS


@dataclass(frozen=True)
class Settings:
    build_name: str
    os_name: str
    os_version: str
    os_family: str
    install_method: str
    firmware: str
    efi_firmware_code: str
    efi_firmware_vars: str
    guest_os_type: str
    iso_url: str
    iso_checksum: str
    boot_command: tuple[str, ...]
    boot_wait: str
    boot_files: tuple[str, ...]
    cloudimg_url: str
    cloudimg_checksum: str
    provisioner: str
    bootstrap_suite: str
    bootstrap_mirror: str
    bootstrap_network: str
    bootstrap_packages: tuple[str, ...]
    ssh_timeout: str
    source_date_epoch: int
    builder: str
    cpus: int
    memory: int
    disk_size: int
    accelerator: str
    headless: bool
    http_proxy: str
    https_proxy: str
    no_proxy: str
    apt_mirror: str
    apt_cache: str
    extra_packages: tuple[str, ...]
    extra_roles_before: tuple[str, ...]
    extra_roles_after: tuple[str, ...]
    ssh_username: str
    output_dir: str
    cache_dir: str
    kubernetes_semver: str
    kubernetes_series: str
    kubernetes_deb_version: str
    kubernetes_rpm_version: str
    kubernetes_source_type: str
    kubernetes_deb_repo: str
    kubernetes_deb_gpg_key: str
    kubernetes_rpm_repo: str
    kubernetes_rpm_gpg_key: str
    kubernetes_http_source: str
    kubernetes_http_sha256: Mapping[str, str]
    containerd_source_type: str
    containerd_version: str
    containerd_url: str
    containerd_sha256: str
    cni_source_type: str
    cni_plugins_version: str
    cni_http_source: str
    cni_url: str
    cni_sha256: str
    cni_bin_dir: str
    goss_spec_dir: str
    goss_vars_file: str
    goss_vars_inline: str
    gcs_bucket: str
    formats: tuple[str, ...]
    crictl_version: str
    crictl_url: str
    crictl_sha256: str
    runc_version: str
    runc_url: str
    runc_sha256: str
    pause_image: str
    kubernetes_container_registry: str
    containerd_additional_settings: str
    extra_repos: tuple[str, ...]
    disable_public_repos: bool
    ansible_user_vars: str
    extra_kernel_boot_params: str
    grub_timeout: int

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Settings:
        """From resolved values (a Config's, or a build dir's config.json or manifest). A key that an older
        build dir lacks takes the table's default; numbers and booleans recorded as strings are read back; a
        value of the wrong type is a TypeError."""
        out: dict[str, Any] = {}
        for s in SETTINGS:
            value: Any = values.get(s.name)
            value = s.default if value is None else value
            if isinstance(value, str) and s.type is int and value.strip().lstrip("-").isdigit():
                value = int(value)  # custom_data records every value as a string
            elif isinstance(value, str) and s.type is bool and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            if s.type is list:
                items = value.split() if isinstance(value, str) else value
                value = tuple(str(v) for v in (items or ()))
            elif s.type is dict:
                if not isinstance(value, Mapping):
                    raise TypeError(f"{s.name}: {value!r} is not a map")
                value = MappingProxyType({str(k): str(v) for k, v in value.items()})
            elif not isinstance(value, s.type) or (s.type is int and isinstance(value, bool)):
                raise TypeError(f"{s.name}: {value!r} is not a {s.type_name}")
            out[s.name] = value
        return cls(**out)

    def mapping(self) -> dict[str, Any]:
        """name -> value, for what takes plain mappings (custom_data, templates)."""
        return {s.name: getattr(self, s.name) for s in SETTINGS}
