"""The real thing, in ONE boot of the shared kiln-built image (CI budget): a freshly made cidata.iso is
applied by the guest's real cloud-init (the one-time key logs in over SSH with paramiko, the hostname is
meta-data's, the user-data marker is there, password login is off), the node is as kubeadm needs it and its
identity was made at this boot, an image-builder-style spec passes on it, `kiln ssh` and hack/image-ssh.sh
(OpenSSH) log in, `kiln conformance` runs the stand-in tarball (TEST FIXTURE) over SSH with the image's
real CNI plugins, `kiln goss-check` fails naming containerd once it is stopped, and `kiln boot --stop`
leaves no QEMU behind and the artifact untouched."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fixtures.conformance.standin import make_standin_tarball
from kiln import cli
from kiln.core import builddir
from kiln.core.builddir import BuildDir
from kiln.goss import reports, verify
from kiln.goss import specs as goss
from kiln.vm import boot, cidata, conformance, control, ssh
from kiln.vm import qemu as vm
from kiln_runtime import RUNTIME

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.vm


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_seeded_boot_ssh_hostname_conformance_and_stop(
    built_image,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    build = built_image.dir
    artifact_sha = _sha256(build.qcow2)
    pair = ssh.generate_keypair(tmp_path / "key", comment="kiln-test")
    seed = tmp_path / "cidata.iso"
    hostname = "kiln-boot-test"
    assert (
        cli.main(["cidata", "-o", str(seed), "--ssh-public-key", str(pair.public_key), "--hostname", hostname,
                  "--build-dir", str(build.path), "--user", "tester"])
        == 0
    )  # fmt: skip
    label, files = cidata.read_iso(seed)
    assert label == "cidata"
    instance_id = yaml.safe_load(files["meta-data"])["instance-id"]

    rdir = boot.run_dir(build)
    try:
        # on the OVA's virtual hardware (a PVSCSI disk, a VMXNET3 NIC), as vSphere boots it; the build's own
        # verify boot has virtio on BIOS, test_verify_vm's the OVA's disk on UEFI
        key = str(pair.private_key)
        rc = cli.main(["boot", "--detach", str(build.path), "--cidata", str(seed), "-i", key,
                       "--hardware", "vmware", "--firmware", "bios"])  # fmt: skip
        out = capsys.readouterr().out
        assert rc == 0, out
        state = boot.read_state(build)
        assert state is not None and state.user == "tester" and state.hardware == "vmware"
        assert f"is up ({state.accelerator}, bios, vmware)" in out
        assert f"kiln ssh {build.path}" in out and f"-p {state.ssh_port}" in out
        assert Path(state.serial_log).stat().st_size > 0

        # real cloud-init applied the seed: key login (paramiko), hostname, marker, no passwords
        with ssh.Session("127.0.0.1", state.ssh_port, "tester", pair.private_key, timeout=60) as s:
            assert s.run("hostname")[1].strip() == hostname
            assert f"instance_id={instance_id}" in s.run("cat /etc/kiln/seed")[1]
            status = s.run("cloud-init status --long", check=False)[1]
            assert "status: done" in status and "NoCloud" in status, status
            sshd = s.run("sudo -n sshd -T")[1].lower()
            assert "passwordauthentication no" in sshd
            assert s.run("sudo -n passwd -S tester")[1].split()[1] == "L"  # password locked
            # the image's initramfs found its root on PVSCSI and its network on VMXNET3
            assert s.run("findmnt -no SOURCE /")[1].startswith("/dev/sda"), "root not on the SCSI disk"
            drivers = s.run("ls /sys/bus/pci/drivers/vmw_pvscsi /sys/bus/pci/drivers/vmxnet3")[1]
            assert drivers.count("0000:") == 2, drivers
            if state.accelerator == "tcg":  # the guest CPU kiln gives TCG
                flags = set(s.run("grep -m1 ^flags /proc/cpuinfo")[1].split())
                assert "avx2" in flags and not flags & {"erms", "fsrm"}, sorted(flags)
            _node_checks(s, build)
        other = ssh.generate_keypair(tmp_path / "other")
        with pytest.raises(ssh.SSHError):
            ssh.Session("127.0.0.1", state.ssh_port, "tester", other.private_key, timeout=5)

        # kiln ssh (paramiko) and hack/image-ssh.sh (OpenSSH) find the boot through the state file
        assert cli.main(["ssh", str(build.path), "--", "cat", "/etc/hostname"]) == 0
        assert capsys.readouterr().out.strip() == hostname
        assert cli.main(["ssh", str(build.path), "--", "exit 5"]) == 5
        done = subprocess.run(
            [str(REPO / "hack" / "image-ssh.sh"), str(build.path), "id -un"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "tester"

        # a second boot of the same build is refused while this one runs
        assert cli.main(["boot", "--detach", str(build.path)]) == 2
        assert "already booted" in capsys.readouterr().err

        # conformance with the stand-in tarball, over SSH, on the running boot
        tarball = make_standin_tarball(tmp_path / "kubernetes-test.tar.gz")
        results = tmp_path / "results"
        # the stand-in takes seconds; a bounded run fails fast if the emulated guest wedges (an RCU
        # stall under TCG was seen once) instead of holding the suite for the 4 h default
        rc = cli.main(["conformance", str(build.path), "--tests", str(tarball), "--nodes", "1",
                       "--results", str(results), "--timeout", "300"])  # fmt: skip
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "e2e_node.test stand-in: wrote" in out
        assert (results / "junit_01.xml").is_file()
        with ssh.Session("127.0.0.1", state.ssh_port, "tester", pair.private_key, timeout=60) as s:
            bridge = json.loads(s.run("cat /etc/cni/net.d/10-mynet.conf")[1])
            assert bridge["type"] == "bridge" and bridge["ipam"]["subnet"] == "10.22.0.0/16"
            argv = s.run("cat /var/tmp/kiln-conformance/results/ginkgo-argv.txt")[1].splitlines()
            assert argv[0] == "--nodes=1" and argv[2:4] == list(conformance.GINKGO_FLAGS[2:4])
            assert "ginkgo stand-in: running as root" in (results / "conformance.log").read_text()

        # a spec written the way image-builder users write theirs ($vars, range $k, $v :=, with, sprig's
        # contains/semverCompare/trimPrefix/replace, \Q...\E, file contains:, YAML anchors under a
        # non-resource key), rendered and evaluated against the booted image
        ib_vars = {
            "kubernetes_version": build.kubernetes_semver, "OS": "Debian", "extra_packages": ["jq"],
            "sysctls": {"net.ipv4.ip_forward": 1, "net.bridge.bridge-nf-call-iptables": 1}, "nothing": None,
        }  # fmt: skip
        ib_spec = goss.load_spec(REPO / "tests" / "fixtures" / "goss-ib" / "node.yaml", ib_vars)
        probe = verify._testinfra_probe("127.0.0.1", state.ssh_port, "tester", pair.private_key)
        try:
            ib_results = goss.evaluate(ib_spec, probe)
        finally:
            probe.host.backend.close()
        assert not reports.failures(ib_results), reports.failure_table(ib_results)
        assert len(ib_results) >= 7

        # the in-build check (`kiln goss-check`, as the VM runner runs it before sysprep) fails on a running
        # node whose containerd was stopped and disabled, naming it
        with ssh.Session("127.0.0.1", state.ssh_port, "tester", pair.private_key, timeout=60) as s:
            s.run("sudo systemctl disable --now containerd")
        rc = cli.main(
            [
                "goss-check",
                "--host", "127.0.0.1", "--port", str(state.ssh_port), "--user", "tester",
                "--key", str(pair.private_key), "--config", str(build.path / builddir.CONFIG),
                "--phase", "build", "--report-dir", str(tmp_path / "goss-check"),
            ]
        )  # fmt: skip
        err = capsys.readouterr().err
        assert rc == 1, err
        assert "service containerd" in err and "enabled" in err
        report = json.loads((tmp_path / "goss-check" / "report.json").read_text())
        failed = {(r["resource-id"], r["property"]) for r in report["results"] if not r["successful"]}
        assert ("containerd", "enabled") in failed and ("containerd", "running") in failed
        # and so does its `--running-only` form (the VM runner's build VM of a bootstrap target, whose disk
        # is checked at rest after shutdown), whose report holds no check of the image at rest
        rc = cli.main(
            [
                "goss-check",
                "--host", "127.0.0.1", "--port", str(state.ssh_port), "--user", "tester",
                "--key", str(pair.private_key), "--config", str(build.path / builddir.CONFIG),
                "--phase", "build", "--report-dir", str(tmp_path / "running"), "--running-only",
            ]
        )  # fmt: skip
        assert rc == 1, capsys.readouterr().err
        running = json.loads((tmp_path / "running" / "report.json").read_text())["results"]
        kinds = {r["resource-type"] for r in running}
        assert "Service" in kinds and not kinds & {"Package", "Command"}, kinds
        files = {r["resource-id"] for r in running if r["resource-type"] == "File"}
        assert files and all(f.startswith(("/proc/", "/sys/", "/run/", "/dev/")) for f in files), files
        assert ("containerd", "running") in {(r["resource-id"], r["property"]) for r in running
                                             if not r["successful"]}  # fmt: skip
        assert len(running) < len(report["results"])

        # stop: no QEMU left, run dir cleaned, artifact untouched
        assert cli.main(["boot", "--stop", str(build.path)]) == 0
        assert not control.pid_alive(state.pid)
        assert boot.read_state(build) is None
        assert not (rdir / "vm" / "overlay.qcow2").exists()
        assert (rdir / "vm" / "serial.log").exists()
    finally:
        leftover = boot.read_state(build)
        if leftover is not None:
            vm.stop_process(leftover.pid, leftover.qmp_socket, timeout=0)
        shutil.rmtree(rdir, ignore_errors=True)
    assert _sha256(build.qcow2) == artifact_sha


def test_ova_vmdk_is_the_same_disk_for_qemu(built_image, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """kiln boot boots an OVA-only build from the VMDK inside it: QEMU must read it as the same disk."""
    build = built_image.dir
    if not build.ova.is_file():
        pytest.skip(f"{build.ova} not built")
    vmdk = boot.extract_vmdk(build.ova, tmp_path)
    assert vm.detect_format(vmdk, RUNTIME) == "vmdk"
    from kiln.core import proc

    proc.run(
        ["qemu-img", "compare", "-f", "vmdk", "-F", "qcow2", str(vmdk), str(build.qcow2)], runtime=RUNTIME
    )


def _node_checks(s: ssh.Session, build: BuildDir) -> None:
    """The node as kubeadm finds it, and an identity made at this boot (beside kiln's goss specs, which
    verify runs: these read the same facts another way)."""

    def out(cmd: str) -> str:
        return s.run(cmd, timeout=120)[1].strip()

    semver = build.kubernetes_semver
    assert out("sudo systemctl is-active containerd") == "active"
    assert out("sudo ctr version >/dev/null && echo ok") == "ok"
    assert semver in out("kubelet --version")
    assert out("kubeadm version -o short") == semver
    assert semver in out("kubectl version --client")
    assert out("sudo systemctl is-enabled kubelet") == "enabled"
    assert out("cat /proc/sys/net/ipv4/ip_forward") == "1"
    assert out("cat /proc/sys/net/bridge/bridge-nf-call-iptables") == "1"
    assert out("cat /proc/sys/net/bridge/bridge-nf-call-ip6tables") == "1"
    modules = out("awk '{print $1}' /proc/modules").split()
    assert "overlay" in modules and "br_netfilter" in modules
    assert out("tail -n +2 /proc/swaps | wc -l") == "0"
    # booted from its own bootloader with the image's firmware
    assert out("cat /proc/cmdline").startswith("BOOT_IMAGE=")
    # with no wait at GRUB's menu (grub_timeout 0: every `set timeout=` of the grub.cfg it booted says 0)
    assert out("sudo grep -h 'set timeout=' /boot/grub/grub.cfg | tr -d ' ' | sort -u") == "settimeout=0"
    assert out("test -d /sys/firmware/efi && echo efi || echo bios") == build.firmware
    # identity made at this boot, not baked in: host keys and machine-id are newer than the boot
    boot_time = int(out("awk '/^btime/ {print $2}' /proc/stat"))
    assert int(out("stat -c %Y /etc/ssh/ssh_host_ed25519_key.pub")) >= boot_time - 5
    assert re.fullmatch(r"[0-9a-f]{32}", out("cat /etc/machine-id"))
    assert out(f"id -u {build.custom_data['ssh_username']} 2>/dev/null || echo none") == "none"
    assert out("sudo sh -c 'cat /home/*/.ssh/authorized_keys' | sort -u | wc -l") == "1"  # this boot's key
