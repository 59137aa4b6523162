"""The OVA: an OVF 1.0 descriptor, a stream-optimized VMDK and a SHA256 manifest, as one tar.

Tar member order follows the OVF specification (DMTF DSP0243, "OVF packages"): the descriptor first, the
manifest right after it, then the disk files in the order of the descriptor's References section.

The descriptor's hardware comes from the config: `cpus`, `memory` (MiB), the disk's virtual size,
`firmware` (bios|efi, as VMware's `firmware` extra config) and `guest_os_type` (a VMware guest id such as
`debian12-64`, with the matching CIM operating-system id in ovf:id).
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO
from xml.sax.saxutils import escape, quoteattr

from kiln.artifacts import vmdk as vmdk_format
from kiln.config.typed import Settings
from kiln.core import proc
from kiln.core.builddir import sha256_file
from kiln.core.errors import BuildError, InputError, Interrupted
from kiln.core.runtime import Runtime

VMDK_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
VIRTUAL_HW = "vmx-13"

# CIM_OperatingSystem ids (DMTF) for VMware guest ids, by prefix; 101 = "Other Linux 64-Bit".
CIM_OS_IDS = (
    ("debian", 96),
    ("ubuntu", 94),
    ("centos", 107),
    ("rhel", 80),
    ("rocky", 80),
    ("other", 101),
)


def cim_os_id(guest_os_type: str) -> int:
    for prefix, number in CIM_OS_IDS:
        if guest_os_type.startswith(prefix):
            return number
    return 101


def disk_virtual_size(disk: Path, runtime: Runtime) -> int:
    info = json.loads(proc.output(["qemu-img", "info", "--output=json", str(disk)], runtime=runtime.live()))
    return int(info["virtual-size"])


def ovf_descriptor(
    name: str,
    settings: Settings,
    *,
    vmdk_name: str,
    vmdk_size: int,
    capacity_bytes: int,
    input_hash: str = "",
    built: float | None = None,
) -> str:
    """The OVF 1.0 descriptor text for one VM with one stream-optimized disk: the VM's CPUs, memory,
    firmware and guest type are the build's settings (no defaults of its own). BUILD_DATE and
    BUILD_TIMESTAMP are `built` (the build's source date, for reproducible OVAs), else now."""
    cpus, memory, firmware, guest = settings.cpus, settings.memory, settings.firmware, settings.guest_os_type
    if firmware not in ("bios", "efi"):
        raise InputError(f"firmware: must be bios or efi for an OVA, not {firmware!r}")
    os_label = f"{settings.os_name or 'linux'} {settings.os_version}".strip()
    semver = settings.kubernetes_semver
    n = quoteattr(name)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="kiln" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common"
  xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vmw="http://www.vmware.com/schema/ovf"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href={quoteattr(vmdk_name)} ovf:id="file1" ovf:size="{vmdk_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity_bytes}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1"
      ovf:fileRef="file1" ovf:format="{VMDK_FORMAT}"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="nic0">
      <Description>The nic0 network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id={n}>
    <Info>A Kubernetes {escape(semver)} node image built by kiln</Info>
    <Name>{escape(name)}</Name>
    <OperatingSystemSection ovf:id="{cim_os_id(guest)}" vmw:osType={quoteattr(guest)}>
      <Info>The kind of installed guest operating system</Info>
      <Description>{escape(os_label)}</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{escape(name)}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>{VIRTUAL_HW}</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{memory}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{memory}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>nic0</rasd:Connection>
        <rasd:Description>VmxNet3 ethernet adapter on "nic0"</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="{firmware}"/>
      <vmw:Config ovf:required="false" vmw:key="tools.syncTimeWithHost" vmw:value="false"/>
    </VirtualHardwareSection>
    <ProductSection>
      <Info>Information about the installed software</Info>
      <Product>{escape(os_label)} Kubernetes node</Product>
      <Version>{escape(semver)}</Version>
      <FullVersion>{escape(name)}</FullVersion>
{_properties(settings, name, input_hash, built)}
    </ProductSection>
  </VirtualSystem>
</Envelope>
"""


def _properties(settings: Settings, name: str, input_hash: str, built: float | None) -> str:
    """The ProductSection properties image-builder writes for vCenter (read-only, strings)."""
    from kiln.core.builddir import custom_data

    values = settings.mapping()
    values["build_name"] = values["build_name"] or name.split("+kube-")[0]
    data = custom_data(values, input_hash, built)
    props = {
        "BUILD_DATE": data["build_date"],
        "BUILD_TIMESTAMP": data["build_timestamp"],
        "CNI_VERSION": data["kubernetes_cni_semver"],
        "CONTAINERD_VERSION": data["containerd_version"],
        "DISTRO_ARCH": data["distro_arch"],
        "DISTRO_NAME": data["distro_name"],
        "DISTRO_VERSION": data["distro_version"],
        "IMAGE_BUILDER_VERSION": data["ib_version"],
        "KUBERNETES_SEMVER": data["kubernetes_semver"],
        "KUBERNETES_SOURCE_TYPE": data["kubernetes_source_type"],
        "KUBERNETES_VERSION": data["kubernetes_typed_version"],
        "OS_NAME": data["os_name"],
        "OS_VERSION": data["os_version"],
        "IMAGE_NAME": name,
    }
    line = '      <Property ovf:key="{}" ovf:type="string" ovf:userConfigurable="false" ovf:value={}/>'
    return "\n".join(line.format(key, quoteattr(v)) for key, v in props.items())


def manifest_text(files: Mapping[str, str]) -> str:
    """The .mf: one `SHA256(NAME)= HEX` line per file, in OVA order."""
    return "".join(f"SHA256({name})= {digest}\n" for name, digest in files.items())


def fix_content_id(vmdk: Path, seed: str) -> None:
    """Overwrite the VMDK descriptor's random CID with kiln.artifacts.vmdk.content_id(`seed`). qemu-img
    writes it unpadded (`%x`: 1 to 8 digits), so the descriptor text is rewritten in its NUL-padded area
    (the sparse header's descriptorOffset and descriptorSize, in sectors) and re-padded."""
    import re
    import struct

    cid = vmdk_format.content_id(seed).encode()
    with open(vmdk, "r+b") as fh:
        header = fh.read(512)
        if header[:4] != b"KDMV":
            raise BuildError(f"{vmdk}: not a sparse VMDK (no KDMV header)")
        offset, size = struct.unpack_from("<QQ", header, 28)
        fh.seek(offset * 512)
        area = fh.read(size * 512)
        text = area.split(b"\0", 1)[0]
        fixed, count = re.subn(rb"\nCID=[0-9a-f]{1,8}\n", b"\nCID=" + cid + b"\n", text, count=1)
        if count != 1 or len(fixed) > len(area):
            raise BuildError(f"{vmdk}: no CID in the VMDK descriptor where qemu-img writes it")
        fh.seek(offset * 512)
        fh.write(fixed + b"\0" * (len(area) - len(fixed)))


def build_ova(
    disk: Path,
    out: Path,
    name: str,
    settings: Settings,
    *,
    input_hash: str = "",
    epoch: int = 0,
    log_file: IO[str] | None = None,
    say: Callable[[str], None] | None = None,
    stop: Callable[[], bool] | None = None,
    runtime: Runtime,
) -> Path:
    """Write `out` (NAME.ova) from `disk` (any format qemu-img reads). Atomic: temp file, then rename;
    an error leaves no OVA. The VMDK is written from a qcow2's clusters (kiln.artifacts.vmdk: the finished
    build's compressed qcow2, whose deflate streams it reuses) or, from any other disk, by `qemu-img
    convert`; `say` hears which, and what it took. `stop` is asked between grains: true stops the VMDK.
    Reproducible: the members' times are `epoch` and the VMDK's content ID comes from `input_hash`
    (qemu-img draws it at random), so the same disk makes the same bytes."""
    if not disk.is_file():
        raise BuildError(f"{disk}: no disk to package into an OVA")
    if runtime.dry_run:
        print(f"would write {out} (from {disk})")
        return out
    with tempfile.TemporaryDirectory(prefix=".ova-", dir=out.parent) as tmp:
        work = Path(tmp)
        vmdk = work / f"{name}-disk1.vmdk"
        started = time.monotonic()
        reason = vmdk_format.unreadable_reason(disk)
        if not reason:
            written = vmdk_format.write_from_qcow2(
                disk, vmdk, vmdk_format.content_id(input_hash or name), stop
            )
            how = (
                f"from the qcow2's clusters in {time.monotonic() - started:.1f}s ({written.grains} grains, "
                f"{written.deflated} of them stored uncompressed in the qcow2 and deflated here)"
            )
        else:
            argv: list[str | os.PathLike[str]] = [
                "qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", disk, vmdk
            ]  # fmt: skip
            proc.run(argv, log_file=log_file, watch=stop, runtime=runtime)
            fix_content_id(vmdk, input_hash or name)
            how = f"by qemu-img convert in {time.monotonic() - started:.1f}s (the disk: {reason})"
        if say is not None:
            say(f"OVA: its stream-optimized VMDK written {how}")

        def check_stop() -> None:  # after the last grain, the hashes and the tar still take seconds
            if stop is not None and stop():
                raise Interrupted(f"{out}: stopped")

        ovf = work / f"{name}.ovf"
        ovf.write_text(
            ovf_descriptor(
                name,
                settings,
                vmdk_name=vmdk.name,
                vmdk_size=vmdk.stat().st_size,
                capacity_bytes=disk_virtual_size(disk, runtime),
                input_hash=input_hash,
                built=epoch or None,
            )
        )
        check_stop()
        mf = work / f"{name}.mf"
        mf.write_text(manifest_text({ovf.name: sha256_file(ovf), vmdk.name: sha256_file(vmdk)}))
        partial = work / out.name
        with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
            for member in (ovf, mf, vmdk):  # OVF order: descriptor, manifest, then disks
                info = tar.gettarinfo(str(member), arcname=member.name)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mode = 0o644
                info.mtime = epoch
                with open(member, "rb") as f:
                    tar.addfile(info, f)
        check_stop()
        os.replace(partial, out)
        return out


def read_ova(path: Path) -> tuple[list[str], dict[str, bytes]]:
    """Member names in tar order and the small members' contents (.ovf, .mf), for checks and tests."""
    with tarfile.open(path) as tar:
        names = tar.getnames()
        small: dict[str, bytes] = {}
        for member in tar.getmembers():
            if member.name.endswith((".ovf", ".mf")):
                f = tar.extractfile(member)
                if f is not None:
                    small[member.name] = f.read()
    return names, small
