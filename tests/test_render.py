"""Template rendering: HCL quoting, golden files for every target and both Packer forms, boot files with the
build's credentials, atomic output.

Regenerate the golden files after an intended template change with `KILN_UPDATE_GOLDEN=1 pytest
tests/test_render.py` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import hcl2
import pytest

from kiln import config
from kiln.build import render
from kiln.core.errors import InputError
from kiln.vm import accel
from kiln_runtime import RUNTIME

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
VERSIONS = {"packer-1.6.6": (1, 6, 6), "packer-1.11.2": (1, 11, 2)}
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGoldenGoldenGoldenGoldenGoldenGoldenGolden kiln-golden"
PASSWORD_HASH = "$6$golden$notarealhashnotarealhashnotarealhash"


def golden_context(config_: config.Config) -> render.BuildContext:
    work = Path("/kiln-build/work")
    extra: dict[str, object] = {}
    if config_.get("install_method") == "bootstrap":
        extra = {"base_disk": Path("/kiln-cache/bootstrap/KEY/base.qcow2"), "seed_iso": work / "seed.iso"}
    if config_.get("install_method") == "cloudimg":  # a build's stages boot the cached, checked image
        extra = {
            "base_disk": Path("/kiln-cache/bootstrap/cloudimg-KEY/base.qcow2"),
            "seed_iso": work / "seed.iso",
        }
    return render.BuildContext(
        ssh_private_key_file=work / "key" / "id_ed25519",
        ssh_public_key=PUBLIC_KEY,
        password_hash=PASSWORD_HASH,
        ssh_port=2299,
        output_dir=Path("/kiln-build/packer-output"),
        manifest_path=Path("/kiln-build/packer-manifest.json"),
        accelerator="tcg",
        kiln_command=["kiln"],
        **extra,  # type: ignore[arg-type]
    )


def rendered_text(target: str, version: tuple[int, int, int]) -> str:
    cfg = config.load(target, repo_root=REPO)
    text = render.render_template(cfg, golden_context(cfg), Path("/kiln-build/rendered"), version)
    return text.replace(str(REPO), "@REPO@")


@pytest.mark.parametrize("label", sorted(VERSIONS))
@pytest.mark.parametrize("target", config.targets(REPO))
def test_golden(target: str, label: str) -> None:
    text = rendered_text(target, VERSIONS[label])
    path = GOLDEN / f"{target}.{label}.pkr.hcl"
    if os.environ.get("KILN_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path}: missing golden file; run KILN_UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == path.read_text(), f"{path}: rendered template differs (KILN_UPDATE_GOLDEN=1 to accept)"
    parsed = hcl2.loads(text)  # every golden is valid HCL2
    assert parsed["build"] and parsed["source"]


def test_no_stray_golden_files() -> None:
    expected = {f"{t}.{label}.pkr.hcl" for t in config.targets(REPO) for label in VERSIONS}
    assert {p.name for p in GOLDEN.glob("*.pkr.hcl")} == expected


def test_packer_version_decides_required_plugins() -> None:
    old = rendered_text("ubuntu-2204", (1, 6, 6))
    new = rendered_text("ubuntu-2204", (1, 7, 0))
    assert "required_plugins" not in old and 'required_version = ">= 1.6.6"' in old
    assert "required_plugins" in new and 'source  = "github.com/hashicorp/qemu"' in new
    assert 'source  = "github.com/hashicorp/ansible"' in new and "hashicorp/vmware" in new


def test_sources_follow_install_method() -> None:
    assert 'source "vmware-iso" "node"' in rendered_text("ubuntu-2204", (1, 6, 6))
    debian = rendered_text("debian-12", (1, 6, 6))
    assert 'source "vmware-iso"' not in debian
    assert "disk_image       = true" in debian and '"-cdrom", "/kiln-build/work/seed.iso"' in debian
    cloud = rendered_text("ubuntu-2404-cloudimg", (1, 6, 6))  # a stage on the cached, checked cloud image
    assert 'iso_url          = "/kiln-cache/bootstrap/cloudimg-KEY/base.qcow2"' in cloud
    assert '"-cdrom", "/kiln-build/work/seed.iso"' in cloud and "use_backing_file" in cloud


def test_goss_hook_and_manifest() -> None:
    text = rendered_text("debian-12", (1, 6, 6))
    assert (
        '"kiln goss-check --host ${build.Host} --port ${build.Port} --user ${build.User} '
        '--key /kiln-build/work/key/id_ed25519 --config /kiln-build/rendered/config.json --phase build"'
        in text
    )
    assert 'post-processor "manifest"' in text and "custom_data = {}" in text  # provenance: the build's
    assert "host_port_min        = 2299" in text and "host_port_max        = 2299" in text


def test_the_goss_hook_checks_only_what_needs_a_running_system_when_the_disk_is_checked_at_rest() -> None:
    """The VM runner of a bootstrap target (its disk checked at rest after shutdown: kiln.build.runners)
    renders `--running-only`; the hook line still parses as `kiln goss-check`."""
    import shlex

    from kiln import cli

    cfg = config.load("debian-12", repo_root=REPO)
    ctx = replace(golden_context(cfg), goss_running_only=True)
    text = render.render_template(cfg, ctx, Path("/kiln-build/rendered"), (1, 6, 6))
    (line,) = [ln for ln in text.splitlines() if "goss-check" in ln and "inline" in ln]
    assert line.rstrip().endswith('--phase build --running-only"]'), line
    argv = shlex.split(line.split('["', 1)[1].rsplit('"]', 1)[0].replace("${build.Port}", "22"))
    args = cli.build_parser().parse_args(argv[argv.index("goss-check") :])
    assert args.running_only and args.phase == "build"


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        ("plain", '"plain"'),
        ('say "hi"\n', '"say \\"hi\\"\\n"'),
        ("${var.x} and %{if}", '"$${var.x} and %%{if}"'),
        ("{{ .HTTPIP }}", '"{{ .HTTPIP }}"'),
        (True, "true"),
        (42, "42"),
        (["a", 1], '["a", 1]'),
        ({"a.b": "c", "d": 1}, '{\n  "a.b" = "c"\n  d = 1\n}'),
    ],
)
def test_hcl_quoting(value: object, expect: str) -> None:
    assert render.hcl(value) == expect
    assert hcl2.loads(f"x = {render.hcl(value)}\n")  # and python-hcl2 reads it back


def test_render_writes_boot_files_with_build_credentials(tmp_path: Path) -> None:
    for target in ("ubuntu-2204", "ubuntu-1804", "centos-7", "rockylinux-9", "ubuntu-2404-cloudimg"):
        cfg = config.load(target, repo_root=REPO)
        out = tmp_path / target
        result = render.render(cfg, golden_context(cfg), out, (1, 6, 6), runtime=RUNTIME)
        assert result.template == out / "node.pkr.hcl" and Path(result) == result.template
        files = [out / "http" / name for name in cfg.get("boot_files")]
        text = "\n".join(f.read_text() for f in files)
        assert PUBLIC_KEY in text, target
        assert "{{" not in text.replace("{{ .HTTP", ""), target  # everything rendered
        if cfg.get("install_method") == "installer":
            assert PASSWORD_HASH in text, target
        assert json.loads((out / "config.json").read_text())["build_name"]["value"] == target
        assert json.loads((out / "ansible-vars.json").read_text())["ssh_username"] == "builder"
    # a proxy's login: Ansible gets it, in a file for this user only; config.json records it without
    proxy = "http://alice:s3cret@proxy:3128"
    cfg = config.load("ubuntu-2204", overrides={"http_proxy": proxy}, repo_root=REPO)
    out = tmp_path / "proxied"
    render.render(cfg, golden_context(cfg), out, (1, 6, 6), runtime=RUNTIME)
    assert json.loads((out / "ansible-vars.json").read_text())["http_proxy"] == proxy
    assert (out / "ansible-vars.json").stat().st_mode & 0o777 == 0o600
    assert json.loads((out / "config.json").read_text())["http_proxy"]["value"] == "http://***@proxy:3128"
    # a role by a path from the work root: Packer runs Ansible in the render dir, so it gets the absolute path
    cfg = config.load("ubuntu-2204", overrides={"extra_roles_after": ["tests/fixtures/site"]}, repo_root=REPO)
    render.render(cfg, golden_context(cfg), out, (1, 6, 6), runtime=RUNTIME)
    roles = json.loads((out / "ansible-vars.json").read_text())["extra_roles_after"]
    assert roles == [str(cfg.work_root / "tests" / "fixtures" / "site")]


def test_shipped_boot_files_hold_no_fixed_password() -> None:
    for path in (REPO / "packer" / "http").rglob("*"):
        if path.is_file():
            text = path.read_text().lower()
            for line in text.splitlines():
                if "password" in line and "ssh_pwauth" not in line and "allow-pw" not in line:
                    assert (
                        "{{ password_hash" in line
                        or "lock" in line
                        or "weak" in line
                        or line.strip().startswith("#")
                        or "passwordauthentication no" in line
                    ), f"{path}: {line}"


def test_placeholder_context_makes_fresh_credentials(tmp_path: Path) -> None:
    cfg = config.load("ubuntu-2204", repo_root=REPO)
    a = render.placeholder_context(cfg, tmp_path / "a", runtime=RUNTIME)
    b = render.placeholder_context(cfg, tmp_path / "b", runtime=RUNTIME)
    assert a.ssh_public_key != b.ssh_public_key and a.password_hash != b.password_hash
    assert a.password_hash.startswith("$6$") and oct(a.ssh_private_key_file.stat().st_mode)[-3:] == "600"


def test_render_failure_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "config", root / "config")
    shutil.copytree(REPO / "packer" / "http", root / "packer" / "http")
    shutil.copytree(REPO / "packer" / "templates", root / "packer" / "templates")
    (root / "packer/http/ubuntu/autoinstall/user-data").write_text("{{ no_such_variable }}\n")
    cfg = config.load("ubuntu-2204", repo_root=root)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".kiln-output").write_text("made by kiln\n")  # an earlier render: kiln may replace it
    (out / "previous").write_text("kept")
    with pytest.raises(InputError, match="packer/http/ubuntu/autoinstall/user-data"):
        render.render(cfg, golden_context(cfg), out, (1, 6, 6), runtime=replace(RUNTIME, root=root))
    assert [p.name for p in tmp_path.iterdir() if p.name != "repo"] == ["out"]
    assert (out / "previous").read_text() == "kept"  # the old render survives a failed one


def test_the_build_vms_cpu_follows_the_accelerator() -> None:
    """Under KVM the build VM gets the host's CPU (-cpu max); under TCG kiln's model (the goldens), the same
    as every guest kiln boots itself (kiln.vm.accel.cpu_model)."""
    cfg = config.load("debian-12", repo_root=REPO)
    for accelerator, cpu in (("kvm", "max"), ("tcg", "max,-erms,-fsrm")):
        ctx = replace(golden_context(cfg), accelerator=accelerator)
        text = render.render_template(cfg, ctx, Path("/kiln-build/rendered"), (1, 6, 6))
        assert re.findall(r'\["-cpu", "([^"]*)"\]', text) == [cpu], accelerator
        assert f'accelerator      = "{accelerator}"' in text
    with pytest.raises(ValueError, match="a resolved accelerator"):
        accel.cpu_model("auto")


def test_render_reports_each_builders_output_disk(tmp_path: Path) -> None:
    """render() says where each builder writes its disk; nothing downstream re-reads the HCL."""
    cfg = config.load("debian-12", repo_root=REPO)
    ctx = render.BuildContext(
        output_dir=tmp_path / "po",
        manifest_path=tmp_path / "m.json",
        ssh_private_key_file=tmp_path / "k",
        ssh_public_key=PUBLIC_KEY,
        ssh_port=2300,
        base_disk=tmp_path / "base.qcow2",
        seed_iso=tmp_path / "seed.iso",
        vm_name="x.raw-build",
        ansible_vars_file=tmp_path / "vars.json",
        serial_log=tmp_path / "serial.log",
        custom_data={"input_hash": "abc"},
        goss_check=False,
        shutdown_command="sudo /usr/local/sbin/kiln-finalize",
    )
    result = render.render(cfg, ctx, tmp_path / "r", (1, 6, 6), runtime=RUNTIME)
    text = result.template.read_text()
    assert 'vm_name          = "x.raw-build"' in text
    assert f'"-serial", "file:{tmp_path}/serial.log"' in text
    assert f"@{tmp_path}/vars.json" in text and 'input_hash = "abc"' in text
    assert "goss-check" not in text
    assert result.outputs == {"qemu": render.Output(tmp_path / "po" / "x.raw-build", "qcow2", True)}
    assert "disk_compression = true" in text  # what the qemu fact says is what the template does
    ova_target = config.load("ubuntu-2204", repo_root=REPO)
    facts = render.outputs(ova_target, ctx)
    assert facts["vmware-iso"] == render.Output(tmp_path / "po-vmware" / "disk.vmdk", "vmdk", False)


@pytest.mark.parametrize("proxy", ["", "http://10.0.2.2:3128"])
def test_rendered_cloud_init_files_are_valid_yaml(tmp_path: Path, proxy: str) -> None:
    import yaml

    for target, name in (
        ("ubuntu-2204", "ubuntu/autoinstall/user-data"),
        ("ubuntu-2404-cloudimg", "cloudimg/user-data"),
    ):
        cfg = config.load(target, overrides={"http_proxy": proxy, "apt_mirror": proxy}, repo_root=REPO)
        out = tmp_path / f"{target}-{bool(proxy)}"
        render.render(cfg, golden_context(cfg), out, (1, 6, 6), runtime=RUNTIME)
        text = (out / "http" / name).read_text()
        assert text.startswith("#cloud-config\n")
        data = yaml.safe_load(text)
        if target == "ubuntu-2204":
            auto = data["autoinstall"]
            assert auto["identity"] == {"hostname": target, "username": "builder", "password": PASSWORD_HASH}
            assert auto["ssh"]["authorized-keys"] == [PUBLIC_KEY] and auto["ssh"]["allow-pw"] is False
            assert auto.get("proxy") == (proxy or None)
        else:
            assert data["users"][0]["ssh_authorized_keys"] == [PUBLIC_KEY] and data["ssh_pwauth"] is False
            assert data["users"][0]["lock_passwd"] is True
            assert data["ssh_genkeytypes"] == ["ed25519"], "a throwaway build VM: no RSA key to compute"
        meta = yaml.safe_load((out / "http" / name.replace("user-data", "meta-data")).read_text())
        assert meta["instance-id"] == target


@pytest.mark.parametrize(("target", "version"), [("centos-7", "RHEL7"), ("rockylinux-9", "RHEL9")])
def test_rendered_kickstart_passes_pykickstart(tmp_path: Path, target: str, version: str) -> None:
    """Anaconda's own kickstart parser (what ksvalidator runs) accepts the rendered file for that release."""
    from pykickstart.parser import KickstartParser
    from pykickstart.version import makeVersion, stringToVersion

    cfg = config.load(target, repo_root=REPO)
    render.render(cfg, golden_context(cfg), tmp_path / "out", (1, 6, 6), runtime=RUNTIME)
    (name,) = cfg.get("boot_files")
    text = (tmp_path / "out" / "http" / name).read_text()
    handler = makeVersion(stringToVersion(version))
    KickstartParser(handler).readKickstartFromString(text)  # raises KickstartParseError on any problem
    assert handler.user.userList[0].name == "builder" and handler.user.userList[0].isCrypted
    assert handler.rootpw.lock
    assert PUBLIC_KEY in text


def test_rendered_preseed_passes_debconf(tmp_path: Path) -> None:
    """debconf-set-selections --checkonly (the parser debian-installer uses) accepts the rendered preseed."""
    import subprocess

    cfg = config.load("ubuntu-1804", overrides={"http_proxy": "http://10.0.2.2:3128"}, repo_root=REPO)
    render.render(cfg, golden_context(cfg), tmp_path / "out", (1, 6, 6), runtime=RUNTIME)
    preseed = tmp_path / "out" / "http" / "ubuntu" / "preseed.cfg"
    result = subprocess.run(
        ["debconf-set-selections", "--checkonly", str(preseed)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    text = preseed.read_text()
    assert f"passwd/user-password-crypted password {PASSWORD_HASH}" in text and PUBLIC_KEY in text
    broken = tmp_path / "broken.cfg"
    broken.write_text(text + "d-i this-line-has-no-type\n")  # and the checker does catch a broken line
    assert subprocess.run(
        ["debconf-set-selections", "--checkonly", str(broken)], capture_output=True
    ).returncode
