"""kiln.bootstrap: disk layout, cache key, cache reuse. The real base build runs in tests/test_vm_build.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.build import bootstrap, stages
from kiln.core.errors import InputError
from kiln_runtime import RUNTIME

REPO = Path(__file__).resolve().parents[1]


def test_layout_is_bios_boot_esp_root_aligned_and_fills_the_disk():
    parts = bootstrap.layout(20480)
    assert [p.name for p in parts] == ["bios", "esp", "root"]
    assert [p.type_guid for p in parts] == [
        bootstrap.GUID_BIOS_BOOT,
        bootstrap.GUID_ESP,
        bootstrap.GUID_LINUX,
    ]
    for p in parts:
        assert p.start % 2048 == 0, f"{p.name} not MiB-aligned"
    for a, b in zip(parts, parts[1:], strict=False):
        assert a.start + a.size == b.start, "partitions must be contiguous"
    assert parts[0].size_bytes == 1024 * 1024
    assert parts[1].size_bytes == 100 * 1024 * 1024
    end = parts[2].start + parts[2].size
    assert end * 512 == (20480 - 1) * 1024 * 1024  # last MiB left for the backup GPT


def test_layout_rejects_tiny_disks_naming_the_key():
    with pytest.raises(InputError, match="disk_size"):
        bootstrap.layout(200)


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="sfdisk (fdisk package) not installed")
def test_sfdisk_writes_the_layout_to_a_file(tmp_path):
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(2048 * 1024 * 1024)
    parts = bootstrap.layout(2048)
    script = bootstrap.sfdisk_script(parts, "0F4E0C2A-7E22-4B0B-9E55-6F7C8A1B2C3D")
    subprocess.run(["sfdisk", "--quiet", str(disk)], input=script, text=True, check=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True).stdout)
    pt = table["partitiontable"]
    assert pt["label"] == "gpt"
    assert pt["id"].upper() == "0F4E0C2A-7E22-4B0B-9E55-6F7C8A1B2C3D"
    got = [(p["start"], p["size"], p["type"].upper(), p["name"]) for p in pt["partitions"]]
    assert got == [(p.start, p.size, p.type_guid, p.name) for p in parts]
    # every GUID comes from the disk's: the same script twice makes the same bytes
    again = tmp_path / "again.raw"
    with open(again, "wb") as f:
        f.truncate(2048 * 1024 * 1024)
    subprocess.run(["sfdisk", "--quiet", str(again)], input=script, text=True, check=True)
    assert _head(disk) == _head(again)
    assert bootstrap.disk_ids("k1") == bootstrap.disk_ids("k1") != bootstrap.disk_ids("k2")


def _head(path, size=1 << 20):
    """The first MiB (the GPT and its partition entries), not the whole sparse 2 GiB file (30 s to read)."""
    with open(path, "rb") as f:
        return f.read(size)


def _spec(**over):
    base = dict(suite="bookworm", mirror="http://deb.example/debian", packages=("a", "b"), disk_size_mib=4096)
    base.update(over)
    return bootstrap.BaseSpec(**base)


def test_cache_key_changes_with_every_input_and_only_then():
    key = _spec().key()
    assert _spec().key() == key
    for change in (
        {"suite": "trixie"},
        {"packages": ("a", "b", "c")},
        {"disk_size_mib": 8192},
        {"files_digest": "x"},
        {"layout_version": bootstrap.LAYOUT_VERSION + 1},
    ):
        assert _spec(**change).key() != key, change
    # where the packages come from is not what lands on the disk: another mirror reuses the base
    assert _spec(mirror="http://mirror.example/debian").key() == key
    assert _spec(network="networkd").key() != key
    # the stack every base had before there was a choice: those bases keep the key they were cached under
    # (this one's, made with layout 8 before bootstrap_network)
    assert _spec(layout_version=8).key() == "8858b422abe546c62f13f614"


def test_the_network_stack_chooses_its_packages():
    def spec(network):
        values = {"bootstrap_suite": "trixie", "disk_size": 8192, "bootstrap_network": network}
        return bootstrap.spec_from_config(values, REPO)

    ifupdown, networkd = spec("ifupdown"), spec("networkd")
    assert {"ifupdown", "isc-dhcp-client"} <= set(ifupdown.packages)
    assert "systemd-resolved" not in ifupdown.packages
    assert "systemd-resolved" in networkd.packages
    assert not {"ifupdown", "isc-dhcp-client"} & set(networkd.packages)
    assert networkd.network == "networkd" and networkd.key() != ifupdown.key()
    # the default is ifupdown, as every base before the choice
    assert bootstrap.spec_from_config({"bootstrap_suite": "trixie", "disk_size": 8192}, REPO) == ifupdown


def _etc(tmp_path: Path) -> Path:
    """An /etc as mmdebstrap leaves it: the build host's resolv.conf (systemd-resolved's postinst kept a
    copy of it beside its link), cloud-init's and ifupdown's folders."""
    etc = tmp_path / "etc"
    (etc / "cloud" / "cloud.cfg.d").mkdir(parents=True)
    (etc / "network").mkdir()
    (etc / "resolv.conf").write_text("nameserver 192.0.2.53\n")
    (etc / ".resolv.conf.systemd-resolved.bak").write_text("nameserver 192.0.2.53\n")
    return etc


def test_a_networkd_base_resolves_through_resolved_and_keeps_nothing_of_the_host(tmp_path):
    etc = _etc(tmp_path)
    bootstrap._network_files(etc, "networkd")
    assert (etc / "resolv.conf").is_symlink()
    assert str((etc / "resolv.conf").readlink()) == "../run/systemd/resolve/stub-resolv.conf"
    assert not (etc / ".resolv.conf.systemd-resolved.bak").exists()
    cfg = (etc / "cloud" / "cloud.cfg.d" / "05_kiln_network.cfg").read_text()
    assert "renderers: [networkd]" in cfg and "activators: [networkd]" in cfg
    assert not (etc / "network" / "interfaces").exists()
    assert "192.0.2.53" not in "".join(p.read_text() for p in etc.rglob("*") if p.is_file())
    hooks = bootstrap._network_hooks("networkd")
    assert hooks == ['--customize-hook=chroot "$1" systemctl enable systemd-networkd.service']


def test_an_ifupdown_base_has_an_empty_resolv_conf_and_sources_cloud_inits_interfaces(tmp_path):
    etc = _etc(tmp_path)
    bootstrap._network_files(etc, "ifupdown")
    assert not (etc / "resolv.conf").is_symlink() and (etc / "resolv.conf").read_text() == ""
    assert (etc / "resolv.conf").stat().st_mode & 0o777 == 0o644
    assert "source /etc/network/interfaces.d/*" in (etc / "network" / "interfaces").read_text()
    assert (etc / "network" / "interfaces.d").is_dir()
    assert not (etc / "cloud" / "cloud.cfg.d" / "05_kiln_network.cfg").exists()
    assert bootstrap._network_hooks("ifupdown") == []


def test_spec_from_config_adds_required_packages_and_hashes_boot_files(tmp_path):
    spec = bootstrap.spec_from_config(
        {"bootstrap_suite": "bookworm", "bootstrap_packages": ["htop"], "disk_size": 8192}, REPO
    )
    assert "htop" in spec.packages and "linux-image-amd64" in spec.packages and "cloud-init" in spec.packages
    assert list(spec.packages) == sorted(spec.packages)
    assert spec.disk_size_mib == 8192
    # the GRUB defaults are an input: editing them makes a new key
    fake_repo = tmp_path / "repo"
    shutil.copytree(REPO / "bootstrap", fake_repo / "bootstrap")
    values = {"bootstrap_suite": "bookworm", "bootstrap_packages": ["htop"], "disk_size": 8192}
    same = bootstrap.spec_from_config(values, fake_repo)
    assert same.key() == spec.key()
    (fake_repo / "bootstrap" / "grub.cfg").write_text("GRUB_TIMEOUT=5\n")
    changed = bootstrap.spec_from_config(values, fake_repo)
    assert changed.key() != spec.key()


def test_ensure_base_reuses_a_cached_entry_and_says_so(tmp_path):
    spec = _spec()
    entry = tmp_path / "bootstrap" / spec.key()
    entry.mkdir(parents=True)
    (entry / "base.qcow2").write_bytes(b"qcow")
    (entry / "info.json").write_text(json.dumps({"root_uuid": "u"}))
    said: list[str] = []
    base = bootstrap.ensure_base(spec, tmp_path, REPO, say=said.append, runtime=RUNTIME)
    assert base.cached and base.disk == entry / "base.qcow2" and base.root_uuid == "u"
    assert any("reusing cached base" in s for s in said)


def test_half_built_entries_are_not_reused(tmp_path):
    spec = _spec()
    entry = tmp_path / "bootstrap" / spec.key()
    entry.mkdir(parents=True)
    (entry / "base.qcow2").write_bytes(b"qcow")  # no info.json: never finished
    assert stages.read_base(entry) == (None, f"{entry / 'info.json'}: missing or unreadable")
