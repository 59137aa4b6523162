"""kiln.build: seed, manifest, publish, failure safety and interrupts.

The failure and interrupt tests put a fake `packer` on PATH (it answers `packer version`, then fails or
hangs with a child standing in for QEMU); the real pipeline runs in tests/test_vm_build.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kiln import config
from kiln.build import pipeline as build
from kiln.core import builddir, tempdirs
from kiln.core.errors import ToolMissingError
from kiln.vm import checkboot, cidata
from kiln_runtime import RUNTIME

REPO = Path(__file__).resolve().parents[1]


def test_build_seed_has_the_key_and_no_password(tmp_path):
    """The build VM's seed comes from the one user-data generator (cloudinit/templates) and leaves nothing
    of itself in the image: no marker file, no distro default user, hostname localhost."""
    values = {"build_name": "debian-12"}
    login = checkboot.make_login(tmp_path, user="builder", values=values, purpose="build", root=RUNTIME.root)
    label, files = cidata.read_iso(login.seed)  # pycdlib reads it back; no external tool needed
    assert label == "cidata" and set(files) == {"user-data", "meta-data"}
    text = files["user-data"].decode()
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    user = doc["users"][0]
    assert user["name"] == "builder" and user["lock_passwd"] is True and user["groups"] == ["sudo"]
    assert user["ssh_authorized_keys"] == [login.keys.public_line]
    assert doc["ssh_pwauth"] is False
    assert "passwd" not in user and "plain_text_passwd" not in user and "chpasswd" not in doc
    assert "default" not in doc["users"], "no distro default user in the build VM"
    assert "write_files" not in doc and "ssh_authorized_keys" not in doc
    meta = yaml.safe_load(files["meta-data"])
    assert meta["local-hostname"] == "localhost" and meta["instance-id"] == login.instance_id
    assert login.instance_id.startswith("kiln-build-")
    # its host keys go with sysprep: one fast ed25519 key, not an RSA key that takes 5 to 30 s under TCG
    assert doc["ssh_genkeytypes"] == ["ed25519"]
    login.forget()
    assert not login.keys.private_key.exists()


def test_manifest_keeps_packer_fields_and_adds_custom_data(tmp_path):
    manifest = tmp_path / "packer-manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "builds": [
                    {
                        "name": "node",
                        "builder_type": "qemu",
                        "build_time": 1,
                        "files": [{"name": "x", "size": 1}],
                        "artifact_id": "VM",
                        "packer_run_uuid": "u1",
                        "custom_data": {"from_packer": "yes"},
                    }
                ],
                "last_run_uuid": "u1",
            }
        )
    )
    f = tmp_path / "a.qcow2"
    f.write_bytes(b"1234")
    values = {
        "build_name": "debian-12",
        "kubernetes_semver": "v1.30.2",
        "os_name": "debian",
        "os_version": "12",
        "firmware": "bios",
        "ssh_username": "builder",
    }
    data = builddir.custom_data(values, "abc")
    builddir.write_manifest(manifest, "debian-12+kube-v1.30.2", [f], data, "qemu")
    last = json.loads(manifest.read_text())["builds"][-1]
    assert last["packer_run_uuid"] == "u1" and last["builder_type"] == "qemu"
    assert last["files"] == [{"name": "a.qcow2", "size": 4}]
    assert last["custom_data"]["from_packer"] == "yes"
    for key in ("kubernetes_semver", "build_name", "os_name", "os_version", "firmware", "kiln_version",
                "input_hash", "ssh_username"):  # fmt: skip
        assert last["custom_data"][key], key
    assert all(isinstance(v, str) for v in last["custom_data"].values())


def test_manifest_written_when_packer_wrote_none(tmp_path):
    manifest = tmp_path / "packer-manifest.json"
    f = tmp_path / "a.ova"
    f.write_bytes(b"x")
    builddir.write_manifest(manifest, "n", [f], {"build_name": "b", "kubernetes_semver": "v1.2.3"}, "qemu")
    doc = json.loads(manifest.read_text())
    assert doc["builds"][-1]["custom_data"]["build_name"] == "b"
    assert doc["last_run_uuid"] == doc["builds"][-1]["packer_run_uuid"]


def test_publish_replaces_an_older_build_only_at_the_end(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old").write_text("old")
    temp = tmp_path / ".out.tmp-1"
    temp.mkdir()
    (temp / "new").write_text("new")
    said: list[str] = []
    tempdirs.put_in_place(temp, final, lambda: said.append("published"))
    assert (final / "new").read_text() == "new" and not (final / "old").exists() and said == ["published"]
    assert not temp.exists() and [p.name for p in tmp_path.iterdir()] == ["out"]
    # the swap itself: one step, both paths there before and after

    temp.mkdir()
    (temp / "newer").write_text("newer")
    inode = temp.stat().st_ino
    assert tempdirs.exchange(temp, final)  # ext4, xfs, btrfs and tmpfs can
    assert final.stat().st_ino == inode and (temp / "new").is_file()
    assert not tempdirs.exchange(tmp_path / "missing", final)  # _publish then renames as before


def test_publish_without_a_swap_is_not_cut_in_two_by_an_interrupt(tmp_path, monkeypatch):
    """A file system without RENAME_EXCHANGE: the old build goes into a temp dir of kiln's first (collected
    after a kill -9), then the new one into place. Ctrl-C between the two renames waits for the second."""
    import signal as signals

    final, temp = tmp_path / "out", tmp_path / ".out.tmp-1"
    final.mkdir()
    (final / "old").write_text("old")
    temp.mkdir()
    (temp / "new").write_text("new")
    monkeypatch.setattr(tempdirs, "exchange", lambda a, b: False)
    renames: list[str] = []
    rename = os.rename

    def rename_then_ctrl_c(src, dst):
        rename(src, dst)
        renames.append(Path(dst).parent.name)
        if len(renames) == 1:  # the old build is aside, the new one not yet in place
            os.kill(os.getpid(), signals.SIGINT)
            time.sleep(0.2)  # the handler would run here, were the signal not held

    monkeypatch.setattr(tempdirs.os, "rename", rename_then_ctrl_c)
    said: list[str] = []
    ignored = signals.signal(signals.SIGINT, signals.default_int_handler)  # `make test &` ignores SIGINT
    try:
        with pytest.raises(KeyboardInterrupt):
            tempdirs.put_in_place(temp, final, lambda: said.append("published"))
    finally:
        signals.signal(signals.SIGINT, ignored)
    assert said == ["published"] and (final / "new").is_file() and len(renames) == 2
    assert renames[0].startswith(".out.old.tmp-") and tempdirs.owner_pid(tmp_path / renames[0]) == os.getpid()
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "the old build removed with its temp dir"


def test_missing_tool_names_its_package(monkeypatch, tmp_path):
    from kiln.core import proc

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(proc, "SYSTEM_PATH", ())  # kiln adds them to PATH, and packer is in /usr/bin here
    with pytest.raises(ToolMissingError) as err:
        build.check_tools({"install_method": "bootstrap"}, runtime=config.default_runtime())
    assert "packer" in err.value.message and "Debian package 'packer'" in (err.value.hint or "")


def _fake_packer(bin_dir: Path, behaviour: str, pid_file: Path) -> None:
    """A `packer` that answers `version`; on `build` it either fails or starts a child (QEMU's stand-in)
    and waits forever."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "packer"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = version ]; then echo "Packer v1.6.6"; exit 0; fi\n'
        'if [ "$1" = validate ]; then exit 0; fi\n'
        + (
            'echo "==> qemu.node: Starting VM"; echo "boom: qemu died" >&2; exit 1\n'
            if behaviour == "fail"
            else f'echo "==> qemu.node: Starting VM"; sleep 300 & echo $! > {pid_file}; '
            f"echo $$ >> {pid_file}\n"
            "wait\n"
        )
    )
    script.chmod(0o755)


