"""The target's keys: what OS, how it gets onto the disk (config/BUILD_NAME.json)."""

from __future__ import annotations

from kiln.config.setting import Setting as S
from kiln.config.validators import (
    _abs_path,
    _checksum,
    _duration,
    _name,
    _one_of,
    _url,
)

TARGET: tuple[S, ...] = (
    # --- the target: what OS, how it gets onto the disk (config/<build_name>.json) ------------------------
    S(
        "build_name",
        str,
        "",
        "Image name; the OS file is config/BUILD_NAME.json. Required.",
        "os",
        _name,
        stage="os",
    ),
    S(
        "os_name",
        str,
        "",
        "Distribution: ubuntu, debian, centos, rockylinux. Required.",
        "os",
        _one_of("ubuntu", "debian", "centos", "rockylinux"),
        aliases=("distro_name",),
        stage="base",
    ),
    S("os_version", str, "", "Distribution version, e.g. 22.04, 12, 9. Required.", "os", stage="base"),
    S(
        "os_family",
        str,
        "debian",
        "Package family: debian (apt) or redhat (yum/dnf).",
        "os",
        _one_of("debian", "redhat"),
        stage="base",
    ),
    S(
        "install_method",
        str,
        "installer",
        "How the OS gets onto the disk: installer (ISO + boot_command + boot files), cloudimg (cloud image + "
        "cloud-init seed, qemu only), bootstrap (base disk built locally from distro packages, qemu only).",
        "os",
        _one_of("installer", "cloudimg", "bootstrap"),
        stage="base",
    ),
    S(
        "firmware",
        str,
        "bios",
        "Boot firmware of the build VM and the image: bios or efi (OVMF on qemu; an OVMF image path, as "
        "image-builder's qemu files give it, means efi).",
        "os",
        _one_of("bios", "efi"),
        stage="base",
    ),
    S(
        "efi_firmware_code",
        str,
        "",
        "efi, qemu builds: the OVMF code image the build VM boots (image-builder's qemu key); empty: the "
        "host's OVMF (Debian's ovmf package).",
        "os",
        _abs_path,
        stage="base",
        location=True,
    ),
    S(
        "efi_firmware_vars",
        str,
        "",
        "efi, qemu builds: the OVMF variable store template that goes with efi_firmware_code (copied per "
        "build, never written); empty: the code image alone, as -bios.",
        "os",
        _abs_path,
        stage="base",
        location=True,
    ),
    S(
        "guest_os_type",
        str,
        "other5xlinux-64guest",
        "VMware guest OS id written to the VMX/OVF.",
        "os",
        stage="finalize",
    ),
    S("iso_url", str, "", "installer: URL of the installer ISO.", "os", _url, stage="base"),
    S(
        "iso_checksum",
        str,
        "",
        "installer: checksum of the ISO as TYPE:HEX, bare HEX, or file:URL (a bare URL means file:URL).",
        "os",
        _checksum,
        stage="base",
    ),
    S(
        "boot_command",
        list,
        [],
        "installer: keys Packer types at the boot menu. {{ .HTTPIP }} and "
        "{{ .HTTPPort }} reach Packer's HTTP server, which serves the boot files.",
        "os",
        stage="base",
    ),
    S(
        "boot_wait",
        str,
        "10s",
        "installer: wait before typing boot_command.",
        "os",
        _duration,
        stage="base",
        location=True,
    ),
    S(
        "boot_files",
        list,
        [],
        "installer/cloudimg: boot files under packer/http/ (preseed, autoinstall "
        "user-data/meta-data, kickstart), rendered with the build's SSH key and served over HTTP.",
        "os",
        stage="base",
    ),
    S(
        "cloudimg_url",
        str,
        "",
        "cloudimg: URL of the cloud image (qcow2, or a raw disk), or a local path; downloaded once into the "
        "cache and checked against cloudimg_checksum.",
        "os",
        _url,
        stage="base",
        location=True,  # the image's digest (resolved from cloudimg_checksum) is in the base's ID instead
    ),
    S(
        "cloudimg_checksum",
        str,
        "",
        "cloudimg: the image's checksum as TYPE:HEX (sha256, sha512, sha1, md5), bare HEX, or file:URL of a "
        "SHA256SUMS/SHA512SUMS file (read for the image's file name). Required.",
        "os",
        _checksum,
        stage="base",
        location=True,  # likewise: the resolved digest names the image, not how it was given
    ),
    S(
        "provisioner",
        str,
        "vm",
        "bootstrap targets on qemu: how the os and kubernetes stages provision the root tree: vm (Ansible "
        "over SSH in a booted build VM) or chroot (Ansible's chroot connection at native speed, the tree "
        "never booted until the finished disk's one check boot). Other targets always use vm.",
        "os",
        _one_of("vm", "chroot"),
        stage="os",
    ),
    S(
        "bootstrap_suite",
        str,
        "",
        "bootstrap: Debian suite for mmdebstrap, e.g. bookworm.",
        "os",
        stage="base",
    ),
    S(
        "bootstrap_mirror",
        str,
        "http://deb.debian.org/debian",
        "bootstrap: Debian mirror for mmdebstrap.",
        "os",
        _url,
        stage="base",
        location=True,
    ),
    S(
        "bootstrap_network",
        str,
        "ifupdown",
        "bootstrap: the base's network stack, which cloud-init configures at boot: ifupdown (ifupdown and "
        "dhclient; cloud-init writes /etc/network/interfaces.d) or networkd (systemd-networkd and "
        "systemd-resolved; cloud-init writes /etc/systemd/network). Debian 13's cloud-init asks for DHCPv6, "
        "which ifupdown waits on for five minutes where no server answers: debian-13 uses networkd.",
        "os",
        _one_of("ifupdown", "networkd"),
        stage="base",
        new_in_ids=True,  # ifupdown, the stack of every base before the choice: their stages stay cached
    ),
    S(
        "bootstrap_packages",
        list,
        [],
        "bootstrap: extra packages in the base disk (kernel, sshd, cloud-init and "
        "python3 are always included).",
        "os",
        stage="base",
    ),
    S(
        "ssh_timeout",
        str,
        "60m",
        "How long Packer waits for SSH into the build VM.",
        "os",
        _duration,
        stage="os",
        location=True,
    ),
)
