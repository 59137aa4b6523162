"""boot: state files, stale and recycled pids, OVA disks, seeds given by the user, and the CLI's exit 2
paths, without booting. The booted counterpart is tests/test_boot_vm.py."""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from kiln import cli
from kiln.core import proc
from kiln.core.builddir import BuildDir
from kiln.core.errors import InputError
from kiln.vm import accel, boot, cidata, control, ssh
from kiln.vm import qemu as vm
from kiln_runtime import RUNTIME

TEMPLATES = cidata.template_dir(RUNTIME.root)


def _build_dir(root: Path, *, qcow2: bool = True) -> BuildDir:
    path = root / "debian-12+kube-v1.30.2"
    path.mkdir(parents=True)
    manifest = {"builds": [{"custom_data": {"build_name": "debian-12", "kubernetes_semver": "v1.30.2"}}]}
    (path / "packer-manifest.json").write_text(json.dumps(manifest))
    if qcow2:
        proc.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(path / "debian-12+kube-v1.30.2.qcow2"), "8M"],
            runtime=RUNTIME,
        )
    return BuildDir.open(path)


def _state(build: BuildDir, pid: int) -> boot.BootState:
    rdir = boot.run_dir(build)
    return boot.BootState(
        pid=pid, ssh_port=2222, user="kiln", key=str(rdir / "key" / "id_ed25519"), qmp_socket="",
        serial_log=str(rdir / "vm" / "serial.log"), run_dir=str(rdir), disk="", firmware="bios",
        accelerator="tcg", detached=True, started=0.0, hardware="virtio",
    )  # fmt: skip


def _write(build: BuildDir, state: boot.BootState) -> None:
    rdir = boot.run_dir(build)
    (rdir / "vm").mkdir(parents=True, exist_ok=True)
    (rdir / "key").mkdir(exist_ok=True)
    for name in ("serial.log", "qemu.log", "overlay.qcow2"):
        (rdir / "vm" / name).write_text(name)
    (rdir / "state.json").write_text(json.dumps(asdict(state)))


def test_stale_state_is_cleaned_keeping_logs(tmp_path: Path) -> None:
    build = _build_dir(tmp_path)
    _write(build, _state(build, pid=2**22 + 12345))  # no such process
    assert boot.read_state(build) is None
    rdir = boot.run_dir(build)
    assert sorted(p.name for p in rdir.rglob("*")) == ["qemu.log", "serial.log", "vm"]


def test_recycled_pid_that_is_not_our_qemu_counts_as_gone(tmp_path: Path) -> None:
    build = _build_dir(tmp_path)
    _write(build, _state(build, pid=os.getpid()))  # alive, but pytest is not QEMU
    assert boot.read_state(build) is None
    assert not (boot.run_dir(build) / "state.json").exists()


def test_running_qemu_of_this_run_dir_is_found_and_stopped(tmp_path: Path) -> None:
    build = _build_dir(tmp_path)
    disk = tmp_path / "probe.img"
    disk.write_bytes(accel.probe_boot_sector())
    machine = vm.VM(
        disk,
        workdir=boot.run_dir(build) / "vm",
        accelerator="tcg",
        memory=64,
        cpus=1,
        detach=True,
        runtime=RUNTIME,
    )
    machine.start()
    try:
        state = boot.BootState(
            **{
                **asdict(_state(build, machine.pid or 0)),
                "qmp_socket": machine.qmp_socket,
                "hardware": "vmware",
            }
        )
        (boot.run_dir(build) / "state.json").write_text(json.dumps(asdict(state)))
        assert boot.read_state(build) == state
        # a state file of a kiln before --hardware (no "hardware") is read as virtio; a wrong type is refused
        older = {k: v for k, v in asdict(state).items() if k != "hardware"}
        (boot.run_dir(build) / "state.json").write_text(json.dumps(older))
        assert boot.read_state(build) == replace(state, hardware="virtio")
        (boot.run_dir(build) / "state.json").write_text(json.dumps({**older, "hardware": 1}))
        with pytest.raises(InputError, match="malformed boot state: hardware is 1"):
            boot.read_state(build)
        (boot.run_dir(build) / "state.json").write_text(json.dumps(asdict(state)))
        with pytest.raises(InputError, match="already booted"):
            boot.start(build, runtime=RUNTIME)
        stopped = boot.stop(build, timeout=0)
        assert stopped == state
        assert not control.pid_alive(state.pid)
        assert boot.read_state(build) is None
    finally:
        machine.stop(timeout=0)


