"""image-builder's names: the keys its var files set and what kiln does with each.

Three kinds: keys kiln implements under the same name (`IMAGE_BUILDER_SAME_NAME`), keys kiln maps to its own
(`ALIASES`, from each setting's `aliases`), and keys kiln accepts and ignores with a reason
(`IMAGE_BUILDER_IGNORED`: one warning line per file, never an error; it takes in the keys of
image-builder's other builders from kiln.config.builders). `SPELLINGS` are keys that set a kiln key in
another form (efi_boot). docs/image-builder.md's table is
generated from them.
"""

from __future__ import annotations

from collections.abc import Callable

from kiln.config.builders import BUILDER_KEYS
from kiln.config.settings import SETTINGS, Setting

# image-builder keys kiln accepts and does not use, each with the reason. A var file that sets one gets a
# single warning line listing them; they are never silently dropped and never an error.
_FLATCAR = "Flatcar-only (kiln builds no Flatcar images)"
_GOSS = "kiln runs goss specs itself (goss_spec_dir, goss_vars_file, goss_vars_inline); no goss download"
_OWN = "kiln's OS files and templates own this; set the kiln key instead"
_NOPW = "kiln logs in with a per-build SSH key, never a password"
_RPM = "RPM/yum detail of image-builder's roles; kiln's redhat targets use the derived pkgs.k8s.io repo"
_MIRROR = (
    "kiln's apt_mirror serves the build only (the image keeps its distro's sources); the node's own sources: "
    "extra_repos, or a role in extra_roles_after"
)
_UNUSED = "image-builder feature kiln does not have"
_VSPHERE = "vSphere builder setting (vsphere-iso/vsphere-clone); kiln builds locally with qemu or vmware-iso"
_ARCH = "kiln builds amd64"
_ECR = "ECR credential provider: " + _UNUSED
_IMMUTABLE = "immutable-root images: " + _UNUSED
_POST = "kiln writes its own artifacts (formats); post-process the build dir instead"
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
    "cpu_model": "kiln picks the guest CPU: the host's under KVM, QEMU's max without ERMS and FSRM under TCG",
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
    "ubuntu_repo": _MIRROR,
    "ubuntu_security_repo": _MIRROR,
    "node_conformance": "use `kiln conformance`",
    "ssh_private_key_file": "kiln logs in with a key it makes for each build and removes afterwards",
    "ssh_public_key": "kiln logs in with a key it makes for each build and removes afterwards",
    "custom_post_processor": _POST,
    "custom_post_processor_command": _POST,
    "kubevirt": _UNUSED,
    "pypy_http_source": _FLATCAR,
    "containerd_arch": _ARCH,
}

# image-builder's defaults for ignored keys that other values refer to with {{user `KEY`}}
IGNORED_DEFAULTS: dict[str, str] = {
    "crictl_arch": "amd64",
    "containerd_arch": "amd64",
    "kubernetes_goarch": "amd64",
    "kubernetes_cni_http_checksum_arch": "amd64",
    "kubernetes_rpm_repo_arch": "x86_64",
}

ALIASES: dict[str, Setting] = {a: s for s in SETTINGS for a in s.aliases}

# the keys of image-builder's other builders (OpenStack, AWS, Azure, ova/ESX, ...), each with its builder
IMAGE_BUILDER_IGNORED.update(
    {k: why for k, why in BUILDER_KEYS.items() if k not in IMAGE_BUILDER_IGNORED and k not in ALIASES}
)


def _efi_boot(value: object) -> str:
    return "efi" if str(value).strip().lower() in ("true", "1", "yes") else "bios"


# image-builder keys that set a kiln key in another form: name -> (kiln key, conversion)
SPELLINGS: dict[str, tuple[str, Callable[[object], object]]] = {
    "efi_boot": ("firmware", _efi_boot),  # qemu's efi_boot: true is firmware efi
}


# image-builder keys that kiln implements under the same name (its var files set them unchanged)
IMAGE_BUILDER_SAME_NAME = (
    "build_name", "guest_os_type", "iso_url", "iso_checksum", "boot_wait", "cpus", "memory", "disk_size",
    "accelerator", "headless", "http_proxy", "https_proxy", "no_proxy", "ssh_username", "ssh_timeout",
    "kubernetes_semver", "kubernetes_series", "kubernetes_deb_version", "kubernetes_rpm_version",
    "kubernetes_source_type", "kubernetes_deb_repo", "kubernetes_deb_gpg_key", "kubernetes_rpm_repo",
    "kubernetes_rpm_gpg_key", "kubernetes_http_source", "kubernetes_container_registry", "containerd_version",
    "containerd_url", "containerd_sha256", "containerd_additional_settings", "crictl_version", "crictl_url",
    "crictl_sha256", "runc_version", "runc_url", "runc_sha256", "pause_image", "extra_repos",
    "disable_public_repos", "ansible_user_vars", "extra_kernel_boot_params", "efi_firmware_code",
    "efi_firmware_vars",
)  # fmt: skip


def image_builder_table() -> str:
    """docs/image-builder.md's table, generated from the settings table."""
    rows = ["| image-builder key | in kiln |", "|-------------------|---------|"]
    entries: list[tuple[str, str]] = []
    entries += [(name, f"same name (`{name}`)") for name in IMAGE_BUILDER_SAME_NAME]
    entries += [(alias, f"mapped to `{s.name}`") for alias, s in ALIASES.items()]
    entries += [(name, f"sets `{key}` (true: efi)") for name, (key, _) in SPELLINGS.items()]
    entries += [(name, f"ignored: {why}") for name, why in IMAGE_BUILDER_IGNORED.items()]
    for name, what in sorted(entries):
        rows.append(f"| `{name}` | {what} |")
    return "\n".join(rows)