def _env(bin_dir: Path, out: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


CLOUDIMG = "ubuntu-2404-cloudimg"  # a local image as its base: the fake packer is reached within seconds


def _kiln_build(out: Path) -> list[str]:
    image = (
        out.parent / "cloud.qcow2"
    )  # a small qcow2 stands in for the cloud image (the base stage checks it)
    if not image.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    return [
        sys.executable, "-m", "kiln", "build", CLOUDIMG, "--var", f"output_dir={out}",
        "--var", "accelerator=tcg", "--var", f"cloudimg_url={image}",
        "--var", f"cloudimg_checksum=sha256:{digest}", "--var", f"cache_dir={out.parent / 'cache'}",
    ]  # fmt: skip


@pytest.fixture
def cloudimg_target():
    if CLOUDIMG not in config.targets(REPO):
        pytest.skip(f"{CLOUDIMG} target not shipped")


def test_failed_build_removes_temp_dir_and_keeps_the_log(tmp_path, cloudimg_target):
    out = tmp_path / "output"
    _fake_packer(tmp_path / "bin", "fail", tmp_path / "pids")
    proc = subprocess.run(_kiln_build(out), env=_env(tmp_path / "bin", out), capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert not [p for p in out.iterdir() if p.name != "logs"], "nothing but logs/ may be left"
    logs = list((out / "logs").iterdir())
    assert len(logs) == 1
    assert str(logs[0]) in proc.stderr + proc.stdout, "the error must say where the log is"
    text = logs[0].read_text()
    assert "boom: qemu died" in text and "build failed" in text


def test_sigterm_stops_packer_and_its_children_and_exits_130(tmp_path, cloudimg_target):
    out = tmp_path / "output"
    pids = tmp_path / "pids"
    _fake_packer(tmp_path / "bin", "hang", pids)
    child = subprocess.Popen(
        _kiln_build(out), env=_env(tmp_path / "bin", out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (pids.exists() and len(pids.read_text().split()) == 2):
        assert child.poll() is None, child.stdout.read() if child.stdout else ""
        assert time.monotonic() < deadline, "fake packer never started"
        time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    output, _ = child.communicate(timeout=60)
    assert child.returncode == 130, output
    for pid in map(int, pids.read_text().split()):
        time.sleep(0.1)
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        ), f"process {pid} survived"
    assert not [p for p in out.iterdir() if p.name != "logs"], "temp dir must be removed"


def test_bootstrap_with_vmware_builder_is_rejected():
    from kiln import config
    from kiln.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        config.load("debian-12", overrides={"builder": "vmware-iso"})
    assert any(
        "-var: builder: vmware-iso cannot build install_method bootstrap" in p for p in err.value.problems
    )


def test_a_failed_build_exits_1_and_bad_input_2(capsys):
    from kiln import cli

    assert cli.main(["build", "debian-12", "--var", "cpus=lots"]) == 2
    assert "cpus: wrong type" in capsys.readouterr().err


def test_playbooks_pass_ansible_syntax_check():
    ansible = Path(sys.executable).parent / "ansible-playbook"
    for playbook in ("playbook.yml", "sysprep.yml"):
        proc = subprocess.run(
            [str(ansible), "--syntax-check", "-i", "localhost,", str(REPO / "ansible" / playbook)],
            capture_output=True,
            text=True,
            env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible" / "ansible.cfg")},
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kvm_forced_without_usable_kvm_is_bad_input_naming_the_setting(monkeypatch, tmp_path):
    from kiln.core.errors import InputError
    from kiln.vm import accel

    monkeypatch.setattr(accel, "kvm_available", lambda: False)
    cfg = config.load("debian-12", overrides={"accelerator": "kvm", "output_dir": str(tmp_path / "out")})
    with pytest.raises(InputError) as err:
        build.run_build(cfg, runtime=RUNTIME)
    assert err.value.exit_code == 2 and "accelerator" in err.value.message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "nothing written"


def test_apt_proxy_and_cache_reach_apt_in_the_guest():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(REPO / "ansible" / "roles" / "node" / "templates"))
    )
    text = env.get_template("apt-proxy.conf.j2").render(
        http_proxy="http://proxy:3128", https_proxy="http://proxy:3129", apt_cache=""
    )
    assert 'Acquire::http::Proxy "http://proxy:3128";' in text
    assert 'Acquire::https::Proxy "http://proxy:3129";' in text
    cached = env.get_template("apt-proxy.conf.j2").render(
        http_proxy="http://proxy:3128", https_proxy="", apt_cache="http://10.0.2.2:3142"
    )
    assert 'Acquire::http::Proxy "http://10.0.2.2:3142";' in cached and "https" not in cached
    # apt reads no_proxy only without a proxy of its own: its exact hosts go direct, the rest is left out
    direct = env.get_template("apt-proxy.conf.j2").render(
        http_proxy="", https_proxy="http://proxy:3129", apt_cache="http://127.0.0.1:3142",
        no_proxy="localhost, mirror.internal,.example.com,10.0.0.0/8,*.x,127.0.0.1,::1,m:8080",
    )  # fmt: skip
    for host in ("localhost", "mirror.internal", "127.0.0.1"):
        assert f'Acquire::http::Proxy::{host} "DIRECT";' in direct
        assert f'Acquire::https::Proxy::{host} "DIRECT";' in direct
    assert direct.count("DIRECT") == 6, direct  # the three hosts, for http and https
    mirror = env.get_template("sources.list.j2").render(
        kiln_build_mirror="http://mirror.example/debian", ansible_distribution_release="bookworm"
    )
    assert "deb http://mirror.example/debian bookworm main" in mirror


def test_an_interrupt_stops_every_build_of_a_multi_version_run(monkeypatch, tmp_path):
    """Ctrl-C or SIGTERM in one version's build ends the run (exit 130): a failed build lets the next version
    build, an interrupted one must not (kiln ignores a second SIGTERM, and so would every later child)."""
    from kiln import cli
    from kiln.core.errors import Interrupted

    tried: list[str] = []

    def interrupted(cfg, **kwargs):
        tried.append(cfg.settings.kubernetes_semver)
        raise Interrupted("packer: interrupted")

    monkeypatch.setattr(build, "run_build", interrupted)
    argv = ["build", "debian-12", "--kubernetes-version", "v1.30.2", "--kubernetes-version", "v1.31.4",
            "--var", f"output_dir={tmp_path}"]  # fmt: skip
    assert cli.main(argv) == 130 and tried == ["v1.30.2"]
