"""kiln.ova: real qemu-img on a small disk; tar order, .mf hashes, OVF values from the config."""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
import xml.etree.ElementTree as ET

import pytest

from kiln.artifacts import ova
from kiln.config.typed import Settings
from kiln.core.errors import BuildError, InputError
from kiln_runtime import RUNTIME

NS = {
    "ovf": "http://schemas.dmtf.org/ovf/envelope/1",
    "rasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
    "vmw": "http://www.vmware.com/schema/ovf",
}
OVF = "{http://schemas.dmtf.org/ovf/envelope/1}"
VMW = "{http://www.vmware.com/schema/ovf}"

VALUES = {
    "cpus": 4,
    "memory": 8192,
    "firmware": "efi",
    "guest_os_type": "debian12-64",
    "os_name": "debian",
    "os_version": "12",
    "kubernetes_semver": "v1.30.2",
}


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    path = tmp_path_factory.mktemp("disk") / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    # some non-zero data so the VMDK has a grain to carry
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 2M", str(path)], check=True, capture_output=True
    )
    return path


@pytest.fixture(scope="module")
def built(small_disk, tmp_path_factory):
    out = tmp_path_factory.mktemp("ova") / "node.ova"
    ova.build_ova(small_disk, out, "debian-12+kube-v1.30.2", Settings.from_values(VALUES), runtime=RUNTIME)
    return out


def test_tar_order_is_descriptor_manifest_disk(built):
    names, _ = ova.read_ova(built)
    assert names == [
        "debian-12+kube-v1.30.2.ovf",
        "debian-12+kube-v1.30.2.mf",
        "debian-12+kube-v1.30.2-disk1.vmdk",
    ]
    with tarfile.open(built) as tar:
        assert all(m.uid == 0 and m.gid == 0 and m.isfile() for m in tar.getmembers())


def test_manifest_holds_sha256_of_every_other_member(built):
    with tarfile.open(built) as tar:
        contents = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    mf = contents.pop("debian-12+kube-v1.30.2.mf").decode()
    lines = mf.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith("SHA256(")
        name = line[len("SHA256(") : line.index(")= ")]
        digest = line.split(")= ", 1)[1]
        assert hashlib.sha256(contents[name]).hexdigest() == digest


def test_ovf_values_come_from_the_config(built, small_disk):
    _, small = ova.read_ova(built)
    root = ET.fromstring(small["debian-12+kube-v1.30.2.ovf"])
    items = {int(i.find("rasd:ResourceType", NS).text): i for i in root.iter(f"{OVF}Item")}
    assert items[3].find("rasd:VirtualQuantity", NS).text == "4"
    assert items[4].find("rasd:VirtualQuantity", NS).text == "8192"
    assert items[17].find("rasd:HostResource", NS).text == "ovf:/disk/vmdisk1"
    configs = {c.get(f"{VMW}key"): c.get(f"{VMW}value") for c in root.iter(f"{VMW}Config")}
    assert configs["firmware"] == "efi"
    osec = root.find(".//ovf:OperatingSystemSection", NS)
    assert osec.get(f"{VMW}osType") == "debian12-64" and osec.get(f"{OVF}id") == "96"
    disk = root.find(".//ovf:DiskSection/ovf:Disk", NS)
    assert int(disk.get(f"{OVF}capacity")) == 64 * 1024 * 1024
    assert disk.get(f"{OVF}format").endswith("#streamOptimized")
    ref = root.find(".//ovf:References/ovf:File", NS)
    with tarfile.open(built) as tar:
        vmdk = tar.getmember("debian-12+kube-v1.30.2-disk1.vmdk")
    assert ref.get(f"{OVF}href") == vmdk.name and int(ref.get(f"{OVF}size")) == vmdk.size
    props = {p.get(f"{OVF}key"): p.get(f"{OVF}value") for p in root.iter(f"{OVF}Property")}
    assert props["KUBERNETES_SEMVER"] == "v1.30.2" and props["KUBERNETES_VERSION"] == "kube-v1.30.2"
    assert props["DISTRO_NAME"] == "debian" and props["BUILD_DATE"] and "CONTAINERD_VERSION" in props


def test_vmdk_is_stream_optimized_and_converts_back_to_the_same_data(built, small_disk, tmp_path):
    with tarfile.open(built) as tar:
        tar.extract("debian-12+kube-v1.30.2-disk1.vmdk", tmp_path, filter="data")
    vmdk = tmp_path / "debian-12+kube-v1.30.2-disk1.vmdk"
    head = vmdk.read_bytes()[:2048]
    assert head[:4] == b"KDMV" and b'createType="streamOptimized"' in head
    subprocess.run(["qemu-img", "compare", "-q", str(small_disk), str(vmdk)], check=True)


def test_bios_firmware_and_bad_firmware(small_disk, tmp_path):
    text = ova.ovf_descriptor(
        "n",
        Settings.from_values({**VALUES, "firmware": "bios"}),
        vmdk_name="d.vmdk",
        vmdk_size=1,
        capacity_bytes=2,
    )
    assert 'vmw:key="firmware" vmw:value="bios"' in text
    with pytest.raises(InputError, match="firmware"):
        ova.ovf_descriptor(
            "n",
            Settings.from_values({**VALUES, "firmware": "coreboot"}),
            vmdk_name="d",
            vmdk_size=1,
            capacity_bytes=2,
        )


def test_no_partial_ova_on_failure(tmp_path):
    with pytest.raises(BuildError, match="missing.qcow2"):
        ova.build_ova(
            tmp_path / "missing.qcow2", tmp_path / "x.ova", "x", Settings.from_values(VALUES), runtime=RUNTIME
        )
    assert not (tmp_path / "x.ova").exists()
    assert list(tmp_path.iterdir()) == []
