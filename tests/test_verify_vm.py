"""kiln verify against real boots of the image the suite builds (shared `built_image`).

Three boots in all (TCG): the OVA's disk verified on UEFI; a copy of the disk with a provisioning boot's
leftovers written into it and containerd disabled, which must fail naming each; and a copy whose
modprobe.d keeps the ESP from mounting, whose boot stops in emergency mode. `kiln goss-check` against a
running VM is in the seeded boot of tests/test_boot_vm.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln import cli
from kiln.core import builddir
from kiln.goss import treephase
from kiln.vm import cidata
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
    record = treephase.record_path(src)  # what the build checked in the tree is part of the build dir
    if record.is_file():
        treephase.record_path(dest).parent.mkdir()
        shutil.copy(record, treephase.record_path(dest))
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


def test_the_ovas_disk_passes_kiln_verify_on_uefi(
    built_image: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One boot for three things: the OVA's VMDK (converted back) is a whole, bootable disk; the image boots
    through OVMF (UEFI) as well as the build's own verify boot's SeaBIOS; and `kiln verify` passes on a good
    image, the build's tree record skipping the site's checks of the image at rest, the disk it booted
    untouched (it boots a throwaway overlay)."""
    src = _build_dir(built_image)
    build = builddir.BuildDir.open(src)
    with tarfile.open(build.ova) as tar:
        vmdk = next(n for n in tar.getnames() if n.endswith(".vmdk"))
        tar.extract(vmdk, tmp_path, filter="data")
    back = tmp_path / "from-ova.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(tmp_path / vmdk), str(back)], check=True)
    (tmp_path / vmdk).unlink()
    before = _sha256(back)
    shadow = _shadow_build_dir(src, tmp_path / "good", qcow2=back)

    rc = cli.main(["verify", str(shadow), "--firmware", "efi"])
    out, err = capsys.readouterr()
    assert rc == 0, f"kiln verify failed on the OVA's disk:\n{out}\n{err}"
    assert "checks passed" in out and f"reports in {shadow / 'goss' / 'disk-efi'}" in out

    assert not (shadow / "goss" / "report.json").exists(), "the build's own record is not written over"
    reports = shadow / "goss" / "disk-efi"  # the disk on the other firmware: a directory of its own
    report = json.loads((reports / "report.json").read_text())
    assert report["summary"]["failed-count"] == 0
    assert report["summary"]["test-count"] >= 60
    assert (report["kiln"]["firmware"], report["kiln"]["hardware"], report["kiln"]["format"]) == (
        "efi",
        "virtio",
        "disk",
    )
    outcome = {(r["resource-type"], r["resource-id"]): r for r in report["results"]}
    for key in (("Service", "containerd"), ("Command", "ssh-host-keys-generated-this-boot"),
                ("Command", "booted-with-the-firmware-asked-for")):  # fmt: skip
        assert outcome[key]["successful"] and not outcome[key]["skipped"], key
    assert outcome[("Command", "test ! -s /etc/machine-id")]["skipped"], "passed in the tree: skipped"
    suite = ET.parse(reports / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"
    assert (reports / "vars-final.yaml").is_file()
    assert "verify_firmware: efi" in (reports / "vars-final.yaml").read_text()
    assert _sha256(builddir.BuildDir.open(shadow).qcow2) == before, "kiln verify wrote to the disk it booted"


def test_a_disk_with_a_boots_leftovers_and_containerd_disabled_fails_kiln_verify(
    built_image: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The image with what a provisioning boot leaves behind written into it (an SSH host key, a
    machine-id, a cloud-init instance) and containerd no longer enabled: kiln verify fails (exit 1) naming
    each. The running-VM side (`kiln goss-check` failing on a stopped containerd) is in the seeded boot of
    tests/test_boot_vm.py."""
    src = _build_dir(built_image)
    build = builddir.BuildDir.open(src)
    disk = tmp_path / "broken.qcow2"
    with _root_of_a_copy(build.qcow2, disk, tmp_path) as root:
        # (a link to /lib/systemd/system/... resolves to nothing here: look for the link itself)
        wants = [d / "containerd.service" for d in root.glob("etc/systemd/system/*.wants")
                 if (d / "containerd.service").is_symlink()]  # fmt: skip
        assert wants, "containerd is enabled in the image"
        for link in wants:
            link.unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "baked",
                        "-f", str(root / "etc/ssh/ssh_host_ed25519_key")], check=True)  # fmt: skip
        (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
        (root / "var/lib/cloud/instances/iid-of-the-build-vm").mkdir(parents=True)
    broken = _shadow_build_dir(src, tmp_path / "broken", qcow2=disk)

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


@contextlib.contextmanager
def _root_of_a_copy(qcow2: Path, out: Path, tmp_path: Path) -> Iterator[Path]:
    """The root file system of a raw copy of `qcow2`, mounted read-write; on a clean exit the copy becomes
    the qcow2 `out`."""
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(qcow2), str(raw)], check=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]  # fmt: skip
    root = table["partitions"][-1]
    at, size = root["start"] * 512, root["size"] * 512
    mnt = tmp_path / "root"
    mnt.mkdir()
    subprocess.run(["mount", "-o", f"loop,offset={at},sizelimit={size}", str(raw), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out)], check=True)
    raw.unlink()


def test_a_boot_that_stops_in_emergency_mode_fails_at_once_naming_why(
    built_image: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hardening role that blacklists vfat (`install vfat /bin/false` in modprobe.d, as dev-sec's
    os_hardening does unless told otherwise) leaves an image whose ESP does not mount: its boot stops in
    emergency mode, where no SSH login ever comes. kiln verify must say so from the console as soon as it
    happens, naming the unit that failed, and not wait out its 900 s for SSH (exit 1)."""
    import time

    src = _build_dir(built_image)
    build = builddir.BuildDir.open(src)
    disk = tmp_path / "emergency.qcow2"
    with _root_of_a_copy(build.qcow2, disk, tmp_path) as root:
        (root / "etc/modprobe.d/kiln-test-hardening.conf").write_text("install vfat /bin/false\n")
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


def test_the_vm_runners_disk_is_checked_at_rest_as_the_chroot_runners_tree(
    built_image: Any, tmp_path: Path
) -> None:
    """What the VM runner does with a bootstrap target's disk after sysprep and Packer's shutdown
    (kiln.build.runners._check_at_rest), on the suite image's qcow2, a disk at rest as that shutdown leaves
    one: its root mounted from a throwaway copy, the build phase's checks of the image at rest pass there
    (the site's image-builder-style ones too: no host keys, an empty machine-id), and the record holds what
    the chroot runner's does. A copy without /etc/kiln-release fails the stage naming it. Nothing stays
    mounted. (The VM runner's whole build: `make test-vm-runner`.)"""
    from types import SimpleNamespace

    from kiln.build import runners
    from kiln.core.errors import VerifyError

    build = builddir.BuildDir.open(_build_dir(built_image))
    lines: list[str] = []
    ws = SimpleNamespace(
        work=tmp_path / "work", runtime=RUNTIME, log_file=None, values=build.values(),
        monitor=SimpleNamespace(log=lambda stage, text, show=True: lines.append(text)),
        tree_record=tmp_path / "good" / treephase.RECORD,
    )  # fmt: skip
    ws.work.mkdir()
    runners._check_at_rest(ws, "kubernetes", build.qcow2)  # type: ignore[arg-type]
    assert any("0 failed (on the disk at rest, after sysprep and shutdown" in line for line in lines), lines
    record = json.loads(ws.tree_record.read_text())
    chroot_record = json.loads(treephase.record_path(build.path).read_text())
    assert record == chroot_record, "the same checks pass at rest in both runners"
    assert any("ssh_host" in key for key in json.dumps(record).split('"')), "the site's host-key check"
    assert not list(ws.work.iterdir()), "the copy and its mount point go"

    broken = tmp_path / "broken.qcow2"
    with _root_of_a_copy(build.qcow2, broken, tmp_path) as root:
        (root / "etc/kiln-release").unlink()
    ws.tree_record = tmp_path / "broken" / treephase.RECORD
    with pytest.raises(VerifyError, match=r"(?s)goss build phase \(on the disk at rest.*/etc/kiln-release"):
        runners._check_at_rest(ws, "kubernetes", broken)  # type: ignore[arg-type]
    assert not ws.tree_record.exists()
    mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in mounts
