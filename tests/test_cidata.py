"""cidata: seed rendering from cloudinit/templates, key discovery, the ISO read back with pycdlib,
`kiln cidata` and `make -C cloudinit`. The real counterpart (a guest's cloud-init applying a seed) is
tests/test_boot_vm.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pycdlib
import pytest
import yaml

from kiln import cli, config
from kiln.core.errors import InputError
from kiln.vm import cidata, ssh
from kiln_runtime import RUNTIME

TEMPLATES = cidata.template_dir(RUNTIME.root)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pubkey(tmp_path: Path) -> str:
    return ssh.generate_keypair(tmp_path / "k", comment="test@kiln").public_line


def _read_back(iso_path: Path) -> tuple[str, dict[str, bytes], dict[str, bytes]]:
    """Label, Joliet files and Rock Ridge files, read with pycdlib independently of cidata.read_iso."""
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        joliet: dict[str, bytes] = {}
        rr: dict[str, bytes] = {}
        for name in ("user-data", "meta-data", "network-config"):
            for kind, store in (("joliet_path", joliet), ("rr_path", rr)):
                out = __import__("io").BytesIO()
                try:
                    iso.get_file_from_iso_fp(out, **{kind: f"/{name}"})
                except pycdlib.pycdlibexception.PyCdlibInvalidInput:
                    continue
                store[name] = out.getvalue()
        return label, joliet, rr
    finally:
        iso.close()


def test_seed_iso_reads_back_with_label_names_and_contents(tmp_path: Path, pubkey: str) -> None:
    out = cidata.write_seed(
        tmp_path / "seed.iso",
        [pubkey],
        user="tester",
        hostname="node-1",
        instance_id="iid-123",
        values={"build_name": "debian-12", "kubernetes_semver": "v1.30.2"},
        network_config=True,
        templates=TEMPLATES,
    )
    label, joliet, rr = _read_back(out)
    assert label == "cidata"
    assert set(joliet) == {"user-data", "meta-data", "network-config"}
    assert joliet == rr  # Joliet and Rock Ridge carry the same files under the real names
    assert yaml.safe_load(joliet["meta-data"]) == {"instance-id": "iid-123", "local-hostname": "node-1"}
    user_data = joliet["user-data"].decode()
    assert user_data.startswith("#cloud-config\n")
    doc = yaml.safe_load(user_data)
    assert doc["ssh_pwauth"] is False
    assert doc["ssh_authorized_keys"] == [pubkey]
    assert doc["users"][0] == "default"
    login = doc["users"][1]
    assert login["name"] == "tester"
    assert login["lock_passwd"] is True
    assert login["ssh_authorized_keys"] == [pubkey]
    assert "passwd" not in login and "plain_text_passwd" not in login
    seed = doc["write_files"][0]
    assert seed["path"] == "/etc/kiln/seed"
    assert "kubernetes_semver=v1.30.2" in seed["content"]
    assert "instance_id=iid-123" in seed["content"]
    net = yaml.safe_load(joliet["network-config"])
    assert net["version"] == 2 and all(e["dhcp4"] for e in net["ethernets"].values())
    # read_iso (used by kiln boot --cidata) agrees with the independent reader
    assert cidata.read_iso(out) == ("cidata", joliet)


def test_instance_id_is_new_each_time_and_hostname_defaults_from_build_name(pubkey: str) -> None:
    a = yaml.safe_load(
        cidata.render_seed([pubkey], values={"build_name": "ubuntu_2204.x"}, templates=TEMPLATES)["meta-data"]
    )
    b = yaml.safe_load(
        cidata.render_seed([pubkey], values={"build_name": "ubuntu_2204.x"}, templates=TEMPLATES)["meta-data"]
    )
    assert a["instance-id"] != b["instance-id"]
    assert a["local-hostname"] == "ubuntu-2204-x"
    assert "network-config" not in cidata.render_seed([pubkey], templates=TEMPLATES)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user": "Root User"}, "not a valid login name"),
        ({"hostname": "bad_host"}, "not a valid host name"),
        ({"hostname": "-x"}, "not a valid host name"),
    ],
)
def test_bad_user_or_hostname_is_input_error(pubkey: str, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        cidata.render_seed([pubkey], templates=TEMPLATES, **kwargs)


def test_public_key_validation(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="SSH_PUBLIC_KEY: 'nope' is neither"):
        cidata.discover_public_keys(env_value="nope")
    priv = ssh.generate_keypair(tmp_path / "k")
    with pytest.raises(InputError, match="id_ed25519: a private key"):
        cidata.discover_public_keys([priv.private_key])
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ== wrong-type\n")
    with pytest.raises(InputError, match="does not match its type"):
        cidata.discover_public_keys([bad])
    with pytest.raises(InputError, match="missing.pub: public key file does not exist"):
        cidata.discover_public_keys([tmp_path / "missing.pub"])


def test_key_discovery_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    a = ssh.generate_keypair(tmp_path / "a", comment="a")
    b = ssh.generate_keypair(tmp_path / "b", comment="b")
    (home / ".ssh" / "id_ed25519.pub").write_text(a.public_line + "\n")
    assert cidata.discover_public_keys(home=home)[0] == [a.public_line]
    assert cidata.discover_public_keys(env_value=b.public_line, home=home)[0] == [b.public_line]
    assert cidata.discover_public_keys(env_value=str(b.public_key), home=home)[0] == [b.public_line]
    keys, source = cidata.discover_public_keys([b.public_key], env_value=a.public_line, home=home)
    assert keys == [b.public_line] and source == str(b.public_key)


def test_no_key_error_says_where_kiln_looked(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        cidata.discover_public_keys(home=tmp_path)
    assert "--ssh-public-key" in err.value.message
    assert "SSH_PUBLIC_KEY" in err.value.message
    assert f"{tmp_path}/.ssh/*.pub" in err.value.message


def test_kiln_cidata_cli_exit_2_and_nothing_written_without_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SSH_PUBLIC_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    out = tmp_path / "seed.iso"
    assert cli.main(["cidata", "-o", str(out)]) == 2
    assert not out.exists()
    assert "looked in" in capsys.readouterr().err


def test_kiln_cidata_cli_templates_values_from_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pubkey: str
) -> None:
    monkeypatch.setenv("SSH_PUBLIC_KEY", pubkey)
    out = tmp_path / "seed.iso"
    rc = cli.main(["cidata", "-o", str(out), "--target", "debian-12", "--var", "kubernetes_semver=v1.29.7"])
    assert rc == 0
    _, files = cidata.read_iso(out)
    cfg = config.load("debian-12", overrides={"kubernetes_semver": "v1.29.7"})
    user_data = files["user-data"].decode()
    assert f"build_name={cfg['build_name']}" in user_data
    assert "kubernetes_semver=v1.29.7" in user_data
    assert yaml.safe_load(files["meta-data"])["local-hostname"] == cfg["build_name"]


def test_make_C_cloudinit_writes_cidata_iso(tmp_path: Path, pubkey: str) -> None:
    """The Makefile entry point image-builder users know; runs the installed kiln from .venv."""
    kiln = REPO / ".venv" / "bin" / "kiln"
    if not kiln.exists():
        pytest.skip("no .venv/bin/kiln (run make deps)")
    iso = REPO / "cloudinit" / "cidata.iso"
    backup = iso.read_bytes() if iso.exists() else None
    env = {**os.environ, "SSH_PUBLIC_KEY": pubkey, "HOME": str(tmp_path)}
    try:
        done = subprocess.run(
            ["make", "-s", "-C", str(REPO / "cloudinit"), "SEED_HOSTNAME=from-make"],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        label, files = cidata.read_iso(iso)
        assert label == "cidata"
        assert yaml.safe_load(files["meta-data"])["local-hostname"] == "from-make"
        assert pubkey in files["user-data"].decode()
        # and without any key: exit 2 from kiln, make fails, the message says where it looked
        env.pop("SSH_PUBLIC_KEY")
        make = ["make", "-s", "-C", str(REPO / "cloudinit")]
        done = subprocess.run(make, env=env, capture_output=True, text=True, check=False)
        assert done.returncode != 0
        assert "no SSH public key found; looked in" in done.stderr
    finally:
        if backup is not None:
            iso.write_bytes(backup)
        else:
            iso.unlink(missing_ok=True)


def test_templates_are_data_files() -> None:
    for name in cidata.TEMPLATES.values():
        assert (REPO / "cloudinit" / "templates" / name).is_file()
    assert cidata.template_dir(RUNTIME.root) == RUNTIME.root / "cloudinit" / "templates"


def test_a_users_seed_makes_every_host_key_type_and_the_verify_seed_one(pubkey: str) -> None:
    """A user's seed (`kiln cidata`, `make -C cloudinit`) leaves host key types to cloud-init's defaults;
    only kiln's own throwaway boots (build VM, verify) ask for a single ed25519 key."""
    from kiln.goss import verify

    user_seed = yaml.safe_load(cidata.render_seed([pubkey], templates=TEMPLATES)["user-data"])
    assert "ssh_genkeytypes" not in user_seed
    extra = yaml.safe_load(verify.VERIFY_CLOUD_CONFIG)
    assert extra == {"ssh_deletekeys": False, "ssh_genkeytypes": ["ed25519"]}
