"""Keys of image-builder's other builders: known, ignored with one warning line, never an error.

image-builder builds for many clouds and hypervisors; kiln builds locally with qemu or vmware-iso. Var files
that users carry mix such builder keys (an OpenStack flavor, an AWS region, an ova/ESX remote host) with the
content keys that matter (Kubernetes and containerd versions, extra packages), so these are known by name and
ignored with a reason naming the builder. The names were gathered from the variables and `{{user}}`
references of image-builder's builder folders, current and back to 2019.

Imports: kiln.config.setting only (the leaf of the config wing).
"""

from __future__ import annotations

BUILDERS = {
    "ami": "AWS (ami)",
    "azure": "Azure",
    "config": "image-builder's Windows and shared-role",
    "digitalocean": "DigitalOcean",
    "gce": "GCP (gce)",
    "hcloud": "Hetzner Cloud",
    "huaweicloud": "Huawei Cloud",
    "maas": "MaaS",
    "nutanix": "Nutanix",
    "oci": "Oracle Cloud (oci)",
    "openstack": "OpenStack",
    "outscale": "Outscale",
    "ova": "ova/ESX",
    "oxide": "Oxide",
    "powervs": "IBM PowerVS",
    "proxmox": "Proxmox",
    "scaleway": "Scaleway",
    "vbox": "VirtualBox",
    "vultr": "Vultr",
}