def test_disk_for_prefers_qcow2_then_ova_vmdk(tmp_path: Path) -> None:
    build = _build_dir(tmp_path, qcow2=False)
    with pytest.raises(InputError, match="neither debian-12\\+kube-v1.30.2.qcow2 nor .*ova is there"):
        boot.disk_for(build, tmp_path / "w")
    raw = tmp_path / "disk.raw"
    raw.write_bytes(accel.probe_boot_sector().ljust(1 << 20, b"\0"))
    vmdk = tmp_path / "disk-1.vmdk"
    proc.run(
        ["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw), str(vmdk)],
        runtime=RUNTIME,
    )
    with tarfile.open(build.ova, "w") as tar:
        tar.add(vmdk, arcname="debian-12+kube-v1.30.2-disk1.vmdk")
    disk, fmt = boot.disk_for(build, tmp_path / "w")
    assert fmt == "vmdk" and vm.detect_format(disk, RUNTIME) == "vmdk"
    proc.run(["qemu-img", "compare", "-f", "vmdk", "-F", "raw", str(disk), str(raw)], runtime=RUNTIME)
    proc.run(["qemu-img", "create", "-q", "-f", "qcow2", str(build.qcow2), "1M"], runtime=RUNTIME)
    assert boot.disk_for(build, tmp_path / "w") == (build.qcow2, "qcow2")


def test_ova_without_vmdk_or_not_a_tar(tmp_path: Path) -> None:
    ova = tmp_path / "x.ova"
    with tarfile.open(ova, "w") as tar:
        info = tarfile.TarInfo("x.ovf")
        tar.addfile(info)
    with pytest.raises(InputError, match="x.ova: no .vmdk disk inside the OVA"):
        boot.extract_vmdk(ova, tmp_path / "w")
    ova.write_text("junk")
    with pytest.raises(InputError, match="x.ova: not a readable OVA tar"):
        boot.extract_vmdk(ova, tmp_path / "w")


def test_seed_user_from_a_users_seed(tmp_path: Path) -> None:
    pair = ssh.generate_keypair(tmp_path / "k")
    iso = cidata.write_seed(tmp_path / "seed.iso", [pair.public_line], user="alice", templates=TEMPLATES)
    assert boot.seed_user(iso) == "alice"
    bare = cidata.write_iso(tmp_path / "bare.iso", {"user-data": "#cloud-config\n", "meta-data": ""})
    with pytest.raises(InputError, match="names no user; pass --user"):
        boot.seed_user(bare)


def test_cli_exit_2_paths_boot_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    build = _build_dir(tmp_path)
    monkeypatch.setattr(vm.VM, "start", lambda self: pytest.fail("must not start QEMU"))
    assert cli.main(["ssh", str(build.path), "--", "true"]) == 2
    assert "not booted" in capsys.readouterr().err
    assert cli.main(["boot", "--stop", str(build.path)]) == 0
    assert "was not booted" in capsys.readouterr().out
    assert cli.main(["boot", str(build.path), "--cidata", str(tmp_path / "none.iso")]) == 2
    assert "cidata ISO not found" in capsys.readouterr().err
    pair = ssh.generate_keypair(tmp_path / "k")
    iso = cidata.write_seed(tmp_path / "seed.iso", [pair.public_line], templates=TEMPLATES)
    junk_key = tmp_path / "junk"
    junk_key.write_text("not a key")
    assert cli.main(["boot", str(build.path), "--cidata", str(iso), "-i", str(junk_key)]) == 2
    assert "not a private key" in capsys.readouterr().err
    assert cli.main(["boot", str(tmp_path / "nope")]) == 2
    assert not (boot.run_dir(build) / "state.json").exists()


def test_dry_run_prints_qemu_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    build = _build_dir(tmp_path)
    monkeypatch.setattr(proc, "spawn", lambda *a, **k: pytest.fail("must not start QEMU"))
    assert cli.main(["--dry-run", "boot", str(build.path), "--firmware", "efi"]) == 0
    out = capsys.readouterr().out
    assert "would run: /usr/bin/qemu-img create" in out
    assert "would run: qemu-system-x86_64" in out and "if=pflash" in out
    assert not (boot.run_dir(build) / "state.json").exists()
    assert not list(boot.run_dir(build).rglob("*.qcow2"))
