"""conformance: the ginkgo flags as data, CNI configs, tarball checks, and the whole flow with the stand-in
tarball (TEST FIXTURE tests/fixtures/conformance: a ginkgo stand-in that records its argv and runs an
e2e_node.test stand-in that writes JUnit). Here the "guest" is a local shell (LocalRemote, a fake); the
real counterpart runs the same flow over SSH in a booted kiln image in tests/test_boot_vm.py."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from xml.etree import ElementTree

import pytest

from fixtures.conformance.standin import make_standin_tarball
from kiln import cli
from kiln.core.errors import CommandError, InputError, KilnError
from kiln.vm import conformance

# image-builder's documented command ("Run the e2e node conformance tests"), verbatim.
UPSTREAM = (
    r"""sudo ./ginkgo --nodes=8 --flakeAttempts=2 --focus="\[Conformance\]" """
    r"""--skip="\[Flaky\]|\[Serial\]|\[sig-network\]|Container Lifecycle Hook" ./e2e_node.test -- """
    r"""--k8s-bin-dir=/usr/bin --container-runtime=remote --container-runtime-endpoint """
    r"""unix:///var/run/containerd/containerd.sock """
    r"""--container-runtime-process-name /usr/local/bin/containerd """
    r"""--container-runtime-pid-file= --kubelet-flags="--cgroups-per-qos=true --cgroup-root=/ """
    r"""--runtime-cgroups=/system.slice/containerd.service" --extra-log="{\"name\": \"containerd.log\", """
    r"""\"journalctl\": [\"-u\", \"containerd\"]}" """
)


def test_flags_match_image_builders_command_line() -> None:
    argv = conformance.Flags().argv(
        k8s_bin_dir="/usr/bin", containerd="/usr/local/bin/containerd", report_dir="/r"
    )
    upstream = shlex.split(UPSTREAM)[1:]  # without sudo
    assert argv[:-1] == upstream  # the same words, after shell unquoting
    assert argv[-1] == "--report-dir=/r"  # kiln's addition: where JUnit lands


def test_flag_overrides_replace_only_their_flag() -> None:
    flags = conformance.Flags().with_overrides(nodes=2, focus="NodeConformance")
    argv = flags.argv(k8s_bin_dir="/opt/bin", containerd="/usr/bin/containerd", report_dir="/r")
    assert "--nodes=2" in argv and "--focus=NodeConformance" in argv
    assert "--flakeAttempts=2" in argv and conformance.GINKGO_FLAGS[3] in argv
    assert "--k8s-bin-dir=/opt/bin" in argv
    assert argv[argv.index("--container-runtime-process-name") + 1] == "/usr/bin/containerd"


def test_cni_configs_are_the_upstream_networks() -> None:
    files = conformance.cni_configs("0.2.0")
    assert sorted(files) == ["10-mynet.conf", "99-loopback.conf"]
    bridge = json.loads(files["10-mynet.conf"])
    assert bridge == {
        "cniVersion": "0.2.0", "name": "mynet", "type": "bridge", "bridge": "cni0", "isGateway": True,
        "ipMasq": True,
        "ipam": {"type": "host-local", "subnet": "10.22.0.0/16", "routes": [{"dst": "0.0.0.0/0"}]},
    }  # fmt: skip
    assert json.loads(files["99-loopback.conf"]) == {"cniVersion": "0.2.0", "name": "lo", "type": "loopback"}


def test_cni_version_choice() -> None:
    assert conformance.pick_cni_version(["0.1.0", "0.2.0", "1.0.0"]) == "0.2.0"
    assert conformance.pick_cni_version(["0.3.0", "0.3.1", "0.4.0", "1.0.0"]) == "1.0.0"
    with pytest.raises(KilnError):
        conformance.pick_cni_version([])


# --- tarball ---------------------------------------------------------------------------------------------


def test_extract_binaries_from_standin_tarball(tmp_path: Path) -> None:
    tarball = make_standin_tarball(tmp_path / "kubernetes-test.tar.gz")
    found = conformance.extract_binaries(tarball, tmp_path / "bin")
    assert sorted(found) == ["e2e_node.test", "ginkgo"]
    assert all(p.stat().st_mode & 0o111 for p in found.values())
    assert sorted(p.name for p in (tmp_path / "bin").iterdir()) == ["e2e_node.test", "ginkgo"]


def test_missing_binary_in_tarball_is_input_error(tmp_path: Path) -> None:
    tarball = make_standin_tarball(tmp_path / "t.tar.gz", omit="e2e_node.test")
    with pytest.raises(InputError, match=r"t.tar.gz: missing kubernetes/platforms/linux/amd64/e2e_node.test"):
        conformance.extract_binaries(tarball, tmp_path / "bin")


def test_wrong_tarballs_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="test tarball not found"):
        conformance.extract_binaries(tmp_path / "nope.tar.gz", tmp_path / "bin")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not a tarball")
    with pytest.raises(InputError, match="junk.tar.gz: not a readable tar.gz"):
        conformance.extract_binaries(junk, tmp_path / "bin")
    server = tmp_path / "kubernetes-server.tar.gz"
    with tarfile.open(server, "w:gz") as tar:
        d = tarfile.TarInfo("kubernetes/platforms/linux/amd64/ginkgo")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
    with pytest.raises(InputError, match="ginkgo is not a regular file"):
        conformance.extract_binaries(server, tmp_path / "bin")


# --- the flow with a local "guest" ------------------------------------------------------------------------


