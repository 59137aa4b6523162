"""Per-host media (inventory, `kiln hosts`, `kiln serve --hosts`) on a small live ISO made by kiln's own
make_iso from stand-in kernel, initrd and squashfs files: no VM. The booted counterparts are in
tests/test_hosts_vm.py."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pycdlib
import pytest
import yaml

from kiln import cli
from kiln.artifacts import compare, formats
from kiln.config import inventory
from kiln.core.builddir import BuildDir
from kiln.core.errors import InputError
from kiln.vm import cidata, hosts, serve
from kiln_runtime import RUNTIME

TEMPLATES = cidata.template_dir(RUNTIME.root)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDpDIQEuT9LSe0g/uYd9l6d8IgQK4X8ovxFTZ0BeS1gq kiln-test"

GOOD = """
hosts:
  - name: node-a
    mac: "52:54:00:12:34:56"
    addresses: ["10.0.2.50/24"]
    gateway: "10.0.2.2"
    nameservers: ["10.0.2.3"]
    user_data:
      runcmd: [["touch", "/run/kiln-host-a"]]
      write_files: [{path: /etc/kiln/role, content: "worker\\n"}]
  - name: node-b
    macs: ["52:54:00:12:34:57", "52-54-00-AB-CD-EF"]
"""


def _inv(tmp_path: Path, text: str, name: str = "inv.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> BuildDir:
    """A build dir with a live ISO from make_iso (stand-in kernel, initrd, squashfs) and its netboot set."""
    root = tmp_path_factory.mktemp("hostsbuild")
    path = root / "debian-12+kube-v1.30.2"
    (path / "netboot").mkdir(parents=True)
    manifest = {"builds": [{"custom_data": {"build_name": "debian-12", "kubernetes_semver": "v1.30.2"}}]}
    (path / "packer-manifest.json").write_text(json.dumps(manifest))
    (path / "config.json").write_text(json.dumps({"extra_kernel_boot_params": "quiet"}))
    for name, size in (("vmlinuz", 300_000), ("initrd", 500_000), ("filesystem.squashfs", 2_000_000)):
        (path / "netboot" / name).write_bytes(hashlib.sha256(name.encode()).digest() * (size // 32))
    net = path / "netboot"
    iso = path / "debian-12+kube-v1.30.2.iso"
    formats.make_iso("debian-12+kube-v1.30.2", net / "vmlinuz", net / "initrd", net / "filesystem.squashfs",
                     iso, root / "work", RUNTIME, None, "quiet", 1700000000, "t")  # fmt: skip
    return BuildDir.open(path)


def _iso_file(iso: Path, path: str) -> bytes:
    import io

    reader = pycdlib.PyCdlib()
    reader.open(str(iso))
    try:
        out = io.BytesIO()
        reader.get_file_from_iso_fp(out, rr_path=path)
        return out.getvalue()
    finally:
        reader.close()


# --- the inventory --------------------------------------------------------------------------------------


def test_a_good_inventory_reads_in_yaml_and_json(tmp_path: Path) -> None:
    inv = inventory.load(_inv(tmp_path, GOOD))
    a, b = inv.hosts
    assert a.name == "node-a" and a.macs == ("52:54:00:12:34:56",) and str(a.gateway) == "10.0.2.2"
    assert b.macs == ("52:54:00:12:34:57", "52:54:00:ab:cd:ef") and b.dhcp
    assert inv.by_mac("52-54-00-ab-cd-ef") is b and inv.by_mac("nonsense") is None
    doc = yaml.safe_load(GOOD)
    again = inventory.load(_inv(tmp_path, json.dumps(doc), "inv.json"))
    assert [h.digest() for h in again.hosts] == [h.digest() for h in inv.hosts]


def test_an_unquoted_mac_yaml_reads_as_a_number_is_named(tmp_path: Path) -> None:
    path = _inv(tmp_path, "hosts:\n  - name: n1\n    mac: 52:54:00:12:34:56\n")
    with pytest.raises(InputError) as err:
        inventory.load(path)
    assert "hosts[0] (n1): mac:" in err.value.message and "quote" in err.value.message


A = "hosts:\n  - name: a\n    mac: '52:54:00:00:00:01'"
BAD = [
    ("hosts: []", "hosts: must be a non-empty list"),
    ("hostz: []", "hostz: unknown key"),
    ("hosts:\n  - name: Node_A\n    mac: '52:54:00:00:00:01'", "hosts[0] (Node_A): name:"),
    ("hosts:\n  - name: a\n    mac: '52:54:00:00:00:0g'", "(a): mac: '52:54:00:00:00:0g' is not a MAC"),
    ("hosts:\n  - name: a\n    mac: '01:00:5e:00:00:01'", "multicast"),
    ("hosts:\n  - name: a", "hosts[0] (a): mac: every host needs its MAC"),
    (f"{A}\n    adresses: []", "hosts[0] (a): adresses: unknown key"),
    (f"{A}\n    addresses: ['10.0.2.50']", "needs its prefix"),
    (f"{A}\n    addresses: ['10.0.2.50/33']", "valid CIDR prefix"),
    (f"{A}\n    addresses: ['10.0.2.0/24']", "network or broadcast"),
    (f"{A}\n    addresses: ['10.0.2.5/24']\n    gateway: '10.0.3.1'",
     "hosts[0] (a): gateway: 10.0.3.1 is outside the host's subnet (10.0.2.0/24)"),
    (f"{A}\n    gateway: '10.0.3.1'", "a gateway needs static"),
    (f"{A}\n    nameservers: ['x']", "nameservers: 'x' is not an IP"),
    (f"{A}\n    user_data: [1]", "user_data: must be a mapping"),
    (f"{A}\n  - name: a\n    mac: '52:54:00:00:00:02'",
     "hosts[1] (a): name: a is already hosts[0] (a)'s"),
    (f"{A}\n  - name: b\n    mac: '52-54-00-00-00-01'",
     "hosts[1] (b): mac: 52:54:00:00:00:01 is already hosts[0] (a)'s"),
    ("hosts:\n  - {name: a, mac: '52:54:00:00:00:01', addresses: ['10.0.2.5/24']}\n"
     "  - {name: b, mac: '52:54:00:00:00:02', addresses: ['10.0.2.5/16']}",
     "hosts[1] (b): addresses: 10.0.2.5"),
    (f"{A}\n    macs: ['52:54:00:00:00:02']", "not both"),
    ("hosts:\n  - [1, 2]", "hosts[0]: must be a mapping"),
    (f"{A}\n    user_data: {{1: x}}", "hosts[0] (a): user_data: key 1 is not a string"),
    (f"{A}\n    addresses: ['127.0.0.5/8']", "loopback, multicast or unspecified"),
    (f"{A}\n    addresses: ['2001:db8::5/64']\n    gateway: '2001:db9::1'", "outside the host's subnet"),
    ("hosts:\n  - name: a\n    macs: ['52:54:00:00:00:0x']", "hosts[0] (a): macs: '52:54:00:00:00:0x'"),
    ("hosts: {a: 1", "malformed YAML"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_inventories_are_exit_2_naming_file_host_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = _inv(tmp_path, text)
    with pytest.raises(InputError) as err:
        inventory.load(path)
    assert str(path) in err.value.message and expected in err.value.message, err.value.message
    assert cli.main(["hosts", str(path), str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_ipv6_dates_and_dhcp_name_servers(tmp_path: Path) -> None:
    text = """hosts:
  - name: v6
    mac: "52:54:00:00:00:06"
    addresses: ["2001:db8::6/64"]
    gateway: "fe80::1"
    user_data: {write_files: [{path: /etc/when, content: 2026-12-03}]}
  - name: dhcp
    mac: "52:54:00:00:00:07"
    nameservers: ["192.0.2.53"]
