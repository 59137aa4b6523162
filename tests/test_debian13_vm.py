"""debian-13 (trixie) for real, with the chroot runner: its base has systemd-networkd and systemd-resolved
(`bootstrap_network: networkd`), not ifupdown, whose `dhclient -6` held the first boot for five minutes on
the DHCPv6 that cloud-init 25.1 asks for. The build's one verify boot passes every check, no unit failed in
it, and a second boot shows the network cloud-init configured and the name server DHCP gave
(`make test-debian-13`, about 6 minutes; not in CI, whose suite image is debian-12)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from kiln import cli
from kiln.core.builddir import BuildDir

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.vm,
    pytest.mark.debian13,
    pytest.mark.skipif(os.geteuid() != 0, reason="the chroot runner needs root"),
]


def _files(build: BuildDir) -> dict[str, dict]:
    lines = (build.path / f"{build.name}.files.jsonl").read_text().splitlines()
    return {entry["path"]: entry for entry in map(json.loads, lines)}


def test_debian_13_builds_boots_and_resolves_through_networkd(tmp_path, capsys):
    out = tmp_path / "out"
    accel = os.environ.get("KILN_TEST_ACCELERATOR", "tcg")
    flags = f"-var output_dir={out} -var accelerator={accel}"
    run = subprocess.run(
        ["make", "--no-print-directory", "build-qemu-debian-13", "K8S_STANDIN=1", f"PACKER_FLAGS={flags}",
         "FORMATS=qcow2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:]
    assert "mmdebstrap trixie" in run.stdout or "reusing cached base disk" in run.stdout
    (path,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "logs"]
    build = BuildDir.open(path)

    # the one verify boot: every check passed, the hygiene's "no unit failed" among them
    report = json.loads((path / "goss" / "report.json").read_text())
    failed = [r["resource-id"] for r in report["results"] if not r["successful"] and not r["skipped"]]
    assert report["results"] and not failed, failed
    assert any(r["resource-id"] == "no-unit-failed-in-the-boot" for r in report["results"])

    # the image at rest: networkd's stack, resolved's link, nothing of ifupdown or the build host
    packages = dict(
        line.split("\t", 1) for line in (path / f"{build.name}.packages").read_text().splitlines()
    )
    assert "systemd-resolved" in packages and not {"ifupdown", "isc-dhcp-client"} & packages.keys()
    files = _files(build)
    assert files["/etc/resolv.conf"]["type"] == "l"
    assert files["/etc/resolv.conf"]["target"] == "../run/systemd/resolve/stub-resolv.conf"
    assert "/etc/cloud/cloud.cfg.d/05_kiln_network.cfg" in files
    assert "/etc/network/interfaces" not in files
    assert "/etc/.resolv.conf.systemd-resolved.bak" not in files
    assert not [p for p in files if p.startswith("/etc/systemd/network/")], "a network config at rest"
    wants = "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    assert files[wants]["type"] == "l"

    # a boot of the image as a user boots it: cloud-init's networkd unit, DHCP's name server in resolved
    assert cli.main(["boot", "--detach", str(path)]) == 0, capsys.readouterr().out
    try:
        capsys.readouterr()
        probe = (
            "networkctl --no-pager --no-legend list; echo ==; resolvectl dns; echo ==; "
            "ls /etc/systemd/network; echo ==; systemctl --failed --no-pager --no-legend; echo =="
        )
        assert cli.main(["ssh", str(path), "--", "sudo", "-n", "sh", "-c", probe]) == 0
        links, dns, units, failed_units, _ = capsys.readouterr().out.split("==\n")
        assert re.search(r"^\s*\d+ (ens|eth)\S+\s+ether\s+routable\s+configured", links, re.M), links
        assert re.search(r"Link \d+ \(\S+\): 10\.0\.2\.3", dns), dns  # QEMU's user network's name server
        assert re.search(r"^10-cloud-init-\S+\.network$", units, re.M), units
        assert failed_units.strip() == "", failed_units
    finally:
        assert cli.main(["boot", "--stop", str(path)]) == 0