class LocalRemote:
    """FAKE guest for unit tests: runs commands in a local shell, copies files locally. The real
    counterpart is kiln.ssh.Session into a booted image (tests/test_boot_vm.py)."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def run(
        self, cmd: str | Sequence[str], *, check: bool = True, timeout: float | None = 600,
        on_line: Callable[[str], None] | None = None, input_text: str | None = None,
    ) -> tuple[int, str, str]:  # fmt: skip
        text = cmd if isinstance(cmd, str) else shlex.join(cmd)
        self.commands.append(text)
        done = subprocess.run(
            ["bash", "-c", text], input=input_text or "", capture_output=True, text=True, timeout=timeout
        )
        if on_line:
            for line in done.stdout.splitlines():
                on_line(line)
        if check and done.returncode:
            raise CommandError(["local", text], done.returncode, done.stdout + done.stderr)
        return done.returncode, done.stdout, done.stderr

    def put(self, local: str | Path, remote: str, mode: int | None = None) -> None:
        shutil.copyfile(local, remote)
        Path(remote).chmod(mode or 0o644)

    def get(self, remote: str, local: str | Path) -> Path:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(remote, local)
        return Path(local)


def _fake_cni_dir(root: Path, versions: list[str]) -> Path:
    """FAKE CNI plugins answering CNI_COMMAND=VERSION like the real ones."""
    root.mkdir(parents=True)
    answer = json.dumps({"cniVersion": versions[-1], "supportedVersions": versions})
    for name in conformance.CNI_PLUGINS:
        plugin = root / name
        plugin.write_text(f"#!/bin/sh\n[ \"$CNI_COMMAND\" = VERSION ] && echo '{answer}'\n")
        plugin.chmod(0o755)
    return root


def _run_standin(tmp_path: Path, *, fail: bool = False) -> tuple[conformance.Result, LocalRemote, Path]:
    binaries = conformance.extract_binaries(
        make_standin_tarball(tmp_path / "kubernetes-test.tar.gz"), tmp_path / "extracted"
    )
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "bridge").write_text("")
    cni_bin = _fake_cni_dir(tmp_path / "cni-bin", ["0.3.1", "0.4.0", "1.0.0"])
    guest = tmp_path / "guest"
    flags = conformance.Flags().with_overrides(focus="STANDIN-FAIL" if fail else None)
    remote = LocalRemote()
    lines: list[str] = []
    result = conformance.run(
        remote, binaries, tmp_path / "results", flags=flags,
        cni_bin_dirs=[str(incomplete), str(cni_bin)], cni_conf_dir=str(tmp_path / "net.d"),
        remote_dir=str(guest), sudo="", on_line=lines.append, cni_check=False,  # netns: the VM test does it
    )  # fmt: skip
    assert any("e2e_node.test stand-in: wrote" in line for line in lines)  # progress streamed
    return result, remote, guest


def test_run_with_standin_tarball_writes_cni_runs_flags_and_brings_junit_back(tmp_path: Path) -> None:
    result, remote, guest = _run_standin(tmp_path)
    assert result.returncode == 0
    assert result.cni_bin_dir == str(tmp_path / "cni-bin")  # skipped the incomplete dir
    assert result.cni_version == "1.0.0"  # 0.2.0 unsupported by these plugins: highest they report
    bridge = json.loads((tmp_path / "net.d" / "10-mynet.conf").read_text())
    assert bridge["cniVersion"] == "1.0.0" and bridge["bridge"] == "cni0"
    assert (tmp_path / "net.d" / "99-loopback.conf").is_file()
    # the stand-in ginkgo recorded exactly the argv kiln built (the upstream flags plus --report-dir)
    recorded = (guest / "results" / "ginkgo-argv.txt").read_text().splitlines()
    assert recorded == result.argv[1:]
    assert recorded[:4] == list(conformance.GINKGO_FLAGS)
    assert f"--report-dir={guest}/results" in recorded
    # JUnit came back into the results dir and parses
    assert [p.name for p in result.junit_files] == ["junit_01.xml"]
    suite = ElementTree.parse(result.junit_files[0]).getroot()
    assert suite.get("tests") == "1" and suite.get("failures") == "0"
    assert "$ cd " in result.log_file.read_text()


def test_failing_run_still_collects_junit(tmp_path: Path) -> None:
    result, _, _ = _run_standin(tmp_path, fail=True)
    assert result.returncode == 1
    suite = ElementTree.parse(result.junit_files[0]).getroot()
    assert suite.get("failures") == "1"


def test_image_without_cni_plugins_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="no complete set of CNI plugins"):
        conformance.find_cni_bin_dir(LocalRemote(), [str(tmp_path / "a"), str(tmp_path / "b")])


def test_cli_bad_tarball_exits_2_before_booting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    build = tmp_path / "debian-12+kube-v1.30.2"
    build.mkdir()
    manifest = {"builds": [{"custom_data": {"build_name": "debian-12", "kubernetes_semver": "v1.30.2"}}]}
    (build / "packer-manifest.json").write_text(json.dumps(manifest))
    from kiln.vm import boot

    monkeypatch.setattr(boot, "start", lambda *a, **k: pytest.fail("must not boot"))
    junk = tmp_path / "kubernetes-test.tar.gz"
    junk.write_text("not a tar")
    assert cli.main(["conformance", str(build), "--tests", str(junk)]) == 2
    assert "not a readable tar.gz" in capsys.readouterr().err
    assert cli.main(["conformance", str(build), "--tests", str(tmp_path / "missing.tar.gz")]) == 2
    assert "test tarball not found" in capsys.readouterr().err
    assert not (build / "conformance").exists()
