"""kiln verify / kiln goss-check: bad input (exit 2, nothing written), failure reporting (exit 1)."""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest

from kiln import cli, config
from kiln.core.builddir import BuildDir
from kiln.core.errors import InputError, VerifyError
from kiln.goss import reports, treephase, verify
from kiln.goss import specs as goss
from kiln_runtime import RUNTIME


def _build_dir(tmp_path: Path, with_qcow2: bool = True) -> Path:
    d = tmp_path / "debian-12+kube-v1.30.2"
    d.mkdir()
    cfg = config.load("debian-12")
    (d / "config.json").write_text(json.dumps(cfg.to_json()))
    custom = {"build_name": "debian-12", "kubernetes_semver": "v1.30.2", "firmware": "bios"}
    (d / "packer-manifest.json").write_text(json.dumps({"builds": [{"custom_data": custom}]}))
    if with_qcow2:
        (d / "debian-12+kube-v1.30.2.qcow2").write_bytes(b"QFI\xfb" + b"\0" * 512)
    return d


def test_load_config_json_accepts_both_forms_and_names_bad_files(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(
        json.dumps({"os_family": {"value": "debian", "origin": "config/x.json"}})
    )
    (tmp_path / "b.json").write_text(json.dumps({"os_family": "redhat"}))
    (tmp_path / "c.json").write_text("{not json")
    assert verify.load_config_json(tmp_path / "a.json") == {"os_family": "debian"}
    assert verify.load_config_json(tmp_path / "b.json") == {"os_family": "redhat"}
    with pytest.raises(InputError, match=r"c.json: line 1 column 2: malformed JSON"):
        verify.load_config_json(tmp_path / "c.json")
    with pytest.raises(InputError, match=r"missing.json: config does not exist"):
        verify.load_config_json(tmp_path / "missing.json")


def test_goss_check_bad_input_exits_2_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config.load("debian-12").to_json()))
    key = tmp_path / "key"
    key.write_text("not used")
    base = ["goss-check", "--host", "127.0.0.1", "--port", "1", "--user", "u"]

    assert cli.main([*base, "--key", str(tmp_path / "nokey"), "--config", str(cfg)]) == 2
    assert "nokey: SSH key file not found" in capsys.readouterr().err

    partial = tmp_path / "partial.json"
    partial.write_text(
        json.dumps({k: v for k, v in config.load("debian-12").to_json().items() if k != "cni_bin_dir"})
    )
    assert (
        cli.main([*base, "--key", str(key), "--config", str(partial), "--report-dir", str(tmp_path / "r")])
        == 2
    )
    err = capsys.readouterr().err
    assert "vars.yaml.j2" in err and "cni_bin_dir" in err
    assert not (tmp_path / "r").exists()  # nothing half-written

    # the final phase needs the one-time verify facts
    assert cli.main([*base, "--key", str(key), "--config", str(cfg), "--phase", "final"]) == 2
    assert "verify_user" in capsys.readouterr().err
    assert cli.main([*base, "--key", str(key), "--config", str(cfg), "--var", "novalue"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_verify_bad_build_dirs_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "tmp"  # the host's temp dir, where verify's work dir is made
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert cli.main(["verify", str(tmp_path / "nope")]) == 2
    assert "not a build directory" in capsys.readouterr().err
    d = _build_dir(tmp_path, with_qcow2=False)
    assert cli.main(["verify", str(d)]) == 2
    assert "has no qcow2 to boot" in capsys.readouterr().err
    assert not (d / "goss").exists()
    assert list(temp.iterdir()) == [], "the refused verify's work dir is left"


def test_a_broken_spec_fails_before_any_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = dataclasses.replace(RUNTIME, root=tmp_path / "root")  # a data root with a broken spec
    spec_dir = goss.spec_dir(runtime.root)
    spec_dir.mkdir(parents=True)
    for name in ("vars.yaml.j2", "goss.yaml"):
        (spec_dir / name).write_text((goss.spec_dir(RUNTIME.root) / name).read_text())
    (spec_dir / "goss.yaml").write_text("http:\n  http://example:\n    status: 200\n")
    (spec_dir / "goss-final.yaml").write_text("gossfile:\n  goss.yaml: {}\n")

    def no_boot(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("booted a VM for a spec that cannot run")

    monkeypatch.setattr("kiln.vm.checkboot.VM", no_boot)
    d = _build_dir(tmp_path)
    with pytest.raises(InputError, match=r"goss.yaml: resource type 'http' is not supported"):
        verify.verify_build(BuildDir.open(d), workdir=tmp_path / "work", runtime=runtime)
    assert not (d / "goss").exists()


def test_a_verify_of_the_builds_own_boot_that_fails_early_leaves_it_unverified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last report of the build's own boot is what `up_to_date` reads: a boot that never comes up (or
    is stopped) must not leave the pass before it standing. Another boot's verify leaves it alone."""

    def no_guest(*args: Any, **kwargs: Any) -> None:
        raise VerifyError("the guest never came up")

    monkeypatch.setattr("kiln.vm.checkboot.VM", no_guest)
    d = _build_dir(tmp_path)
    reports.write_reports([], d / "goss")
    with pytest.raises(VerifyError):
        verify.verify_build(BuildDir.open(d), workdir=tmp_path / "w1", runtime=RUNTIME, firmware="efi")
    assert reports.passed(d / "goss" / "report.json"), "the UEFI boot has its own dir, goss/disk-efi/"
    with pytest.raises(VerifyError):
        verify.verify_build(BuildDir.open(d), workdir=tmp_path / "w2", runtime=RUNTIME)
    assert not (d / "goss" / "report.json").exists() and not (d / "goss" / "junit.xml").exists()


def test_failures_raise_verify_error_with_the_table() -> None:
    results = [
        goss.Result("service", "containerd", "enabled", False, False, True, False),
        goss.Result("service", "containerd", "running", True, False, True, True),
    ]
    with pytest.raises(VerifyError) as info:
        verify.raise_on_failure(results, "image.qcow2", Path("/out/goss"))
    text = str(info.value)
    assert "image.qcow2: 1 of 2 goss checks failed; reports in /out/goss" in text
    assert "service containerd" in text and "enabled" in text
    assert info.value.exit_code == 1
    verify.raise_on_failure(results[1:], "image.qcow2", None)  # all good: no error


class FakeSession:
    """Stands in for kiln.ssh.Session: records what is copied and run, answers like `goss validate -f json`.
    (No registry here ships the goss binary, so the real-binary path is exercised only with this fake.)"""

    instances: list[FakeSession] = []

    def __init__(self, host: str, port: int, user: str, key: Path, **kwargs: Any) -> None:
        self.puts: dict[str, tuple[str, int | None]] = {}
        self.commands: list[str] = []
        FakeSession.instances.append(self)

    def __enter__(self) -> FakeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def put(self, local: Path, remote: str, mode: int | None = None) -> None:
        self.puts[remote] = (Path(local).read_text(errors="replace"), mode)

    def run(self, cmd: Any, check: bool = True, timeout: float | None = None) -> tuple[int, str, str]:
        text = cmd if isinstance(cmd, str) else " ".join(cmd)
        self.commands.append(text)
        if "validate" in text:
            doc = {
                "results": [
                    {"resource-type": "Service", "resource-id": "containerd", "property": "running",
                     "successful": False, "skipped": False, "expected": ["true"], "found": ["false"],
                     "duration": 1000000},
                    {"resource-type": "KernelParam", "resource-id": "net.ipv4.ip_forward",
                     "property": "value", "successful": True, "skipped": False, "expected": ["1"],
                     "found": ["1"], "duration": 5},
                ],
                "summary": {"test-count": 2, "failed-count": 1},
            }  # fmt: skip
            return 1, json.dumps(doc), ""
        return 0, "", ""


def test_goss_binary_is_copied_with_spec_and_vars_and_its_json_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kiln.vm.ssh.Session", FakeSession)
    FakeSession.instances.clear()
    binary = tmp_path / "goss"
    binary.write_text("#!/bin/sh\n")
    key = tmp_path / "key"
    key.write_text("k")
    values = dict(config.load("debian-12").values)
    results = verify.check_host(
        "10.0.2.15", 22, "builder", key, values, phase="build", report_dir=tmp_path / "r", goss_binary=binary,
        spec_dir=goss.spec_dir(RUNTIME.root), root=RUNTIME.root,
    )  # fmt: skip
    (session,) = FakeSession.instances
    remote = {Path(p).name: v for p, v in session.puts.items()}
    assert remote["goss"][1] == 0o755
    assert {"goss.yaml", "packages.yaml", "services.yaml", "node.yaml", "kubernetes.yaml"} <= set(remote)
    assert f"kubernetes_semver: {values['kubernetes_semver']}" in remote["vars.yaml"][0]
    run = [c for c in session.commands if "validate" in c][0]
    pattern = r"cd (/tmp/kiln-goss-\w+) && sudo \1/goss -g goss.yaml --vars \1/vars.yaml validate -f json"
    assert re.search(pattern, run), run
    assert any(c.startswith("rm -rf /tmp/kiln-goss-") for c in session.commands)  # nothing left in the guest
    assert [(r.resource_type, r.resource_id, r.successful) for r in results] == [
        ("service", "containerd", False),
        ("kernel-param", "net.ipv4.ip_forward", True),
    ]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["kiln"]["engine"] == "goss" and report["summary"]["failed-count"] == 1


class AtRestSession(FakeSession):
    """goss's report with a check of the image at rest (a file) beside a running system's (a service)."""

    def run(self, cmd: Any, check: bool = True, timeout: float | None = None) -> tuple[int, str, str]:
        text = cmd if isinstance(cmd, str) else " ".join(cmd)
        self.commands.append(text)
        if "validate" not in text:
            return 0, "", ""
        doc = {"results": [
            {"resource-type": "File", "resource-id": "/etc/kiln-release", "property": "exists",
             "successful": False, "skipped": False, "expected": [True], "found": [False], "duration": 5},
            {"resource-type": "Service", "resource-id": "containerd", "property": "running",
             "successful": True, "skipped": False, "expected": [True], "found": [True], "duration": 5},
        ], "summary": {"test-count": 2, "failed-count": 1}}  # fmt: skip
        return 1, json.dumps(doc), ""


def test_running_only_sets_aside_what_the_disk_at_rest_is_checked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--running-only` (the VM runner's build VM before sysprep): a file of kiln's spec waits for the disk
    at rest, a service is checked; the goss binary runs its whole spec, and the file's result is set aside.
    The final phase takes no such split. (kiln's evaluator on a real VM: test_boot_vm.)"""
    monkeypatch.setattr("kiln.vm.ssh.Session", AtRestSession)
    binary, key = tmp_path / "goss", tmp_path / "key"
    binary.write_text("#!/bin/sh\n")
    key.write_text("k")
    values = dict(config.load("debian-12").values)
    where = {"spec_dir": goss.spec_dir(RUNTIME.root), "root": RUNTIME.root, "goss_binary": binary}
    both = verify.check_host("10.0.2.15", 22, "builder", key, values, phase="build", **where)
    assert [(r.resource_type, r.successful) for r in both] == [("file", False), ("service", True)]
    running = verify.check_host("10.0.2.15", 22, "builder", key, values, phase="build", running_only=True,
                                **where)  # fmt: skip
    assert [(r.resource_type, r.resource_id) for r in running] == [("service", "containerd")]
    with pytest.raises(InputError, match="--running-only"):
        verify.check_host("10.0.2.15", 22, "builder", key, values, phase="final", running_only=True, **where)


HOST_KEYS = "sh -c '! ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1'"


class SiteSession(FakeSession):
    """goss in the guest: kiln's entry passes a service; the site's (under site/) fails its host-key check,
    as it must on a booted image."""

    def run(self, cmd: Any, check: bool = True, timeout: float | None = None) -> tuple[int, str, str]:
        text = cmd if isinstance(cmd, str) else " ".join(cmd)
        self.commands.append(text)
        if "validate" not in text:
            return 0, "", ""
        ours = {
            "resource-type": "Service",
            "resource-id": "containerd",
            "property": "running",
            "successful": True,
            "skipped": False,
            "expected": [True],
            "found": [True],
            "duration": 5,
        }
        theirs = {
            "resource-type": "Command",
            "resource-id": HOST_KEYS,
            "property": "exit-status",
            "successful": False,
            "skipped": False,
            "expected": [0],
            "found": [1],
            "duration": 5,
        }
        doc = {"results": [theirs if "/site &&" in text else ours]}  # fmt: skip
        return 0, json.dumps(doc), ""


def test_the_goss_binary_runs_the_sites_specs_too_skipping_what_passed_in_the_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """goss_spec_dir's files go into the guest beside kiln's (under site/, where their includes resolve) and
    the binary runs the site's entry as well; on the booted image a site check that passed in the tree is
    reported skipped, as kiln's evaluator reports it; without the tree record it fails there."""
    monkeypatch.setattr("kiln.vm.ssh.Session", SiteSession)
    SiteSession.instances.clear()
    binary, key = tmp_path / "goss", tmp_path / "key"
    binary.write_text("#!/bin/sh\n")
    key.write_text("k")
    site = RUNTIME.root / "tests" / "fixtures" / "site" / "goss"
    values = {**config.load("debian-12").values, "goss_spec_dir": str(site),
              "goss_vars_file": str(site / "goss-vars.yaml")}  # fmt: skip
    extra = {**verify.PLACEHOLDER_VARS, "verify_firmware": ""}
    where = {"spec_dir": goss.spec_dir(RUNTIME.root), "root": RUNTIME.root, "goss_binary": binary,
             "phase": "final", "extra_vars": extra}  # fmt: skip
    loaded = verify.load_phase(
        values, "final", spec_dir=where["spec_dir"], root=RUNTIME.root, extra_vars=extra
    )
    (resource,) = [r for r in loaded.theirs if r.id == HOST_KEYS]
    passed = {treephase.resource_key(resource)}
    results = verify.check_host("10.0.2.15", 22, "builder", key, values, passed_in_tree=passed, **where)
    (session,) = SiteSession.instances
    remote = {p.split("/", 3)[-1] for p in session.puts}
    assert {"goss-final.yaml", "site/goss.yaml", "site/goss-at-rest.yaml"} <= remote, remote
    runs = [c for c in session.commands if "validate" in c]
    assert len(runs) == 2 and "/site && sudo " in runs[1] and "-g goss.yaml" in runs[1], runs
    mine = {(r.resource_type, r.resource_id): r for r in results}
    assert mine[("service", "containerd")].successful
    assert mine[("command", HOST_KEYS)].skipped and not reports.failures(results)
    again = verify.check_host("10.0.2.15", 22, "builder", key, values, **where)  # no tree record
    assert [r.resource_id for r in reports.failures(again)] == [HOST_KEYS]


def test_the_packer_hook_command_is_one_goss_check_accepts() -> None:
    """The shell-local line the templates render (golden files) parses as `kiln goss-check`."""
    import re
    import shlex

    golden = Path(__file__).parent / "golden"
    lines = {
        m
        for p in golden.rglob("*")
        if p.is_file()
        for m in re.findall(r"goss-check --host [^\"]*", p.read_text())
    }
    assert lines, "no goss-check hook in the golden templates"
    for line in lines:
        argv = shlex.split(line.replace("${build.Host}", "127.0.0.1").replace("${build.Port}", "2222")
                           .replace("${build.User}", "builder"))  # fmt: skip
        args = cli.build_parser().parse_args(argv)
        assert args.func.__name__ == "_cmd_goss_check"
        assert (args.host, args.port, args.user, args.phase) == ("127.0.0.1", 2222, "builder", "build")
        assert args.config.name == "config.json" and args.key.name == "id_ed25519"


def test_goss_check_on_an_unreachable_host_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kiln.vm import ssh
    from kiln.vm.qemu import free_port

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config.load("debian-12").to_json()))
    keys = ssh.generate_keypair(tmp_path / "key")
    port = free_port()  # nothing listens there
    argv = ["goss-check", "--host", "127.0.0.1", "--port", str(port), "--user", "u"]
    rc = cli.main([*argv, "--key", str(keys.private_key), "--config", str(cfg)])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"u@127.0.0.1:{port}: cannot run commands over SSH" in err
    assert "Traceback" not in err


def test_a_check_leaves_paramikos_logger_as_kiln_vm_ssh_set_it(tmp_path: Path) -> None:
    """kiln.vm.ssh keeps paramiko's logger at CRITICAL: waiting for a guest's sshd goes through refused and
    reset connections, each an ERROR with a traceback in paramiko. A check must not lower it, or every later
    boot in the same process (a bench, a release, `kiln serve`) prints those tracebacks."""
    import logging

    from kiln.vm import ssh
    from kiln.vm.qemu import free_port

    keys = ssh.generate_keypair(tmp_path / "key")
    with pytest.raises(VerifyError, match="cannot run commands over SSH"):
        verify._testinfra_probe("127.0.0.1", free_port(), "u", keys.private_key)
    assert logging.getLogger("paramiko").level == logging.CRITICAL


def _settled(tmp_path, *, cloud_init=True, cmdline="root=UUID=x ro", files=None):
    """checkboot.CLOUD_INIT_SETTLED with its paths under tmp_path, run by the real sh in the background;
    `files` ({path under tmp_path: text}, such as run/status.json) are written before the loop starts."""
    import subprocess

    from kiln.vm import checkboot

    run, etc, proc_ = tmp_path / "run", tmp_path / "etc", tmp_path / "proc"
    for d in (run, etc, proc_, tmp_path / "bin"):
        d.mkdir(parents=True, exist_ok=True)
    (proc_ / "cmdline").write_text(cmdline + "\n")
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
    if cloud_init:
        fake = tmp_path / "bin" / "cloud-init"
        fake.write_text("#!/bin/sh\nexit 99\n")  # present, never run: the loop reads files only
        fake.chmod(0o755)
    script = (
        checkboot.CLOUD_INIT_SETTLED.replace("/run/cloud-init", str(run))
        .replace("/etc/cloud/", f"{etc}/")
        .replace("/proc/cmdline", str(proc_ / "cmdline"))
    )
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    if not cloud_init:
        env["PATH"] = str(tmp_path / "empty-path")  # sh's builtin `command -v` finds nothing there
    return subprocess.Popen(["/bin/sh", "-c", script], env=env), run, etc


def test_the_cloud_init_wait_ends_on_the_files_cloud_init_status_reads(tmp_path):
    """Still running without result.json; done when the final stage writes it. A generator's "disabled"
    mark, the marker file or the kernel parameter end it while no stage has started (no status.json), unless
    `cloud-init=enabled` overrides them; no cloud-init at all ends it at once."""
    import subprocess

    started = []

    def settled(name, **kwargs):
        proc_, run, etc = _settled(tmp_path / name, **kwargs)
        started.append(proc_)
        return proc_, run, etc

    def still_waiting(proc_):
        with pytest.raises(subprocess.TimeoutExpired):
            proc_.wait(timeout=1.5)

    try:
        proc_, run, _ = settled("a")
        still_waiting(proc_)
        (run / "result.json").write_text('{"v1": {"errors": []}}')
        assert proc_.wait(timeout=15) == 0
        proc_, run, _ = settled("b")
        (run / "disabled").write_text("")
        assert proc_.wait(timeout=15) == 0
        proc_, _, etc = settled("c")
        (etc / "cloud-init.disabled").write_text("")
        assert proc_.wait(timeout=15) == 0
        proc_, _, _ = settled("d", cmdline="ro quiet cloud-init=disabled")
        assert proc_.wait(timeout=15) == 0
        proc_, _, _ = settled("e", cloud_init=False)
        assert proc_.wait(timeout=15) == 0
        # a stage has started (status.json): a marker a runcmd touches does not end the wait. Both files are
        # there before the loop starts (written after it, the loop could see the marker before status.json)
        stage = '{"v1": {"stage": "modules-final"}}'
        proc_, run, etc = settled("f", files={"run/status.json": stage, "etc/cloud-init.disabled": ""})
        still_waiting(proc_)
        (run / "result.json").write_text('{"v1": {"errors": []}}')
        assert proc_.wait(timeout=15) == 0
        # cloud-init=enabled on the kernel command line overrides the marks
        proc_, run, _ = settled("g", cmdline="ro cloud-init=enabled")
        (run / "disabled").write_text("")
        still_waiting(proc_)
    finally:
        for proc_ in started:
            if proc_.poll() is None:
                proc_.kill()
                proc_.wait()


def test_verify_says_when_the_build_dir_lacks_its_tree_record(tmp_path: Path) -> None:
    """A build with the user's goss directory whose build dir has no goss/tree-phase.json (copied without
    it, or the VM runner's): verify says that the user's at-rest checks will run on the booted image; with
    the record it says nothing of the kind."""
    site = Path(__file__).parent / "fixtures" / "site"
    d = _build_dir(tmp_path)
    cfg = config.load("debian-12", var_files=[site / "node.json"])
    (d / "config.json").write_text(json.dumps(cfg.to_json()))
    said: list[str] = []

    class Said:
        def log(self, stage: str, line: str, show: bool = True) -> None:
            said.append(line)

    dry = dataclasses.replace(RUNTIME, dry_run=True)
    verify.verify_build(BuildDir.open(d), workdir=tmp_path / "work", runtime=dry, monitor=Said())  # type: ignore[arg-type]
    assert any("tree-phase.json: every check of goss_spec_dir's goss.yaml runs" in s for s in said), said
    said.clear()
    treephase.record_path(d).parent.mkdir()
    treephase.record_path(d).write_text('{"passed_in_tree": []}\n')
    verify.verify_build(BuildDir.open(d), workdir=tmp_path / "work", runtime=dry, monitor=Said())  # type: ignore[arg-type]
    assert not any("tree-phase.json" in s for s in said)


def test_binary_results_are_settled_by_their_own_runs_resources() -> None:
    """kiln's and the user's specs may share a type and id with different phases: each run's results are
    settled by its own resources. A result named in goss's `KEY: PATH` form is its resource's."""

    def result(kind: str, rid: str, ok: bool) -> goss.Result:
        return goss.Result(kind, rid, "exit-status", ok, False, [0], [0 if ok else 1])

    kiln_cmd = goss.Resource("command", "check", {"exec": "true"}, "goss.yaml")
    site_cmd = goss.Resource("command", "check", {"exec": "true", "meta": {"kiln_phase": "boot"}}, "site")
    site_file = goss.Resource("file", "release", {"path": "/etc/kiln-release", "skip": True}, "site")
    found = [result("command", "check", False)]
    assert verify._settled(found, [kiln_cmd], [kiln_cmd]) == []  # kiln's waits for the disk at rest
    (kept,) = verify._settled(found, [site_cmd, site_file], [kiln_cmd])  # the site's is checked here
    assert not kept.successful and not kept.skipped
    (named,) = verify._settled([result("file", "release: /etc/kiln-release", False)], [site_file], [])
    assert named.skipped and named.successful  # passed in the tree: skipped, under goss's name for it


class FinalSession(FakeSession):
    """goss in the guest: the site's goss-final.yaml passes a command; its goss.yaml, run for what it left
    for the boot, fails a service, and reports a file it checked at rest."""

    def run(self, cmd: Any, check: bool = True, timeout: float | None = None) -> tuple[int, str, str]:
        text = cmd if isinstance(cmd, str) else " ".join(cmd)
        self.commands.append(text)
        if "validate" not in text:
            return 0, "", ""
        if "/site &&" not in text:
            return 0, json.dumps({"results": []}), ""

        def one(kind: str, rid: str, ok: bool) -> dict[str, Any]:
            return {"resource-type": kind, "resource-id": rid, "property": "exists", "successful": ok,
                    "skipped": False, "expected": [True], "found": [ok], "duration": 5}  # fmt: skip

        if "-g goss-final.yaml" in text:
            return 0, json.dumps({"results": [one("Command", "site-final", True)]}), ""
        return 1, json.dumps({"results": [one("File", "/etc/site-at-rest", False),
                                          one("Service", "site-daemon", False)]}), ""  # fmt: skip


@pytest.mark.parametrize("engine", ["binary", "kiln"])
def test_a_sites_goss_final_yaml_does_not_hide_what_its_goss_yaml_left_for_the_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    """With a goss-final.yaml of the site's, verify still checks what the site's goss.yaml left for the boot
    (a service; not what passed in the tree): the docs say it must pass there."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "goss.yaml").write_text(
        "file:\n  /etc/site-at-rest: {exists: true}\n"
        "service:\n  site-daemon: {running: true}\n  site-other: {running: true}\n"
        "command:\n  phase-echo: {exec: 'echo {{ .Vars.phase }}', exit-status: 0}\n"
    )
    (site / "goss-final.yaml").write_text(
        "command:\n  site-final: {exec: 'true', exit-status: 0}\nservice:\n  site-other: {enabled: true}\n"
    )
    key = tmp_path / "key"
    key.write_text("k")
    values = {**config.load("debian-12").values, "goss_spec_dir": str(site)}
    extra = {**verify.PLACEHOLDER_VARS, "verify_firmware": ""}
    # what passed in the tree, as the build phase rendered it (phase-echo renders otherwise in the final one)
    build = verify.load_phase(values, "build", spec_dir=goss.spec_dir(RUNTIME.root), root=RUNTIME.root)
    passed = {treephase.resource_key(r) for r in build.theirs if r.id in ("/etc/site-at-rest", "phase-echo")}
    where = {
        "spec_dir": goss.spec_dir(RUNTIME.root),
        "root": RUNTIME.root,
        "phase": "final",
        "extra_vars": extra,
    }
    if engine == "binary":
        monkeypatch.setattr("kiln.vm.ssh.Session", FinalSession)
        FinalSession.instances.clear()
        binary = tmp_path / "goss"
        binary.write_text("#!/bin/sh\n")
        results = verify.check_host(
            "h", 22, "u", key, values, passed_in_tree=passed, goss_binary=binary, **where
        )
        runs = [c for c in FinalSession.instances[0].commands if "validate" in c]
        assert [r.split(" -g ")[1].split()[0] for r in runs] == ["goss-final.yaml"] * 2 + ["goss.yaml"]
        failed = {(r.resource_type, r.resource_id) for r in reports.failures(results)}
        assert failed == {("service", "site-daemon")}, failed
        assert ("file", "/etc/site-at-rest") not in {(r.resource_type, r.resource_id) for r in results}
    else:  # kiln's evaluator: the resources it is given
        from types import SimpleNamespace

        seen: list[tuple[str, str]] = []
        probe = SimpleNamespace(host=SimpleNamespace(backend=SimpleNamespace(close=lambda: None)))
        monkeypatch.setattr(verify, "_testinfra_probe", lambda *args: probe)
        monkeypatch.setattr(goss, "evaluate", lambda spec, _probe, **kw: seen.extend(
            (r.type, r.id) for r in spec.resources) or [])  # fmt: skip
        verify.check_host("h", 22, "u", key, values, passed_in_tree=passed, **where)
        assert {("service", "site-daemon"), ("command", "site-final")} <= set(seen)
        assert ("file", "/etc/site-at-rest") not in seen and ("command", "phase-echo") not in seen
        assert seen.count(("service", "site-other")) == 1  # goss-final.yaml's, which overrides goss.yaml's


def test_only_the_builds_own_boot_writes_the_builds_reports(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from kiln.goss.verify import report_dir

    goss = tmp_path / "goss"
    bios = SimpleNamespace(path=tmp_path, firmware="bios")
    efi = SimpleNamespace(path=tmp_path, firmware="efi")
    assert report_dir(bios, "disk") == goss  # type: ignore[arg-type]
    assert report_dir(bios, "disk", "bios", "virtio") == goss  # type: ignore[arg-type]
    assert report_dir(bios, "disk", "efi") == goss / "disk-efi"  # type: ignore[arg-type]
    assert report_dir(bios, "disk", None, "vmware") == goss / "disk-bios-vmware"  # type: ignore[arg-type]
    assert report_dir(efi, "disk") == goss  # type: ignore[arg-type]  # a UEFI build's own
    assert report_dir(efi, "disk", "bios") == goss / "disk-bios"  # type: ignore[arg-type]
    assert report_dir(bios, "iso") == goss / "iso-bios"  # type: ignore[arg-type]
    assert report_dir(bios, "netboot", "efi", "vmware") == goss / "netboot-efi-vmware"  # type: ignore[arg-type]
