"""The Packer driver. The meta-test renders every shipped target and runs the REAL `packer validate` on it,
so a new or edited OS file cannot land broken. The build driver's unit tests use a fake `packer` on PATH
that records its argv; its real counterpart is the VM build test (tests/test_vm_build.py)."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from kiln import cli, config
from kiln.build import packer, validate
from kiln.config import default_runtime  # made per test: the fixtures change PATH
from kiln.core.errors import BuildError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("target", config.targets(REPO))
def test_every_shipped_target_passes_real_packer_validate(target: str, tmp_path: Path) -> None:
    cfg = config.load(target, repo_root=REPO)
    result = validate.validate_target(cfg, tmp_path, runtime=default_runtime())
    assert result.kiln_seconds < 10
    assert "Error" not in result.packer_output


def test_packer_version_is_detected() -> None:
    major, minor, _ = packer.version(runtime=default_runtime())
    assert (major, minor) >= (1, 6)


def test_real_packer_validate_rejects_a_broken_template(tmp_path: Path) -> None:
    cfg = config.load("debian-12", repo_root=REPO)
    result = validate.validate_target(cfg, tmp_path, runtime=default_runtime())
    template = result.render_dir / "node.pkr.hcl"
    template.write_text(template.read_text().replace('format           = "qcow2"', 'format = "tiff"'))
    with pytest.raises(BuildError, match="packer validate failed"):
        packer.validate(result.render_dir, runtime=default_runtime())


FAKE_PACKER = """#!/usr/bin/env python3
import os, sys
with open(os.environ["FAKE_PACKER_ARGV"], "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
if sys.argv[1] == "version":
    print("Packer v1.6.6")
    sys.exit(0)
print("qemu: output will be in this color.")
print("==> qemu: Retrieving ISO")
print("    qemu: some detail the terminal does not show")
print("==> qemu: Starting VM, booting disk image")
if os.environ.get("PACKER_LOG") == "1":
    print("2026/01/01 packer debug log line")
if os.environ.get("FAKE_PACKER_FAIL"):
    print("==> qemu: Error: boot failed", file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture
def fake_packer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "packer"
    exe.write_text(FAKE_PACKER)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PACKER_ARGV", str(tmp_path / "argv.txt"))
    packer._VERSIONS.clear()
    yield tmp_path / "argv.txt"
    packer._VERSIONS.clear()


def test_build_logs_everything_and_shows_stages(fake_packer: Path, tmp_path: Path) -> None:
    stages: list[str] = []
    log = tmp_path / "logs" / "build.log"
    packer.build(
        tmp_path,
        log,
        only=["qemu"],
        on_stage=stages.append,
        runtime=dataclasses.replace(default_runtime(), debug=True),
    )
    assert [s.split("] ", 1)[1] for s in stages] == [
        "qemu: Retrieving ISO",
        "qemu: Starting VM, booting disk image",
    ]
    text = log.read_text()
    assert "some detail the terminal does not show" in text and "packer debug log line" in text
    assert "build -color=false -on-error=cleanup -only=qemu.node ." in fake_packer.read_text()


def test_build_failure_names_the_log(
    fake_packer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PACKER_FAIL", "1")
    log = tmp_path / "build.log"
    with pytest.raises(BuildError) as exc:
        packer.build(tmp_path, log, on_stage=lambda s: None, runtime=default_runtime())
    assert str(log) in exc.value.message and "Error: boot failed" in exc.value.message
    assert "packer debug log line" not in log.read_text()  # no PACKER_LOG without debug


def test_stage_regex() -> None:
    assert packer.STAGE_RE.match("==> vmware-iso: Typing the boot command...").group("source") == "vmware-iso"
    assert packer.STAGE_RE.match("    qemu: detail") is None


def test_cli_validate_needs_target_or_all(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate"]) == 2
    assert "give a TARGET or --all" in capsys.readouterr().err


def test_makefile_has_every_target_written_out_and_in_help() -> None:
    """A new OS file needs its make targets (written out for tab completion) and `make help` lists them."""
    import subprocess

    makefile = (REPO / "Makefile").read_text()
    help_text = subprocess.run(["make", "-s", "-C", str(REPO), "help"], capture_output=True, text=True).stdout
    for target in config.targets(REPO):
        cfg = config.load(target, repo_root=REPO)
        names = [f"build-{target}", f"build-qemu-{target}", f"validate-{target}"]
        if cfg.get("install_method") == "installer":
            names.append(f"build-ova-{target}")
        for name in names:
            assert f"\n{name}: deps ##" in makefile, f"Makefile: no `{name}` target"
            assert f"  {name} " in help_text, f"make help: `{name}` missing"
    assert "validate-all" in help_text


@pytest.mark.parametrize(
    ("goal", "command"),
    [
        ("build-qemu-debian-13", "kiln build debian-13 --only qemu"),
        ("build-ova-my-os", "kiln build my-os --only vmware-iso"),
        ("build-debian-13", "kiln build debian-13"),
        ("validate-debian-13", "kiln validate debian-13"),
        ("release-debian-13", "kiln release debian-13"),
        ("build-qemu-debian-12", "kiln build debian-12 --only qemu"),  # the written-out rule, not the pattern
    ],
)
def test_make_builds_a_target_of_your_own_by_pattern(goal: str, command: str) -> None:
    """A user's own OS file (config/NAME.json) gets the same make targets without editing the Makefile."""
    import subprocess

    out = subprocess.run(
        ["make", "-s", "-n", "-C", str(REPO), goal, "PACKER_FLAGS=-var cpus=4"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(ln for ln in out.splitlines() if "bin/kiln " in ln)
    assert line.split("bin/", 1)[1].startswith(command + " ") and "-var cpus=4" in line


def test_make_passes_packer_var_files_flags_foreground_debug() -> None:
    import subprocess

    out = subprocess.run(
        [
            "make",
            "-s",
            "-n",
            "-C",
            str(REPO),
            "build-ova-ubuntu-2204",
            "PACKER_VAR_FILES=a.json b.pkrvars.hcl",
            "PACKER_FLAGS=-var cpus=4 -var memory=8192",
            "FOREGROUND=1",
            "DEBUG=1",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if "kiln build" in ln)
    assert 'PACKER_VAR_FILES="a.json b.pkrvars.hcl"' in line
    assert line.rstrip().endswith(
        "kiln build ubuntu-2204 --only vmware-iso --foreground --debug -var cpus=4 -var memory=8192"
    )


def test_cli_render_writes_template_and_boot_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    var_file = tmp_path / "site.pkrvars.hcl"
    var_file.write_text('memory = 8192\nhttp_proxy = "http://10.0.2.2:3128"\n')
    out = tmp_path / "rendered"
    assert (
        cli.main(["render", "ubuntu-2204", "-o", str(out), "--var-file", str(var_file), "-var", "cpus=3"])
        == 0
    )
    text = (out / "node.pkr.hcl").read_text()
    assert "memory           = 8192" in text and "cpus             = 3" in text
    assert 'proxy: "http://10.0.2.2:3128"' in (out / "http/ubuntu/autoinstall/user-data").read_text()
    assert str(out / "node.pkr.hcl") in capsys.readouterr().out


def test_cli_validate_one_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", "debian-12", "-var", "memory=2048"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("ok    debian-12") and "packer validate" in line


FAKE_QEMU = """#!/bin/sh
if [ "$1" = "-version" ]; then echo "QEMU emulator version 7.2.15"; exit 0; fi
printf '%s\\n' "$@" > "$FAKE_QEMU_ARGV"
"""


@pytest.mark.parametrize("firmware", ["bios", "efi"])
def test_real_packer_starts_qemu_with_kilns_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, firmware: str
) -> None:
    """Real `packer build` on a rendered bootstrap template, with a recording stand-in for QEMU (it exits at
    once, so Packer then fails): shows the exact QEMU command line Packer builds from kiln's template.
    The real counterpart boots it: the suite image's verify (BIOS) and tests/test_verify_vm.py (UEFI)."""
    import subprocess

    bindir = tmp_path / "bin"
    bindir.mkdir()
    qemu = bindir / "qemu-system-x86_64"
    qemu.write_text(FAKE_QEMU)
    qemu.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_QEMU_ARGV", str(tmp_path / "argv"))
    cfg = config.load("debian-12", overrides={"ssh_timeout": "5s", "firmware": firmware}, repo_root=REPO)
    from kiln.build import render

    ctx = render.placeholder_context(cfg, tmp_path / "ctx", ssh_port=2399, runtime=default_runtime())
    base = ctx.base_disk
    assert base is not None
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(base), "64M"], check=True, capture_output=True)
    before = base.read_bytes()
    rendered = render.render(
        cfg, ctx, tmp_path / "rendered", packer.version(runtime=default_runtime()), runtime=default_runtime()
    )
    with pytest.raises(BuildError):
        packer.build(
            rendered.dir,
            tmp_path / "build.log",
            only=["qemu"],
            on_stage=lambda line: None,
            runtime=default_runtime(),
        )
    argv = (tmp_path / "argv").read_text().split("\n")
    assert [a for a in argv if a == "-netdev"] == ["-netdev"]  # kiln's replaces Packer's
    assert argv[argv.index("-netdev") + 1] == "user,id=user.0,hostfwd=tcp:127.0.0.1:2399-:22"
    assert argv[argv.index("-cdrom") + 1] == str(ctx.seed_iso)
    assert argv.count("-cpu") == 1 and argv[argv.index("-cpu") + 1] == "max,-erms,-fsrm"  # kiln's TCG CPU
    assert "accel=tcg" in argv[argv.index("-machine") + 1]
    drive = argv[argv.index("-drive") + 1]
    # a copy, not the cache
    assert drive.startswith(f"file={ctx.output_dir}/{cfg.artifact_name}.qcow2,")
    assert base.read_bytes() == before
    assert ("-bios" in argv) == (firmware == "efi")
    if firmware == "efi":
        assert argv[argv.index("-bios") + 1] == "/usr/share/ovmf/OVMF.fd"