# (the builders that use the keys, the keys)
_GROUPS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("ami",),
        "amazon_2_ami ami_description ami_filter_arch ami_filter_name ami_filter_owners ami_groups "
        "ami_regions ami_users aws_access_key aws_profile aws_region aws_secret_key "
        "aws_security_group_ids aws_session_token builder_instance_type centos_7_ami iam_instance_profile "
        "iops skip_create_ami skip_profile_validation snapshot_groups snapshot_users source_ami "
        "temporary_security_group_source_cidrs throughput",
    ),
    (
        ("azure",),
        "azure_location build_resource_group_name capture_container_name client_id client_secret "
        "cloud_environment_name community_gallery_image_id custom_data_file gmsa_keyvault_url ib_commit "
        "image_offer image_publisher image_sku managed_image_storage_account_type os_disk_size_gb planId "
        "plan_image_offer plan_image_publisher plan_image_sku provisioner_remote_folder "
        "replication_regions shared_image_gallery_name sig_image_version source_sig_image_name "
        "source_sig_image_version source_sig_name source_sig_resource_group_name "
        "source_sig_subscription_id storage_account_type subscription_id use_azure_cli_auth",
    ),
    (("config",), "containerd_pause_image custom_role_name"),
    (("digitalocean",), "access_token"),
    (("gce",), "image_family service_account_email source_image_family tags use_internal_ip"),
    (("hcloud",), "hcloud_location hcloud_token server_type"),
    (
        ("huaweicloud",),
        "associate_public_ip_address eip_bandwidth_size eip_type image_description image_filter_name "
        "pause_before_connecting subnets wait_image_ready_timeout",
    ),
    (("maas",), "cdrom_interface iso_target_path"),
    (
        ("nutanix",),
        "disk_size_gb force_deregister image_delete image_export image_url nutanix_cluster_name "
        "nutanix_endpoint nutanix_insecure nutanix_password nutanix_port nutanix_subnet_name "
        "nutanix_username scp_extra_vars source_image_delete source_image_force source_image_name "
        "virtio_image_name vm_force_delete",
    ),
    (
        ("oci",),
        "access_cfg_file access_cfg_file_account availability_domain base_image_ocid compartment_ocid "
        "fingerprint instance_options_are_legacy_imds_endpoints_disabled key_file ocpus opc_user_password "
        "operating_system operating_system_version shape subnet_ocid tenancy_ocid use_private_ip "
        "user_ocid",
    ),
    (
        ("openstack",),
        "ansible_timeout attach_config_drive floating_ip_network image_disk_format image_tags "
        "image_visibility instance_name networks source_image_filter_name use_blockstorage_volume "
        "use_floating_ip volume_availability_zone",
    ),
    (
        ("outscale",),
        "debug_ssh_public_key global_permission omi_name overwrite_existing owner ssh_source_cidr vm_type",
    ),
    (
        ("ova",),
        "cpu_cores dataplane_url dataplaneapi_version disk disk_controller_type disk_thin_provisioned "
        "disk_type_id guestinfo_datasource_ref guestinfo_datasource_script guestinfo_datasource_slug host "
        "hostname network_card os_iso_path packages postinstall remote_datastore remote_host "
        "remote_password remote_type remote_username skip_compaction ssh_proxy_host ssh_proxy_port "
        "vmtools_iso_path vmtools_iso_url vnc_disable_password vnc_port_max vnc_port_min",
    ),
    (("oxide",), "oxide_boot_disk_image_id oxide_project oxide_subnet oxide_vpc"),
    (
        ("powervs",),
        "apikey capture_cos_access_key capture_cos_bucket capture_cos_region capture_cos_secret_key "
        "dhcp_network key_pair_name service_instance_id source_cos_bucket source_cos_object "
        "source_cos_region",
    ),
    (
        ("proxmox",),
        "bios bridge cores cpu_type disk_format http_interface io_thread iso_file iso_storage_pool model "
        "mtu node numa pool proxmox_url scsi_controller sockets storage_pool storage_pool_type version "
        "vlan_tag vmid",
    ),
    (("scaleway",), "commercial_type root_volume_type"),
    (("vultr",), "api_key os plan"),
    (("ami", "gce"), "ubuntu_18_04_ami"),
    (("ami", "huaweicloud"), "kms_key_id subnet_id user_data_file vpc_id"),
    (("azure", "hcloud"), "direct_shared_gallery_image_id exclude_from_latest"),
    (
        ("azure", "oci"),
        "azure_extra_vars image_version private_virtual_network_with_public_ip virtual_network_name "
        "virtual_network_resource_group_name virtual_network_subnet_name vm_size wire_server_users",
    ),
    (("config", "nutanix"), "kubernetes_install_path"),
    (("config", "ova"), "cloudbase_real_time_clock_utc"),
    (("digitalocean", "oxide"), "size"),
    (("digitalocean", "vultr"), "snapshot_name_suffix"),
    (("gce", "oci"), "disable_default_service_account"),
    (("gce", "proxmox"), "disk_type"),
    (("gce", "scaleway"), "project_id"),
    (("hcloud", "outscale"), "flatcar_channel flatcar_version"),
    (("hcloud", "proxmox"), "token"),
    (("hcloud", "scaleway"), "image"),
    (("huaweicloud", "openstack"), "availability_zone flavor security_groups"),
    (("maas", "nutanix"), "boot_type"),
    (("nutanix", "ova"), "unattend_timezone windows_admin_password"),
    (("outscale", "powervs"), "account_id"),
    (("ova", "vbox"), "cpu local_guest_os_type os_iso_url"),
    (("ami", "gce", "oci"), "encrypted"),
    (("ami", "huaweicloud", "openstack"), "ssh_keypair_name volume_size volume_type"),
    (("azure", "config", "oci"), "cloudbase_logging_serial_port"),
    (("azure", "config", "ova"), "custom_role"),
    (("azure", "hcloud", "oci"), "resource_group_name storage_account_name"),
    (
        ("config", "ova", "vbox"),
        "disable_hypervisor netbios_host_name_compatibility windows_updates_categories",
    ),
    (("gce", "powervs", "scaleway"), "zone"),
    (("huaweicloud", "outscale", "scaleway"), "access_key secret_key"),
    (("nutanix", "ova", "vbox"), "kubernetes_http_package_url"),
    (("ami", "azure", "config", "ova"), "wins_version"),
    (("ami", "hcloud", "maas", "oxide"), "arch"),
    (("ami", "huaweicloud", "nutanix", "oci"), "user_data"),
    (("ami", "azure", "config", "oci", "ova"), "additional_debug_files"),
    (("ami", "azure", "hcloud", "huaweicloud", "outscale"), "root_device_name"),
    (
        ("ami", "azure", "config", "nutanix", "oci", "ova"),
        "cloudbase_metadata_services cloudbase_metadata_services_unattend wins_url",
    ),
    (("ami", "azure", "config", "nutanix", "ova", "vbox"), "docker_ee_version ssh_source_url"),
    (
        ("ami", "azure", "config", "oci", "ova", "vbox"),
        "nssm_url prepull windows_service_manager windows_updates_kbs",
    ),
    (("digitalocean", "huaweicloud", "oci", "outscale", "powervs", "vultr"), "region"),
    (("digitalocean", "huaweicloud", "openstack", "outscale", "proxmox", "vultr"), "source_image"),
    (
        ("ami", "azure", "config", "nutanix", "oci", "ova", "vbox"),
        "cloudbase_init_url cloudbase_init_version cloudbase_plugins cloudbase_plugins_unattend "
        "kubernetes_base_url runtime",
    ),
    (
        ("ami", "azure", "gce", "hcloud", "huaweicloud", "nutanix", "outscale", "oxide"),
        "distribution_release",
    ),
    (("ami", "azure", "hcloud", "huaweicloud", "oci", "ova", "powervs", "vbox"), "manifest_output"),
    (
        ("ami", "azure", "gce", "hcloud", "huaweicloud", "nutanix", "oci", "outscale", "oxide", "scaleway"),
        "distribution",
    ),
)


def _reason(builders: tuple[str, ...]) -> str:
    names = ", ".join(BUILDERS[b] for b in builders if b != "config")
    if builders == ("config",):
        return "Windows image or image-builder role setting; kiln builds Linux images with its own roles"
    extra = " (and Windows images)" if "config" in builders else ""
    return f"{names} builder setting{extra}; kiln builds locally with qemu or vmware-iso"


BUILDER_KEYS: dict[str, str] = {key: _reason(bs) for bs, keys in _GROUPS for key in keys.split()}
