"""Config loading: the layering rule level by level, derived values, validation (all errors at once)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kiln import cli, config
from kiln.config.settings import BY_NAME, SETTINGS
from kiln.core.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[1]
SEMVER = str(BY_NAME["kubernetes_semver"].default)  # kiln's default Kubernetes version


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the shipped config/ and packer/ (http + templates) to edit freely."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "config", root / "config")
    shutil.copytree(REPO / "packer" / "http", root / "packer" / "http")
    shutil.copytree(REPO / "packer" / "templates", root / "packer" / "templates")
    return root


def edit(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(changes)
    path.write_text(json.dumps(data))


def problems(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    return "\n".join(excinfo.value.problems)


# --- layering, one level at a time --------------------------------------------------------------------


def test_builtin_default_when_no_file_sets_it(repo: Path) -> None:
    data = json.loads((repo / "config/common.json").read_text())
    del data["memory"]
    (repo / "config/common.json").write_text(json.dumps(data))
    cfg = config.load("debian-12", repo_root=repo)
    assert cfg.get("memory") == 4096
    assert cfg.origins["memory"] == "default"


def test_common_overrides_default(repo: Path) -> None:
    edit(repo / "config/common.json", memory=6144)
    cfg = config.load("debian-12", repo_root=repo)
    assert (cfg.get("memory"), cfg.origins["memory"]) == (6144, "config/common.json")


def test_os_file_overrides_common(repo: Path) -> None:
    edit(repo / "config/common.json", cpus=3)
    edit(repo / "config/debian-12.json", cpus=5)
    cfg = config.load("debian-12", repo_root=repo)
    assert (cfg.get("cpus"), cfg.origins["cpus"]) == (5, "config/debian-12.json")
    assert config.load("ubuntu-2204", repo_root=repo).get("cpus") == 3  # other targets keep common's


def test_kubernetes_containerd_cni_override_os_file(repo: Path) -> None:
    edit(repo / "config/debian-12.json", kubernetes_semver="v1.28.0", containerd_version="1.0.0")
    edit(repo / "config/kubernetes.json", kubernetes_semver="v1.29.3")
    edit(repo / "config/containerd.json", containerd_version="1.7.20")
    edit(repo / "config/cni.json", cni_bin_dir="/usr/lib/cni")
    cfg = config.load("debian-12", repo_root=repo)
    assert (cfg.get("kubernetes_semver"), cfg.origins["kubernetes_semver"]) == (
        "v1.29.3",
        "config/kubernetes.json",
    )
    assert cfg.origins["containerd_version"] == "config/containerd.json"
    assert (cfg.get("cni_bin_dir"), cfg.origins["cni_bin_dir"]) == ("/usr/lib/cni", "config/cni.json")


def test_var_files_override_config_files_in_order(repo: Path, tmp_path: Path) -> None:
    first = tmp_path / "first.json"
    first.write_text(json.dumps({"cpus": 6, "memory": 8192}))
    second = tmp_path / "second.pkrvars.hcl"
    second.write_text('cpus = 7\nextra_packages = ["jq", "vim"]\nhttp_proxy = "http://proxy:3128"\n')
    cfg = config.load("debian-12", var_files=[first, second], repo_root=repo)
    assert (cfg.get("cpus"), cfg.origins["cpus"]) == (7, str(second))
    assert (cfg.get("memory"), cfg.origins["memory"]) == (8192, str(first))
    assert list(cfg.get("extra_packages")) == ["jq", "vim"]
    assert cfg.get("http_proxy") == "http://proxy:3128"


def test_cli_var_overrides_var_files_and_is_coerced(repo: Path, tmp_path: Path) -> None:
    var_file = tmp_path / "v.json"
    var_file.write_text(json.dumps({"cpus": 6}))
    cfg = config.load(
        "debian-12",
        var_files=[var_file],
        overrides={
            "cpus": "8",
            "headless": "false",
            "extra_packages": "jq,vim",
            "kubernetes_http_sha256": "{}",
        },
        repo_root=repo,
    )
    assert (cfg.get("cpus"), cfg.origins["cpus"]) == (8, "-var")
    assert cfg.get("headless") is False
    assert list(cfg.get("extra_packages")) == ["jq", "vim"]


def test_derived_kubernetes_versions(repo: Path) -> None:
    cfg = config.load("debian-12", overrides={"kubernetes_semver": "v1.29.6"}, repo_root=repo)
    assert cfg.get("kubernetes_series") == "v1.29"
    assert cfg.get("kubernetes_deb_version") == "1.29.6-1.1"
    assert cfg.get("kubernetes_rpm_version") == "1.29.6"
    assert cfg.get("kubernetes_deb_repo") == "https://pkgs.k8s.io/core:/stable:/v1.29/deb/"
    assert cfg.origins["kubernetes_series"] == "derived"


def test_explicit_derived_value_wins(repo: Path) -> None:
    pinned = f"{SEMVER[1:]}-2.1"  # another package revision of the same release
    edit(repo / "config/kubernetes.json", kubernetes_deb_version=pinned)
    cfg = config.load("debian-12", repo_root=repo)
    assert (cfg.get("kubernetes_deb_version"), cfg.origins["kubernetes_deb_version"]) == (
        pinned,
        "config/kubernetes.json",
    )


def test_config_is_frozen_and_json_shape(repo: Path) -> None:
    cfg = config.load("debian-12", repo_root=repo)
    with pytest.raises(TypeError):
        cfg.values["cpus"] = 9  # type: ignore[index]
    with pytest.raises(AttributeError):
        cfg.target = "x"  # type: ignore[misc]
    data = cfg.to_json()
    assert set(data) == {s.name for s in SETTINGS}
    assert data["build_name"] == {"value": "debian-12", "origin": "config/debian-12.json"}


def test_targets_lists_os_files_only(repo: Path) -> None:
    names = config.targets(repo)
    assert "debian-12" in names and "ubuntu-2204" in names
    assert not {"common", "kubernetes", "containerd", "cni"} & set(names)


# --- validation -----------------------------------------------------------------------------------------


def test_unknown_key_suggests_nearest(repo: Path) -> None:
    edit(repo / "config/common.json", cpuss=4)
    with pytest.raises(ConfigError) as exc:
        config.load("debian-12", repo_root=repo)
    assert "config/common.json: cpuss: unknown key (did you mean 'cpus'?)" in problems(exc)


def test_string_for_number(repo: Path) -> None:
    """Packer's JSON variables are strings: "4096" is the number 4096, "lots" is an error."""
    edit(repo / "config/common.json", memory="4096", headless="false")
    cfg = config.load("debian-12", repo_root=repo)
    assert cfg["memory"] == 4096 and cfg["headless"] is False
    edit(repo / "config/common.json", memory="lots")
    with pytest.raises(ConfigError) as exc:
        config.load("debian-12", repo_root=repo)
    assert "config/common.json: memory: wrong type: want a number (ASCII digits)" in problems(exc)


