"""The real thing: debian-12 built with `make build-qemu-debian-12` under TCG (the `built_image` fixture),
then its outputs and the image's file system read without booting. The boots from the image's own
bootloader: the build's own verify (the qcow2 under SeaBIOS), the seeded boot with the node checks
(tests/test_boot_vm.py) and `kiln verify --firmware efi` of the OVA's disk converted back
(tests/test_verify_vm.py, under OVMF)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.artifacts import ova
from kiln_runtime import RUNTIME

pytestmark = pytest.mark.vm


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 23):
            h.update(block)
    return h.hexdigest()


def test_build_directory_holds_every_output(built_image):
    b = built_image.dir
    name = b.name
    assert name == "debian-12+kube-" + b.kubernetes_semver
    for suffix in (".qcow2", ".ova"):
        artifact = b.path / f"{name}{suffix}"
        digest = (b.path / f"{name}{suffix}.sha256").read_text()
        assert re.fullmatch(r"[0-9a-f]{64}", digest), "sha256 files hold bare hex"
        assert _sha256(artifact) == digest
    custom = b.custom_data
    for key in ("kubernetes_semver", "build_name", "os_name", "os_version", "firmware", "kiln_version",
                "input_hash", "ssh_username"):  # fmt: skip
        assert custom.get(key), key
    assert custom["build_name"] == "debian-12" and custom["os_version"] == "12"
    config = json.loads((b.path / "config.json").read_text())
    assert config["kubernetes_source_type"]["value"] == "http"
    assert config["build_name"]["origin"]
    packages = (b.path / f"{name}.packages").read_text().splitlines()
    names = {line.split("\t")[0] for line in packages}
    assert {"cloud-init", "openssh-server", "linux-image-amd64"} <= names
    # containerd, runc and crictl came from their release downloads (the http sources), not packages
    assert not {"containerd", "runc"} & names
    spdx = {p["name"] for p in json.loads((b.path / f"{name}.spdx.json").read_text())["packages"]}
    assert {"containerd", "runc", "crictl", "kubelet"} <= spdx
    assert all("\t" in line for line in packages)
    log = b.log.read_text()
    assert "kiln: stage base:" in log and "kiln: stage finalize: ok" in log and "PLAY RECAP" in log
    for key in (
        "kubernetes_typed_version",
        "distro_name",
        "distro_version",
        "containerd_version",
        "build_date",
    ):
        assert custom.get(key), key  # image-builder's custom_data keys
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(b.qcow2)],
                                     capture_output=True, text=True, check=True).stdout)  # fmt: skip
    assert info["format"] == "qcow2"
    assert b.qcow2.stat().st_size < info["virtual-size"] / 5, "qcow2 should be compressed and sparse"


def test_the_sites_own_goss_spec_is_checked_where_it_can_be(built_image):
    """The site's goss directory (tests/fixtures/site/goss, image-builder's style): its checks of the image
    at rest passed in the tree after sysprep and are skipped on the booted image, where they could not pass
    (cloud-init made host keys, a machine-id and an instance); its service, kernel parameter and a command
    that needs a running system were checked in the verify boot."""
    b = built_image.dir
    record = json.loads((b.path / "goss" / "tree-phase.json").read_text())
    in_tree = {(e["type"], e["id"]) for e in record["passed_in_tree"]}
    at_rest = {
        ("command", "sh -c '! ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1'"),
        ("command", "test ! -s /etc/machine-id"),
        ("command", "test ! -e /var/lib/cloud/instance"),
    }
    assert at_rest <= in_tree
    assert ("command", "site-chrony-runs") not in in_tree, "no systemd in a tree: it waits for the boot"
    report = json.loads((b.path / "goss" / "report.json").read_text())
    outcome = {(r["resource-type"], r["resource-id"]): r for r in report["results"]}  # goss's type names
    assert all(outcome[("Command", rid)]["skipped"] for _, rid in at_rest), "not run on a booted image"
    booted = [("Command", "site-chrony-runs"), ("Service", "chrony"), ("KernelParam", "vm.overcommit_memory")]
    for key in booted:
        assert outcome[key]["successful"] and not outcome[key]["skipped"], key


def test_no_secrets_and_no_build_leftovers_in_the_build_directory(built_image):
    path = built_image.path
    names = sorted(p.name for p in path.rglob("*"))
    assert not [n for n in names if "id_ed25519" in n or n.endswith((".pem", ".key")) or n == "work"]
    for p in path.rglob("*"):
        if p.is_file() and p.stat().st_size < 50_000_000:
            assert b"PRIVATE KEY" not in p.read_bytes(), p
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name], "temp dir left behind"


def test_ova_structure(built_image):
    names, small = ova.read_ova(built_image.dir.ova)
    assert names[0].endswith(".ovf") and names[1].endswith(".mf") and names[2].endswith(".vmdk")
    ovf = small[names[0]].decode()
    cfg = built_image.dir.config
    assert f"<rasd:VirtualQuantity>{cfg['cpus']}</rasd:VirtualQuantity>" in ovf
    assert f"<rasd:VirtualQuantity>{cfg['memory']}</rasd:VirtualQuantity>" in ovf
    assert f'vmw:osType="{cfg["guest_os_type"]}"' in ovf
    assert f'vmw:key="firmware" vmw:value="{cfg["firmware"]}"' in ovf


def _root_fs(raw: Path) -> str:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]  # fmt: skip
    assert table["label"] == "gpt"
    types = [p["type"].upper() for p in table["partitions"]]
    assert types[0] == "21686148-6449-6E6F-744E-656564454649"  # BIOS boot
    assert types[1] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"  # ESP
    root = table["partitions"][-1]
    return f"{raw}?offset={root['start'] * table.get('sectorsize', 512)}"


def _debugfs(fs: str, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, fs], capture_output=True, text=True, check=True).stdout


def test_image_file_system_has_no_identity_baked_in(built_image, tmp_path):
    """Read the image itself (no boot): sshd and systemd regenerate keys and machine-id at boot, so a boot
    alone could not tell whether they were baked in."""
    offline_hygiene(built_image.dir.qcow2, built_image.dir.custom_data["ssh_username"], tmp_path)


def offline_hygiene(qcow2: Path, user: str, tmp_path: Path) -> None:
    """The offline hygiene check: no host keys, empty machine-id, no build user, no authorized keys, no
    cloud-init instance, no shell history, no apt lists; read from the image's file system, no boot."""
    if shutil.which("debugfs") is None:
        pytest.skip("debugfs (e2fsprogs) not installed")
    raw = tmp_path / "image.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(qcow2), str(raw)], check=True)
    fs = _root_fs(raw)
    listing = _debugfs(fs, "ls -l /etc/ssh")
    assert "sshd_config" in listing
    assert "ssh_host_" not in listing, listing
    stat = _debugfs(fs, "stat /etc/machine-id")
    assert re.search(r"\bSize: 0\b", stat), stat
    assert (
        "File not found"
        not in subprocess.run(
            ["debugfs", "-R", "stat /etc/machine-id", fs], capture_output=True, text=True
        ).stderr
    )
    home = _debugfs(fs, "ls /home")
    assert user not in home, f"build user {user} left in /home"
    passwd = _debugfs(fs, "cat /etc/passwd")
    assert not re.search(rf"^{user}:", passwd, re.M), "build user still in /etc/passwd"
    for path in ("/root/.ssh/authorized_keys", "/var/lib/cloud/instance", "/root/.bash_history"):
        err = subprocess.run(["debugfs", "-R", f"stat {path}", fs], capture_output=True, text=True).stderr
        assert "not found" in err.lower(), f"{path} baked into the image"
    lists = _debugfs(fs, "ls /var/lib/apt/lists")
    assert "_dists_" not in lists, "apt lists left in the image"


def test_second_build_with_unchanged_base_inputs_skips_the_base_stage(built_image):
    """The base stage of a second build with the build's own inputs: found in the cache, not rebuilt."""
    from kiln.build import bootstrap, stages

    values = built_image.dir.config
    repo = Path(__file__).resolve().parents[1]
    cache_dir = repo / str(values["cache_dir"])
    spec = bootstrap.spec_from_config(values, repo)
    info, why = stages.read_base(cache_dir / stages.BASE_ROOT / spec.key())
    assert info and why is None, f"the build did not leave its base in the cache ({why})"
    said: list[str] = []
    base = bootstrap.ensure_base(spec, cache_dir, repo, say=said.append, runtime=RUNTIME)
    assert base.cached and base.disk.is_file()
    assert any("reusing cached base disk" in line for line in said)
    changed = bootstrap.BaseSpec(**{**spec.__dict__, "disk_size_mib": spec.disk_size_mib + 1024})
    assert changed.key() != spec.key()