"""
    v6, dhcp = inventory.load(_inv(tmp_path, text)).hosts
    assert v6.user_data["write_files"][0]["content"] == "2026-12-03"  # YAML's date, as its text
    net = hosts.network_config(v6)["ethernets"]["nic0"]
    assert net["gateway6"] == "fe80::1" and net["addresses"] == ["2001:db8::6/64"]
    assert hosts.network_config(dhcp)["ethernets"]["nic0"] == {
        "match": {"macaddress": "52:54:00:00:00:07"}, "dhcp4": True,
        "nameservers": {"addresses": ["192.0.2.53"]},
    }  # fmt: skip


def test_a_kernel_command_line_past_the_limit_is_named(tmp_path: Path) -> None:
    digits = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1, 200)]  # gzip finds no pattern
    many = ", ".join(f'"2001:db8::{d[:4]}:{d[4:8]}:{d[8:12]}:{d[12:16]}/64"' for d in digits)
    text = f"hosts:\n  - name: big\n    mac: '52:54:00:00:00:08'\n    addresses: [{many}]\n"
    host = inventory.load(_inv(tmp_path, text)).hosts[0]
    s = hosts.seed(host, values={}, keys=[KEY], user="kiln", templates=TEMPLATES)
    with pytest.raises(InputError, match="host big: its kernel command line would be"):
        hosts.iso_patch("debian-12", "", host, s)
    with pytest.raises(InputError, match="host big: its kernel command line would be"):
        hosts.ipxe_host("debian-12", "http://10.0.2.2:8080", host, s, datasource="nocloud")


def test_a_layered_netboot_host_keeps_live_boot_off_the_network(tmp_path: Path) -> None:
    """A base + overlay set brings its images as initrds (no network in the initramfs): live-boot is told
    `nonetworking`, as on the ISO, so cloud-init's network config is the one that counts; a plain set
    fetches its squashfs over DHCP in the initramfs and keeps `ip=dhcp`."""
    a = inventory.load(_inv(tmp_path, GOOD)).hosts[0]
    s = hosts.seed(a, values={}, keys=[KEY], user="kiln", templates=TEMPLATES)
    layered = hosts.ipxe_host(
        "debian-12", "http://10.0.2.2:8080", a, s, images=["base", "overlay"], datasource="nocloud"
    )
    kernel = next(ln for ln in layered.splitlines() if ln.startswith("kernel "))
    assert " nonetworking " in kernel and "network-config=" in kernel and "ip=dhcp" not in kernel
    plain = hosts.ipxe_host("debian-12", "http://10.0.2.2:8080", a, s, datasource="nocloud-net")
    kernel = next(ln for ln in plain.splitlines() if ln.startswith("kernel "))
    assert "nonetworking" not in kernel and "ip=dhcp" in kernel


def test_a_missing_or_foreign_inventory_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="inv.yaml"):
        inventory.load(tmp_path / "inv.yaml")
    with pytest.raises(InputError, match="YAML .* or JSON"):
        inventory.load(_inv(tmp_path, GOOD, "inv.txt"))


# --- seeds, ISO slots, iPXE ----------------------------------------------------------------------------


def test_the_seed_carries_hostname_network_by_mac_and_merged_user_data(tmp_path: Path) -> None:
    a, b = inventory.load(_inv(tmp_path, GOOD)).hosts
    s = hosts.seed(a, values={"build_name": "debian-12"}, keys=[KEY], user="kiln", templates=TEMPLATES)
    meta = yaml.safe_load(s.files["meta-data"])
    assert meta["local-hostname"] == "node-a" and meta["instance-id"].startswith("kiln-node-a-")
    user = yaml.safe_load(s.files["user-data"])
    assert s.files["user-data"].startswith("#cloud-config\n")
    assert ["touch", "/run/kiln-host-a"] in user["runcmd"]
    assert {"/etc/kiln/seed", "/etc/kiln/role"} <= {f["path"] for f in user["write_files"]}  # lists append
    assert KEY in user["ssh_authorized_keys"]
    nic = yaml.safe_load(s.files["network-config"])["ethernets"]["nic0"]
    assert nic["match"] == {"macaddress": "52:54:00:12:34:56"} and nic["addresses"] == ["10.0.2.50/24"]
    assert nic["gateway4"] == "10.0.2.2" and nic["nameservers"] == {"addresses": ["10.0.2.3"]}
    assert yaml.safe_load(gzip.decompress(base64.b64decode(s.network_b64))) == yaml.safe_load(
        s.files["network-config"]
    )
    again = hosts.seed(a, values={"build_name": "debian-12"}, keys=[KEY], user="kiln", templates=TEMPLATES)
    assert again.digest == s.digest  # same inputs, same seed
    sb = hosts.seed(b, values={"build_name": "debian-12"}, keys=[KEY], user="kiln", templates=TEMPLATES)
    nets = yaml.safe_load(sb.files["network-config"])["ethernets"]
    assert [n["dhcp4"] for n in nets.values()] == [True, True]


def test_kiln_hosts_writes_every_hosts_media_and_the_iso_differs_only_in_its_slots(
    build: BuildDir, tmp_path: Path
) -> None:
    inv = _inv(tmp_path, GOOD)
    pub = tmp_path / "k.pub"
    pub.write_text(KEY + "\n")
    out = tmp_path / "out"
    argv = ["hosts", str(inv), str(build.path), "-o", str(out), "--ssh-public-key", str(pub),
            "--base-url", "http://10.0.2.2:8080"]  # fmt: skip
    assert cli.main(argv) == 0
    base = build.path / f"{build.name}.iso"
    a = out / "node-a"
    names = {p.name for p in a.iterdir()}
    assert {"node-a.iso", "cidata.iso", "boot.ipxe", "01-52-54-00-12-34-56", "user-data", "meta-data",
            "network-config"} <= names  # fmt: skip
    assert {"01-52-54-00-12-34-57", "01-52-54-00-ab-cd-ef"} <= {p.name for p in (out / "node-b").iterdir()}
    # the ISO: the base's bytes but for the three slots
    where = hosts.slots(base)
    one, two = base.read_bytes(), (a / "node-a.iso").read_bytes()
    assert len(one) == len(two)
    spans = sorted(where.values())
    for offset, size in spans:  # blank the slots: what is left is the same bytes
        one = one[:offset] + bytes(size) + one[offset + size :]
        two = two[:offset] + bytes(size) + two[offset + size :]
    assert one == two and (a / "node-a.iso").read_bytes() != base.read_bytes()
    cfg = _iso_file(a / "node-a.iso", "/boot/grub/grub.cfg").decode()
    assert "'ds=nocloud;s=file:///run/live/medium/kiln/seed/'" in cfg and "network-config=" in cfg
    assert " nonetworking " in cfg  # live-boot leaves the network to cloud-init
    assert "quiet" in cfg  # the build's extra_kernel_boot_params stay
    assert _iso_file(a / "node-a.iso", "/kiln/seed/meta-data").rstrip(b"\n") == (
        a / "meta-data"
    ).read_bytes().rstrip(b"\n")
    label, seed = cidata.read_iso(a / "cidata.iso")
    assert label == "cidata" and seed["network-config"] == (a / "network-config").read_bytes()
    ipxe = (a / "boot.ipxe").read_text()
    assert "ds=nocloud-net;s=${base}/hosts/node-a/" in ipxe and "set base http://10.0.2.2:8080" in ipxe
    chain = (out / "boot.ipxe").read_text()
    assert "iseq ${netX/mac} 52:54:00:ab:cd:ef && goto host1 ||" in chain
    assert ":host1\nset host node-b\nchain ${base}/hosts/node-b/boot.ipxe || goto failed" in chain
    assert (a / "user-data").stat().st_mode & 0o777 == 0o600 and a.stat().st_mode & 0o777 == 0o700
    # a second run replaces kiln's own output; a foreign directory is refused
    assert cli.main(argv) == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine").write_text("x")
    assert (
        cli.main(["hosts", str(inv), str(build.path), "-o", str(foreign), "--ssh-public-key", str(pub)]) == 2
    )
    assert [p.name for p in foreign.iterdir()] == ["mine"]


def test_a_seed_bigger_than_its_slot_is_named(build: BuildDir, tmp_path: Path) -> None:
    big = GOOD.replace('runcmd: [["touch", "/run/kiln-host-a"]]', "bootcmd: ['" + "x" * 300_000 + "']")
    inv = inventory.load(_inv(tmp_path, big))
    with pytest.raises(InputError, match="host node-a: kiln/seed/user-data: .* more than the 262144"):
        hosts.prepare(inv, build, tmp_path / "out", keys=[KEY], user="kiln", base_url="", templates=TEMPLATES)
    assert not (tmp_path / "out").exists()


def test_an_iso_without_slots_is_named(tmp_path: Path) -> None:
    iso = cidata.write_iso(tmp_path / "x.iso", {"user-data": "x"})
    with pytest.raises(InputError, match="no 8192-byte /boot/grub/grub.cfg"):
        hosts.slots(iso)


def test_without_base_url_the_scripts_wait_for_the_chain_to_set_it(tmp_path: Path) -> None:
    a = inventory.load(_inv(tmp_path, GOOD)).hosts[0]
    s = hosts.seed(a, values={}, keys=[KEY], user="kiln", templates=TEMPLATES)
    text = hosts.ipxe_host("debian-12", "", a, s, datasource="nocloud-net")
    assert text.startswith("#!ipxe") and "isset ${base} || goto nobase" in text and "|| set base" not in text


# --- kiln serve --hosts ---------------------------------------------------------------------------------


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_serve_hosts_answers_by_name_and_mac_refuses_the_rest_and_shares_one_generation(
    build: BuildDir, tmp_path: Path
) -> None:
    inv_path = _inv(tmp_path, GOOD)
    said: list[str] = []
    factory = hosts.Factory(inv_path, build, keys=[KEY], user="kiln", templates=TEMPLATES, say=said.append)
    server_said: list[str] = []
    with serve.Server(build, hosts=factory, say=server_said.append) as server:
        url = f"http://127.0.0.1:{server.port}"
        status, chain = _get(f"{url}/boot.ipxe")
        assert status == 200 and b"iseq ${netX/mac} 52:54:00:12:34:56 && goto host0" in chain
        assert _get(f"{url}/hosts/node-a/meta-data")[1].startswith(b"instance-id:")
        by_mac = _get(f"{url}/hosts/01-52-54-00-12-34-56")
        assert by_mac == _get(f"{url}/hosts/node-a/boot.ipxe") and by_mac[0] == 200
        assert _get(f"{url}/hosts/node-a/vendor-data") == (200, b"")
        refused = ("/hosts/nobody/meta-data", "/hosts/01-52-54-00-99-99-99", "/hosts/node-a/../../etc/passwd",
                   "/hosts/node-a/%2e%2e/x", "/hosts/..%2fnode-a/meta-data", "/hosts/node-a/.hidden",
                   "/hosts/nobody.iso", "/hosts/node-a/secret", "/etc/passwd",
                   "/hosts/node-a/01-52-54-00-12-34-57")  # fmt: skip
        for bad in refused:
            status, body = _get(url + bad)
            assert status == 404, bad
            assert b"node-a" not in body and b"node-b" not in body, bad

        # two requests at once for one ISO: one generation; its bytes are the base with the host's slots
        results: list[bytes] = []
        threads = [threading.Thread(target=lambda: results.append(_get(f"{url}/hosts/node-a.iso")[1]))
                   for _ in range(2)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert factory.generations == 1 and len(results) == 2 and results[0] == results[1]
        first = inventory.load(inv_path).hosts[0]
        (tmp_path / "h").mkdir()
        made = hosts.media(
            build.name, "quiet", "", first, factory.seed(first), iso=True, datasource="nocloud-net"
        )
        hosts.write_host(tmp_path / "h", first, made, iso=factory.iso, where=factory.slots())
        written = tmp_path / "h" / "node-a.iso"
        assert results[0] == written.read_bytes()
        assert _get(f"{url}/hosts/node-a/node-a.iso")[1] == results[0] and factory.generations == 1

        # a changed inventory is read again, without a restart; a broken edit keeps the last good one
        time.sleep(0.01)
        inv_path.write_text(GOOD.replace("node-b", "node-c"))
        assert _get(f"{url}/hosts/node-c/meta-data")[0] == 200
        assert _get(f"{url}/hosts/node-b/meta-data")[0] == 404
        inv_path.write_text("hosts: [")
        assert _get(f"{url}/hosts/node-c/meta-data")[0] == 200
        assert any("serving the inventory as it was" in line for line in said)
        # a host whose ISO cannot be made: 500 to the client, the reason on the server's terminal
        huge = GOOD.replace('runcmd: [["touch", "/run/kiln-host-a"]]', "bootcmd: ['" + "x" * 300_000 + "']")
        inv_path.write_text(huge)
        assert _get(f"{url}/hosts/node-a.iso")[0] == 500
        assert any("more than the 262144" in line for line in server_said)


def test_serve_refuses_seeds_to_addresses_outside_the_allow_list(build: BuildDir, tmp_path: Path) -> None:
    factory = hosts.Factory(_inv(tmp_path, GOOD), build, keys=[KEY], user="kiln", templates=TEMPLATES,
                            say=lambda _: None)  # fmt: skip
    only = serve.parse_allow(["192.0.2.0/24"])
    with serve.Server(build, hosts=factory, allow=only) as server:
        url = f"http://127.0.0.1:{server.port}"
        assert _get(f"{url}/hosts/node-a/user-data")[0] == 403
        assert _get(f"{url}/hosts/node-a.iso")[0] == 403
        assert _get(f"{url}/hosts/nobody/user-data")[0] == 403  # which hosts exist is not told either
        assert _get(f"{url}/boot.ipxe")[0] == 403  # the chain lists the hosts and their MACs
        assert _get(f"{url}/vmlinuz")[0] == 200  # the netboot set is no secret
    assert server.allowed("192.0.2.7") and not server.allowed("10.0.2.15")
    with pytest.raises(InputError, match="--allow 'x'"):
        serve.parse_allow(["x"])
    with serve.Server(build, hosts=factory) as server:  # default: the subnet served on (loopback here)
        assert _get(f"http://127.0.0.1:{server.port}/hosts/node-a/user-data")[0] == 200


@pytest.mark.parametrize(
    ("version", "name"),
    [
        ("25.1.4-1+deb13u1", "nocloud"),  # Debian 13
        ("24.1.3-0ubuntu3", "nocloud"),  # the first that reads remote seeds as nocloud
        ("1:24.2-1", "nocloud"),
        ("23.4.4-0ubuntu0~20.04.1", "nocloud-net"),
        ("22.4.2-1+deb12u1", "nocloud-net"),  # Debian 12: its nocloud reads local seeds only
        (None, "nocloud-net"),  # no package list: the name every cloud-init reads
    ],
)
def test_a_seed_over_http_is_named_as_the_images_cloud_init_reads_it(tmp_path: Path, version, name) -> None:
    build = BuildDir.of(tmp_path, "n", {}, {})
    if version is not None:
        (tmp_path / "n.packages").write_text(f"bash\t5.2.37-2\ncloud-init\t{version}\n")
    assert compare.seed_datasource(build) == name


def test_serve_and_hosts_name_the_seed_as_a_newer_cloud_init_reads_it(
    build: BuildDir, tmp_path: Path
) -> None:
    """An image with cloud-init 25.1 (debian-13's) gets `ds=nocloud` in every script that points it at a seed
    over HTTP: `kiln serve --cidata`'s, `kiln serve --hosts`' and `kiln hosts`'; a package list kiln cannot
    read is a warning and the name every cloud-init reads, and a server with no seed does not read it."""
    path = tmp_path / build.path.name
    shutil.copytree(build.path, path)
    packages = path / f"{build.name}.packages"
    packages.write_text("bash\t5.2.37-2\ncloud-init\t25.1.4-1+deb13u1\n")
    newer = BuildDir.open(path)
    seed = {"user-data": b"#cloud-config\n", "meta-data": b"instance-id: i-1\n"}
    with serve.Server(newer, seed=seed) as server:
        assert (
            f"ds=nocloud;s={server.base}/seed/"
            in _get(f"http://127.0.0.1:{server.port}/boot.ipxe")[1].decode()
        )
    factory = hosts.Factory(
        _inv(tmp_path, GOOD), newer, keys=[KEY], user="kiln", templates=TEMPLATES, say=lambda _line: None
    )
    with serve.Server(newer, hosts=factory) as server:
        script = _get(f"http://127.0.0.1:{server.port}/hosts/node-a/boot.ipxe")[1].decode()
        assert "ds=nocloud;s=${base}/hosts/node-a/" in script
    pub = tmp_path / "k.pub"
    pub.write_text(KEY + "\n")
    argv = ["hosts", str(_inv(tmp_path, GOOD)), str(path), "-o", str(tmp_path / "out"), "--ssh-public-key",
            str(pub), "--base-url", "http://10.0.2.2:8080"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "ds=nocloud;s=${base}/hosts/node-a/" in (tmp_path / "out" / "node-a" / "boot.ipxe").read_text()

    packages.write_text("cloud-init 25.1\n")  # no TAB: not a package list
    with serve.Server(newer) as server:  # no seed: the list is not read
        assert b"ds=" not in _get(f"http://127.0.0.1:{server.port}/boot.ipxe")[1]
    with serve.Server(newer, seed=seed) as server:
        assert "ds=nocloud-net;s=" in _get(f"http://127.0.0.1:{server.port}/boot.ipxe")[1].decode()