def test_an_emptied_key_names_what_removing_it_gives(repo: Path, tmp_path: Path) -> None:
    """An empty string in a user layer is an error that says what the key is without that layer: the
    target's own value where its OS file sets one, else the default."""
    varfile = tmp_path / "mine.json"
    varfile.write_text(json.dumps({"provisioner": ""}))
    with pytest.raises(ConfigError) as exc:
        config.load("debian-12", [varfile], repo_root=repo)
    text = problems(exc)
    assert "provisioner: must not be empty (without it: 'chroot', from config/debian-12.json; remove" in text
    with pytest.raises(ConfigError) as exc:
        config.load("ubuntu-2204", [varfile], repo_root=repo)
    assert "provisioner: must not be empty (the default is 'vm'; remove the key to use it)" in problems(exc)
    lower = tmp_path / "site.json"  # a var file sets it, and a -var empties it: removing the -var gives that
    lower.write_text(json.dumps({"provisioner": "vm"}))
    with pytest.raises(ConfigError) as exc:
        config.load("debian-12", [lower], overrides={"provisioner": ""}, repo_root=repo)
    assert f"-var: provisioner: must not be empty (without it: 'vm', from {lower}; remove" in problems(exc)


def test_ansible_settings_from_the_environment_are_withheld(monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator's ANSIBLE_* settings do not reach kiln's Ansible runs (kiln's ansible.cfg decides), the
    paths to their own roles and collections do; the build names what it left out. Every child gets the
    C.UTF-8 locale, whatever the shell's. The real counterpart is tests/test_chroot_vm.py's rebuild with such
    settings."""
    monkeypatch.setenv("ANSIBLE_PYTHON_INTERPRETER", "/opt/py312/bin/python3")
    monkeypatch.setenv("ANSIBLE_FORCE_COLOR", "1")
    monkeypatch.setenv("ANSIBLE_ROLES_PATH", "/srv/roles")
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_PATH", "/srv/collections")
    monkeypatch.setenv("NOT_ANSIBLE_X", "kept")
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    monkeypatch.setenv("LANGUAGE", "de:en")
    rt = config.default_runtime()
    assert (rt.env["LANG"], rt.env["LC_ALL"], "LANGUAGE" in rt.env) == ("C.UTF-8", "C.UTF-8", False)
    assert rt.withheld == ("ANSIBLE_FORCE_COLOR", "ANSIBLE_PYTHON_INTERPRETER")
    assert "ANSIBLE_PYTHON_INTERPRETER" not in rt.env and "ANSIBLE_FORCE_COLOR" not in rt.env
    assert rt.env["ANSIBLE_ROLES_PATH"] == "/srv/roles" and rt.env["NOT_ANSIBLE_X"] == "kept"
    assert rt.child_env()["ANSIBLE_COLLECTIONS_PATH"] == "/srv/collections"


def test_the_system_tool_directories_are_on_the_runtime_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A root shell from a plain `su` has no sbin on PATH: kiln's tools there (chroot, mkfs.ext4, sfdisk)
    are still found, after the operator's own directories and kiln's virtualenv."""
    import sys

    from kiln.core import proc

    monkeypatch.setenv("PATH", "/opt/tools/bin")
    rt = config.default_runtime()
    venv = str(Path(sys.executable).parent)
    assert rt.path.split(":") == [venv, "/opt/tools/bin", *(d for d in proc.SYSTEM_PATH if d != venv)]
    assert str(Path(proc.which("chroot", rt)).parent) in proc.SYSTEM_PATH


def test_all_errors_reported_at_once(repo: Path) -> None:
    edit(repo / "config/common.json", cpuss=4, memory="lots")
    edit(repo / "config/kubernetes.json", kubernetes_semver="1.30")
    with pytest.raises(ConfigError) as exc:
        config.load("debian-12", overrides={"disk_sise": "1"}, repo_root=repo)
    text = problems(exc)
    assert len(exc.value.problems) == 4, text
    assert "config/kubernetes.json: kubernetes_semver: malformed semver '1.30'" in text
    assert "-var disk_sise: unknown key (did you mean 'disk_size'?)" in text


def test_malformed_json_names_file_and_line(repo: Path) -> None:
    (repo / "config/cni.json").write_text('{\n  "cni_bin_dir": "/opt/cni/bin",\n}\n')
    with pytest.raises(ConfigError) as exc:
        config.load("debian-12", repo_root=repo)
    assert "config/cni.json: line 3 column 1: malformed JSON" in problems(exc)


def test_malformed_hcl_var_file_names_file_and_line(repo: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pkrvars.hcl"
    bad.write_text("cpus = 4\nmemory = \n")
    with pytest.raises(ConfigError) as exc:
        config.load("debian-12", var_files=[bad], repo_root=repo)
    assert f"{bad}: line " in problems(exc) and "malformed HCL" in problems(exc)


def test_hcl_var_file_expressions_rejected(repo: Path, tmp_path: Path) -> None:
    bad = tmp_path / "expr.pkrvars.hcl"
    bad.write_text('http_proxy = "http://${var.host}:3128"\n')
    with pytest.raises(ConfigError) as exc:
        config.load("debian-12", var_files=[bad], repo_root=repo)
    assert f"{bad}: http_proxy: expressions" in problems(exc)


def test_missing_var_file(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        config.load("debian-12", var_files=[tmp_path / "nope.json"], repo_root=repo)
    assert "nope.json: var file not found" in problems(exc)


def test_missing_boot_file(repo: Path) -> None:
    (repo / "packer/http/ubuntu/preseed.cfg").unlink()
    with pytest.raises(ConfigError) as exc:
        config.load("ubuntu-1804", repo_root=repo)
    assert "config/ubuntu-1804.json: boot_files: packer/http/ubuntu/preseed.cfg: no such file" in problems(
        exc
    )


@pytest.mark.parametrize(
    ("target", "changes", "expect"),
    [
        ("debian-12", {"builder": "vmware-iso"}, "builder: vmware-iso cannot build install_method bootstrap"),
        ("ubuntu-2204", {"firmware": "efi"}, "firmware: efi is not supported with install_method installer"),
        (
            "debian-12",
            {"kubernetes_series": "v1.29"},
            "kubernetes_series: v1.29 contradicts kubernetes_semver",
        ),
        (
            "rockylinux-9",
            {"kubernetes_rpm_version": "1.29.1"},
            f"kubernetes_rpm_version: 1.29.1 contradicts kubernetes_semver {SEMVER}",
        ),
        ("ubuntu-2204", {"iso_checksum": "45f873de"}, "iso_checksum: malformed checksum"),
    ],
)
def test_contradictions(repo: Path, target: str, changes: dict[str, str], expect: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config.load(target, overrides=changes, repo_root=repo)
    assert expect in problems(exc)


def test_unknown_target(repo: Path) -> None:
    with pytest.raises(InputError, match="config/nope.json: no such target"):
        config.load("nope", repo_root=repo)


# --- through the CLI: exit 2, file and key in the message, nothing written -----------------------------


@pytest.mark.parametrize(
    ("breakage", "expect"),
    [
        ("typo", "config/common.json: memroy: unknown key (did you mean 'memory'?)"),
        ("string", "config/common.json: cpus: wrong type: want a number"),
        ("preseed", "config/ubuntu-1804.json: boot_files: packer/http/ubuntu/preseed.cfg: no such file"),
    ],
)
def test_cli_broken_config_exits_2_and_writes_nothing(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    breakage: str,
    expect: str,
) -> None:
    monkeypatch.setenv("KILN_REPO_ROOT", str(repo))
    monkeypatch.delenv("PACKER_VAR_FILES", raising=False)
    if breakage == "typo":
        edit(repo / "config/common.json", memroy=2048)
    elif breakage == "string":
        edit(repo / "config/common.json", cpus="two")
    else:
        (repo / "packer/http/ubuntu/preseed.cfg").unlink()
    out = tmp_path / "out"
    for argv in (
        ["render", "ubuntu-1804", "-o", str(out), "--packer-version", "1.6.6"],
        ["validate", "ubuntu-1804"],
        ["config", "ubuntu-1804"],
        ["build", "ubuntu-1804", "--only", "qemu"],
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert expect in err, err
    assert not out.exists()
    assert not list(tmp_path.glob(".out*"))
    assert not (repo / "packer" / ".rendered").exists()
    assert not (repo / "packer" / "output").exists()  # build stopped before making anything


def test_cli_config_show_origin_and_json(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("KILN_REPO_ROOT", str(repo))
    var_file = tmp_path / "site.json"
    var_file.write_text(json.dumps({"memory": 8192}))
    monkeypatch.setenv("PACKER_VAR_FILES", str(var_file))
    assert cli.main(["config", "debian-12", "-var", "cpus=4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split() == ["-var", "cpus=4"] for line in lines)
    assert any(line.split() == [str(var_file), "memory=8192"] for line in lines)
    series = SEMVER.rsplit(".", 1)[0]
    assert any(line.split() == ["derived", f"kubernetes_series={series}"] for line in lines)
    url = config.CONTAINERD_RELEASE.format(v="2.3.2")
    assert any(line.split()[:2] == ["derived", f"containerd_url={url}"] for line in lines)
    assert cli.main(["config", "debian-12", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["memory"] == {"value": 8192, "origin": str(var_file)}
    assert cli.main(["config", "debian-12", "--get", "kubernetes_rpm_version"]) == 0
    assert capsys.readouterr().out.strip() == SEMVER[1:]


def test_cli_list(repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KILN_REPO_ROOT", str(repo))
    assert cli.main(["list", "--json"]) == 0
    rows = {r["target"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["debian-12"]["install_method"] == "bootstrap" and rows["debian-12"]["builder"] == "qemu"
    assert rows["ubuntu-2204"]["builders"] == ["qemu", "vmware-iso"]
    assert set(rows) == set(config.targets(repo))


def test_readme_configuration_table_matches_settings_table() -> None:
    """The README's key table is generated from settings.SETTINGS; regenerate it when a setting changes."""
    from kiln.config.settings import markdown_table

    assert markdown_table() in (REPO / "docs" / "settings.md").read_text(), (
        "docs/settings.md: the settings table is stale; run `make generate` "
        "(hack/generate.py regenerates it from the settings table)"
    )


def test_containerd_url_is_derived_from_its_version_unless_set(repo: Path) -> None:
    cfg = config.load("debian-12", repo_root=repo)
    assert cfg.get("containerd_source_type") == "http" and cfg.get("containerd_sha256") == ""
    assert cfg.get("containerd_url") == config.CONTAINERD_RELEASE.format(v=cfg.get("containerd_version"))
    cfg = config.load("debian-12", overrides={"containerd_version": "2.2.1"}, repo_root=repo)
    assert cfg.get("containerd_url").endswith("/v2.2.1/containerd-2.2.1-linux-amd64.tar.gz")
    assert cfg.origins["containerd_url"] == "derived"
    mirror = "https://mirror.example/containerd.tgz"
    cfg = config.load("debian-12", overrides={"containerd_url": mirror}, repo_root=repo)
    assert (cfg.get("containerd_url"), cfg.origins["containerd_url"]) == (mirror, "-var")
    with pytest.raises(ConfigError, match="containerd_url: must not be empty"):
        config.load("debian-12", overrides={"containerd_url": ""}, repo_root=repo)


def test_crictl_version_follows_the_series_with_the_http_source(repo: Path) -> None:
    assert config.load("debian-12", repo_root=repo).get("crictl_version") == ""  # pkg: cri-tools package
    sums = json.dumps({n: "a" * 64 for n in ("kubelet", "kubeadm", "kubectl")})
    http = {
        "kubernetes_source_type": "http",
        "kubernetes_http_source": "http://10.0.2.2:1",
        "kubernetes_http_sha256": sums,
    }
    cfg = config.load("debian-12", overrides={**http, "kubernetes_semver": "v1.35.7"}, repo_root=repo)
    assert (cfg.get("crictl_version"), cfg.origins["crictl_version"]) == ("1.35.0", "derived")
    cfg = config.load("debian-12", overrides={**http, "crictl_version": "1.34.1"}, repo_root=repo)
    assert (cfg.get("crictl_version"), cfg.origins["crictl_version"]) == ("1.34.1", "-var")


def test_release_urls_of_crictl_and_runc_are_derived(repo: Path) -> None:
    cfg = config.load(
        "debian-12", overrides={"crictl_version": "1.36.0", "runc_version": "1.4.3"}, repo_root=repo
    )
    assert cfg.get("crictl_url") == config.CRICTL_RELEASE.format(v="1.36.0")
    assert cfg.get("runc_url") == config.RUNC_RELEASE.format(v="1.4.3")
    assert cfg.origins["runc_url"] == cfg.origins["crictl_url"] == "derived"
    plain = config.load("debian-12", repo_root=repo)
    assert plain.get("crictl_url") == plain.get("runc_url") == ""  # nothing to download


def test_typed_settings_are_generated_from_the_table_and_current() -> None:
    """config/typed.py is generated from the settings table (make generate); a value's type and default
    exist once, in the table."""
    from kiln.config.settings import typed_source

    assert (REPO / "src" / "kiln" / "config" / "typed.py").read_text() == typed_source(), (
        "src/kiln/config/typed.py is stale: run `make generate`"
    )


def test_config_carries_typed_settings_equal_to_its_values(repo: Path) -> None:
    import dataclasses

    from kiln.config.settings import SETTINGS

    cfg = config.load("debian-12", overrides={"memory": "6144", "extra_packages": "jq htop"}, repo_root=repo)
    s = cfg.settings
    assert s.memory == 6144 and isinstance(s.memory, int)
    assert s.extra_packages == ("jq", "htop")
    for setting in SETTINGS:
        value = getattr(s, setting.name)
        raw = cfg.values[setting.name]
        assert value == raw or tuple(value) == tuple(raw), setting.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.memory = 1  # type: ignore[misc]


def test_an_older_build_dirs_values_take_the_tables_defaults() -> None:
    from kiln.config.settings import BY_NAME
    from kiln.config.typed import Settings

    s = Settings.from_values({"build_name": "debian-12"})
    assert s.memory == BY_NAME["memory"].default and s.guest_os_type == BY_NAME["guest_os_type"].default
    with pytest.raises(TypeError, match="memory"):
        Settings.from_values({"memory": "lots"})


def test_the_ova_describes_the_vm_the_settings_table_declares(tmp_path: Path) -> None:
    """No module keeps its own defaults: the OVF's memory, CPUs and guest type are the build's settings
    (ova.py's own fallbacks, 2048 MiB and otherLinux64Guest, had drifted from the table)."""
    from kiln.artifacts import ova
    from kiln.config.settings import BY_NAME

    cfg = config.load("debian-12", repo_root=REPO)
    text = ova.ovf_descriptor(
        cfg.artifact_name, cfg.settings, vmdk_name="d.vmdk", vmdk_size=1, capacity_bytes=2
    )
    assert f"<rasd:VirtualQuantity>{cfg.settings.memory}</rasd:VirtualQuantity>" in text
    assert f'vmw:osType="{cfg.settings.guest_os_type}"' in text
    assert cfg.settings.memory == BY_NAME["memory"].default == 4096


def test_a_config_from_another_root_is_refused_where_it_meets_the_runtime(tmp_path: Path, repo: Path) -> None:
    """The data root has one value: a config loaded from one root never renders or builds with another."""
    import dataclasses

    from kiln.build import pipeline
    from kiln_runtime import RUNTIME

    cfg = config.load("debian-12", repo_root=repo)
    other = dataclasses.replace(RUNTIME, root=tmp_path / "elsewhere")
    with pytest.raises(InputError, match="data root"):
        pipeline.run_build(cfg, runtime=other)


def test_a_later_suite_on_ifupdown_is_warned_of_before_the_build() -> None:
    """A target of one's own made from debian-12's file with a later suite: its first boot would wait five
    minutes on DHCPv6 in networking.service; the config says so, naming where the suite was set."""
    cfg = config.load("debian-12", overrides={"bootstrap_suite": "trixie"})
    (line,) = [w for w in cfg.warnings if "bootstrap_suite" in w]
    assert line.startswith("-var: bootstrap_suite: trixie with bootstrap_network ifupdown (default)")
    assert "DHCPv6" in line and "networkd" in line
    assert not config.load("debian-13").warnings
    assert not config.load("debian-12").warnings
    fixed = config.load("debian-12", overrides={"bootstrap_suite": "trixie", "bootstrap_network": "networkd"})
    assert not fixed.warnings


def test_the_later_suite_warning_names_the_var_file_and_only_bootstrap_targets(tmp_path: Path) -> None:
    var = tmp_path / "site.json"
    var.write_text('{"bootstrap_suite": "forky"}')
    (line,) = config.load("debian-12", var_files=[var]).warnings
    assert line.startswith(f"{var}: bootstrap_suite: forky with bootstrap_network ifupdown (default)"), line
    assert not config.load("ubuntu-2404-cloudimg", var_files=[var]).warnings  # no bootstrap base


def test_a_warning_is_said_once_per_command_not_once_per_kubernetes_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A build of three Kubernetes versions loads three configs with the same warning: stderr says it once."""
    var = tmp_path / "site.json"
    var.write_text('{"bootstrap_suite": "trixie"}')
    argv = [
        "build",
        "debian-12",
        "--dry-run",
        "--var-file",
        str(var),
        "-var",
        f"output_dir={tmp_path / 'out'}",
    ]
    versions = ["--kubernetes-version", "v1.34.1", "--kubernetes-version", "v1.35.2"]
    assert cli.main([*argv, *versions, "--kubernetes-version", "v1.36.1"]) == 0
    err = capsys.readouterr().err
    assert err.count("kiln: warning: ") == 1 and err.count("bootstrap_suite: trixie") == 1, err
    assert cli.main(argv) == 0, "a second command in the same process says it again"
    assert capsys.readouterr().err.count("bootstrap_suite: trixie") == 1
