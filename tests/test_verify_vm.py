"""kiln verify and kiln goss-check against real boots of the image the suite builds (shared `built_image`).

Three boots in all (TCG): the good image verified; the image booted once more to break it (containerd
disabled and stopped) where the in-build check (`kiln goss-check`) must fail against the running VM; and
the broken disk verified, which must fail naming containerd and the host keys that boot left behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from kiln import cli
from kiln.core import builddir
from kiln.goss import reports, verify
from kiln.goss import specs as goss
from kiln.vm import cidata, ssh
from kiln.vm.qemu import VM
from kiln_runtime import RUNTIME

TEMPLATES = cidata.template_dir(RUNTIME.root)

pytestmark = pytest.mark.vm


def _build_dir(built_image: Any) -> Path:
    return Path(getattr(built_image, "path", built_image))


def _shadow_build_dir(src: Path, dest_root: Path, qcow2: Path | None = None) -> Path:
    """A build dir next to the shared one: its manifest and config, and the qcow2 (symlinked or given),
    so that reports land in tmp and the shared build dir stays as the build left it."""
    build = builddir.BuildDir.open(src)
    dest = dest_root / src.name
    dest.mkdir(parents=True)
    for name in (builddir.MANIFEST, builddir.CONFIG):
        shutil.copy(src / name, dest / name)
    target = dest / build.qcow2.name
    if qcow2 is None:
        target.symlink_to(build.qcow2)
    else:
        shutil.move(qcow2, target)
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.vm_more
def test_good_image_passes_kiln_verify(
    built_image: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _build_dir(built_image)
    qcow2 = builddir.BuildDir.open(src).qcow2
    before = _sha256(qcow2)
    shadow = _shadow_build_dir(src, tmp_path / "good")

    rc = cli.main(["verify", str(shadow)])
    out, err = capsys.readouterr()
    assert rc == 0, f"kiln verify failed on the freshly built image:\n{out}\n{err}"
    assert "checks passed" in out

    report = json.loads((shadow / "goss" / "report.json").read_text())
    assert report["summary"]["failed-count"] == 0
    assert report["summary"]["test-count"] >= 60
    checked = {(r["resource-type"], r["resource-id"]) for r in report["results"]}
    assert ("Service", "containerd") in checked and (
        "Command",
        "ssh-host-keys-generated-this-boot",
    ) in checked
    suite = ET.parse(shadow / "goss" / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"
    assert (shadow / "goss" / "vars-final.yaml").is_file()
    assert _sha256(qcow2) == before, "kiln verify wrote to the artifact"


@pytest.mark.vm_more
def test_broken_image_fails_in_build_check_and_verify(
    built_image: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _build_dir(built_image)
    build = builddir.BuildDir.open(src)
    keys = ssh.generate_keypair(tmp_path / "key", comment="kiln-test-breaker")
    seed = cidata.write_seed(
        tmp_path / "seed.iso", [keys.public_line], user="kiln", values=build.config, templates=TEMPLATES
    )
    workdir = tmp_path / "break"
    with VM(
        build.qcow2,
        workdir=workdir,
        firmware=build.firmware,
        cidata=seed,
        runtime=RUNTIME,
        memory=2048,
        cpus=2,
    ) as vm:
        vm.wait_for_ssh("kiln", keys.private_key)
        with vm.ssh("kiln", keys.private_key) as session:
            session.run("sudo cloud-init status --wait", check=False, timeout=900)
            # a spec written the way image-builder users write theirs ($vars, range $k, $v :=, with,
            # sprig's contains/semverCompare/trimPrefix/replace, \Q...\E, file contains:, YAML anchors under
            # a non-resource key), rendered and evaluated against the booted image
            ib_vars = {
                "kubernetes_version": build.kubernetes_semver, "OS": "Debian", "extra_packages": ["jq"],
                "sysctls": {"net.ipv4.ip_forward": 1, "net.bridge.bridge-nf-call-iptables": 1},
                "nothing": None,
            }  # fmt: skip
            ib_file = Path(__file__).parent / "fixtures" / "goss-ib" / "node.yaml"
            ib_spec = goss.load_spec(ib_file, ib_vars)
            probe = verify._testinfra_probe("127.0.0.1", vm.ssh_port, "kiln", keys.private_key)
            ib_results = goss.evaluate(ib_spec, probe)
            assert not reports.failures(ib_results), reports.failure_table(ib_results)
            assert len(ib_results) >= 7
            session.run("sudo systemctl disable --now containerd")

        # The in-build check (what Packer's shell-local provisioner runs before sysprep) fails on it:
        rc = cli.main(
            [
                "goss-check",
                "--host", "127.0.0.1", "--port", str(vm.ssh_port), "--user", "kiln",
                "--key", str(keys.private_key), "--config", str(src / builddir.CONFIG),
                "--phase", "build", "--report-dir", str(tmp_path / "goss-check"),
            ]
        )  # fmt: skip
        _, err = capsys.readouterr()
        assert rc == 1, err
        assert "service containerd" in err and "enabled" in err
        report = json.loads((tmp_path / "goss-check" / "report.json").read_text())
        failed = {(r["resource-id"], r["property"]) for r in report["results"] if not r["successful"]}
        assert ("containerd", "enabled") in failed and ("containerd", "running") in failed
        vm.shutdown_cleanly()
        # That boot's disk (containerd disabled, and the host keys, machine-id and cloud-init state of a boot
        # left behind) becomes a build of its own (moved out before the VM would discard its overlay).
        broken = _shadow_build_dir(src, tmp_path / "broken", qcow2=vm.overlay_path)

    # kiln verify must fail on it and name what is wrong.
    rc = cli.main(["verify", str(broken)])
    out, err = capsys.readouterr()
    assert rc == 1, out + err
    assert "service containerd" in err
    assert "ssh-host-keys-generated-this-boot" in err
    report = json.loads((broken / "goss" / "report.json").read_text())
    failed = {(r["resource-id"], r["property"]) for r in report["results"] if not r["successful"]}
    assert ("containerd", "enabled") in failed
    assert ("ssh-host-keys-generated-this-boot", "stdout") in failed
    assert ("machine-id-generated-this-boot", "stdout") in failed
    assert ("no-cloud-init-state-from-the-build", "stdout") in failed
    junit = ET.parse(broken / "goss" / "junit.xml").getroot()
    assert any(
        "containerd" in (case.get("name") or "")
        for case in junit.iter("testcase")
        if case.find("failure") is not None
    )


def test_a_boot_that_stops_in_emergency_mode_fails_at_once_naming_why(
    built_image: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hardening role that blacklists vfat (`install vfat /bin/false` in modprobe.d, as dev-sec's
    os_hardening does unless told otherwise) leaves an image whose ESP does not mount: its boot stops in
    emergency mode, where no SSH login ever comes. kiln verify must say so from the console as soon as it
    happens, naming the unit that failed, and not wait out its 900 s for SSH (exit 1)."""
    import subprocess
    import time

    src = _build_dir(built_image)
    build = builddir.BuildDir.open(src)
    raw, disk = tmp_path / "disk.raw", tmp_path / "emergency.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(build.qcow2), str(raw)], check=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]  # fmt: skip
    root = table["partitions"][-1]
    at, size = root["start"] * 512, root["size"] * 512
    mnt = tmp_path / "root"
    mnt.mkdir()
    subprocess.run(["mount", "-o", f"loop,offset={at},sizelimit={size}", str(raw), str(mnt)], check=True)
    try:
        (mnt / "etc/modprobe.d/kiln-test-hardening.conf").write_text("install vfat /bin/false\n")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(disk)], check=True)
    raw.unlink()
    shadow = _shadow_build_dir(src, tmp_path / "emergency", qcow2=disk)

    started = time.monotonic()
    rc = cli.main(["verify", str(shadow)])
    seconds = time.monotonic() - started
    out, err = capsys.readouterr()
    assert rc == 1, out + err
    assert "the guest will not come up" in err and "emergency mode" in err, err
    assert "Failed to mount boot-efi.mount" in err, err
    assert seconds < 400, f"{seconds:.0f}s: it waited for SSH instead"
    print(f"\nemergency mode reported after {seconds:.0f}s")
