"""Walk-in, round two: the constructs of var files and goss specs that image-builder users carry (our own
fixtures in tests/fixtures/walkin/, written after the files of a dozen organisations), and what a new user
meets in the first hour: network faults, bucket names, hints."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln import config
from kiln.config.imagebuilder import IMAGE_BUILDER_IGNORED
from kiln.core.errors import ConfigError, InputError, UploadError
from kiln.goss import specs

REPO = Path(__file__).resolve().parents[1]
WALKIN = REPO / "tests" / "fixtures" / "walkin"


def kiln(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args], capture_output=True, text=True, cwd=REPO,
        env={**os.environ, **(env or {})}, timeout=120,
    )  # fmt: skip


# --- builder keys next to content keys --------------------------------------------------------------------


def test_openstack_keys_are_ignored_with_one_warning_and_content_keys_apply() -> None:
    cfg = config.load("ubuntu-2204", var_files=[WALKIN / "openstack-mixed.json"], repo_root=REPO)
    assert cfg["kubernetes_semver"] == "v1.31.4" and cfg["containerd_version"] == "1.7.24"
    assert list(cfg["extra_packages"]) == ["nfs-common"]
    ignored = [w for w in cfg.warnings if "image-builder keys kiln does not use" in w]
    assert len(ignored) == 1 and "flavor" in ignored[0] and "networks" in ignored[0]
    assert any("comment keys" in w and "_comment" in w for w in cfg.warnings)


def test_each_builder_key_has_a_reason_naming_its_builder() -> None:
    pairs = (("flavor", "OpenStack"), ("omi_name", "Outscale"), ("ami_regions", "AWS"), ("vm_size", "Azure"),
             ("remote_host", "ova/ESX"), ("nutanix_cluster_name", "Nutanix"), ("proxmox_url", "Proxmox"),
             ("project_id", "GCP"))  # fmt: skip
    for key, builder in pairs:
        assert builder in IMAGE_BUILDER_IGNORED[key], key
    assert "vSphere" in IMAGE_BUILDER_IGNORED["vcenter_server"]
    docs = (REPO / "docs" / "image-builder.md").read_text()
    assert "| `flavor` | ignored: " in docs and "| `omi_name` | ignored: Outscale" in docs


def test_legacy_esx_keys_load() -> None:
    run = kiln(
        "config", "ubuntu-2004", "--var-file", str(WALKIN / "esx-legacy.json"), "--get", "kubernetes_semver"
    )
    assert run.returncode == 0 and run.stdout.strip() == "v1.30.8", run.stderr
    assert run.stderr.count("kiln: warning:") == 1 and "remote_host" in run.stderr


# --- http sources from nothing but the source type -------------------------------------------------------


def test_http_sources_with_only_the_source_type_derive_urls_and_checksum_files() -> None:
    cfg = config.load("debian-12", var_files=[WALKIN / "http-only-type.json"], repo_root=REPO)
    assert cfg["kubernetes_http_source"] == "https://dl.k8s.io/release"
    assert cfg.origins["kubernetes_http_source"] == "derived"
    version = cfg["cni_plugins_version"]
    url = f"https://github.com/containernetworking/plugins/releases/download/{version}/cni-plugins-linux-amd64-{version}.tgz"
    assert cfg["cni_url"] == url and cfg["cni_sha256"] == url + ".sha256"
    # the role checks each Kubernetes binary against NAME.sha256 beside it and names the file in its log
    task = (REPO / "ansible/roles/kubernetes/tasks/http.yml").read_text()
    assert "'.sha256'" in task and "label:" in task


def test_image_builders_cni_source_and_checksum_keys() -> None:
    cfg = config.load("debian-12", var_files=[WALKIN / "http-ib-checksum.json"], repo_root=REPO)
    assert (
        cfg["cni_url"] == "https://mirror.example.org/cni-releases/v1.5.1/cni-plugins-linux-amd64-v1.5.1.tgz"
    )
    assert cfg["cni_sha256"] == (
        "https://mirror.example.org/cni-releases/v1.5.1/cni-plugins-linux-amd64-v1.5.1.tgz.sha256"
    )
    assert "kubernetes_cni_http_checksum" in cfg.origins["cni_sha256"]


# --- a var file for another OS --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "fixture", "key", "fits"),
    [
        ("ubuntu-2404", "centos-7-on-other.json", "distro_name", "it fits centos-7"),
        ("rockylinux-9", "rocky-8.json", "distribution_version", "no kiln target builds rockylinux 8"),
        (
            "ubuntu-2204",
            "ubuntu-2204-cloud.json",
            "disk_image",
            "no kiln target builds ubuntu 2204 from a cloud",
        ),
    ],
)
def test_a_var_file_for_another_os_is_exit_2_naming_file_key_and_fit(
    target: str, fixture: str, key: str, fits: str
) -> None:
    run = kiln("config", target, "--var-file", str(WALKIN / fixture))
    assert run.returncode == 2, run.stdout
    line = next(line for line in run.stderr.splitlines() if f"{fixture}: {key}:" in line)
    assert f"target {target}" in line and fits in line, run.stderr


def test_a_var_file_for_the_same_os_in_image_builders_spelling_fits() -> None:
    data = {"distro_name": "ubuntu", "distribution_version": "2404", "os_display_name": "Ubuntu 24.04"}
    run = kiln("config", "ubuntu-2404", "-var", f"distro_name={data['distro_name']}",
               "-var", "os_version=24.04.1", "--get", "os_name")  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "ubuntu", run.stderr


# --- EFI, packages, repos ---------------------------------------------------------------------------------


def test_image_builders_qemu_efi_keys(tmp_path: Path) -> None:
    from kiln.vm.qemu import find_ovmf

    code, vars_ = find_ovmf()
    efi = tmp_path / "efi.json"
    efi.write_text(
        json.dumps({"efi_boot": "true", "efi_firmware_code": str(code), "efi_firmware_vars": str(vars_)})
    )
    cfg = config.load("ubuntu-2404-cloudimg", var_files=[efi], repo_root=REPO)
    assert cfg["firmware"] == "efi" and cfg.origins["firmware"].endswith("(image-builder: efi_boot)")
    run = kiln("render", "ubuntu-2404-cloudimg", "--var-file", str(efi), "-o", str(tmp_path / "r"))
    assert run.returncode == 0, run.stderr
    hcl = (tmp_path / "r" / "node.pkr.hcl").read_text()
    assert (
        f"readonly=on,file={code}" in hcl
        and (tmp_path / "r" / "efi_vars.fd").read_bytes() == vars_.read_bytes()
    )
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"efi_boot": True, "efi_firmware_code": "/nonexistent/OVMF_CODE.fd"}))
    with pytest.raises(ConfigError, match="efi_firmware_code: /nonexistent/OVMF_CODE.fd: no such file"):
        config.load("ubuntu-2404-cloudimg", var_files=[missing], repo_root=REPO)


def test_the_rpm_version_is_not_checked_on_a_deb_target_and_the_deb_one_not_on_rpm() -> None:
    odd = {"kubernetes_rpm_version": "1.20.0-0", "kubernetes_deb_version": "1.20.0-00"}
    assert config.load("debian-12", overrides={"kubernetes_rpm_version": odd["kubernetes_rpm_version"]},
                       repo_root=REPO)["kubernetes_rpm_version"] == "1.20.0-0"  # fmt: skip
    assert config.load("rockylinux-9", overrides={"kubernetes_deb_version": odd["kubernetes_deb_version"]},
                       repo_root=REPO)["kubernetes_deb_version"] == "1.20.0-00"  # fmt: skip
    with pytest.raises(ConfigError, match="kubernetes_deb_version: 1.20.0-00 contradicts"):
        config.load("debian-12", overrides={"kubernetes_deb_version": "1.20.0-00"}, repo_root=REPO)


def test_repos_in_image_builders_url_suite_form() -> None:
    cfg = config.load("debian-12", var_files=[WALKIN / "legacy-repos.json"], repo_root=REPO)
    assert cfg["kubernetes_deb_repo"] == "https://packages.example.org/kubernetes/apt kubernetes-xenial"
    assert cfg["kubernetes_rpm_gpg_key"].split() == [
        "https://packages.example.org/yum/doc/yum-key.gpg", "https://packages.example.org/yum/doc/rpm-package-key.gpg"
    ]  # fmt: skip
    assert list(cfg["extra_repos"]) == [
        "deb https://mirror.example.org/site-debs bookworm main",
        "deb https://mirror.example.org/tools bookworm main contrib",
    ]
    assert cfg["crictl_sha256"].endswith(".tar.gz.sha256")
    with pytest.raises(ConfigError, match="suite/component"):
        config.load("debian-12", overrides={"kubernetes_deb_repo": "https://a.example/ x;y"}, repo_root=REPO)


def test_the_apt_line_the_role_writes_for_each_repo_form() -> None:
    import jinja2
    import yaml

    task = next(t for t in yaml.safe_load((REPO / "ansible/roles/kubernetes/tasks/pkg.yml").read_text())
                if t["name"].startswith("Kubernetes apt repository ("))  # fmt: skip
    env = jinja2.Environment(keep_trailing_newline=True)  # as Ansible templates
    for repo, line in (
        ("https://pkgs.k8s.io/core:/stable:/v1.31/deb/", "https://pkgs.k8s.io/core:/stable:/v1.31/deb/ /"),
        ("https://apt.example/ kubernetes-xenial", "https://apt.example/ kubernetes-xenial main"),
        ("https://apt.example/ xenial main contrib", "https://apt.example/ xenial main contrib"),
    ):
        ctx: dict[str, object] = {"kubernetes_deb_repo": repo}
        ctx["repo_parts"] = repo.split()
        for name in ("repo_suite", "repo_components"):
            ctx[name] = env.from_string(task["vars"][name]).render(**ctx).strip()
        content = env.from_string(task["ansible.builtin.copy"]["content"]).render(**ctx)
        assert content == f"deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.asc] {line}\n"


# --- formats, types, hints, suggestions -------------------------------------------------------------------


def test_a_yaml_var_file_loads_and_a_yaml_file_named_json_says_so() -> None:
    cfg = config.load("debian-12", var_files=[WALKIN / "site.yaml"], repo_root=REPO)
    assert (cfg["cpus"], cfg["memory"], list(cfg["extra_packages"])) == (4, 4096, ["nfs-common", "jq"])
    run = kiln("config", "debian-12", "--var-file", str(WALKIN / "yaml-named-json.json"))
    assert run.returncode == 2
    assert "reads as YAML: name it .yaml or .yml" in run.stderr and "*.pkrvars.hcl" in run.stderr
    assert "hint: fix the file's syntax" in run.stderr


def test_numbers_and_their_messages() -> None:
    assert config.load("debian-12", overrides={"cpus": "4"}, repo_root=REPO)["cpus"] == 4
    bad = WALKIN.parent / "walkin" / "site.yaml"
    assert config.load("debian-12", var_files=[bad], repo_root=REPO)["cpus"] == 4  # 4.0
    with pytest.raises(ConfigError, match="cpus: wrong type: want a whole number, got 4.5"):
        config.load("debian-12", overrides={"cpus": 4.5}, repo_root=REPO)


@pytest.mark.parametrize(
    ("key", "hint"),
    [("kubernetes_semvr", "did you mean 'kubernetes_semver'?"),
     ("kubernetes_cni_semvr", "did you mean 'kubernetes_cni_semver', image-builder's name for"),
     ("critctl_version", "did you mean 'crictl_version'?")],
)  # fmt: skip
def test_did_you_mean_picks_the_nearest_name(key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.load("debian-12", overrides={key: "v1.31.0"}, repo_root=REPO)
    assert hint in "\n".join(err.value.problems)


def test_hints_fit_the_error() -> None:
    hints = {}
    for name, args in {
        "unknown": ["-var", "kubernetes_semvr=v1.31.0"],
        "type": ["-var", "cpus=lots"],
        "os": ["--var-file", str(WALKIN / "rocky-8.json")],
        "missing": ["--var-file", "/nonexistent/vars.json"],
    }.items():
        run = kiln("config", "rockylinux-9", *args)
        assert run.returncode == 2, run.stderr
        hints[name] = next(line for line in run.stderr.splitlines() if line.startswith("kiln: hint:"))
    assert len(set(hints.values())) == len(hints), hints


# --- goss, as goss reads it --------------------------------------------------------------------------------


def test_goss_skips_matchers_that_render_empty_and_reads_yaml_as_go_does(tmp_path: Path) -> None:
    spec = tmp_path / "goss.yaml"
    spec.write_text(
        "package:\n"
        "  containerd:\n    installed: true\n    versions:\n"
        "{{- range .Vars.pinned }}\n      - {{ . }}\n{{- end }}\n"
        '  runc:\n    installed: true\n    versions:\n      - {{ .Vars.runc }}\n      - "1.1.12"\n'
        "file:\n  /etc/motd:\n    exists: true\n    title: !note site-specific\n"
        "    contents: !lines\n      - 2024-01-01\n      - yes\n"
    )
    loaded = specs.load_spec(spec, {"pinned": [], "runc": ""})
    by_id = {r.id: r for r in loaded.resources}
    assert "versions" not in by_id["containerd"].checks  # rendered to nothing: skipped
    assert by_id["runc"].checks["versions"].expected == ["1.1.12"]  # the empty item is left out
    assert by_id["/etc/motd"].checks["contents"].expected == ["2024-01-01", "yes"]  # text, as Go reads it


def test_goss_render_renders_kilns_own_spec_with_a_targets_vars() -> None:
    run = kiln("goss", "render", "--target", "debian-12", "--phase", "final")
    assert run.returncode == 0, run.stderr
    assert "containerd" in run.stdout and "{{" not in run.stdout
    run = kiln("goss", "render", "goss/goss.yaml", "--target", "debian-12")
    assert run.returncode == 0 and "cni-plugins-executable" in run.stdout, run.stderr
    run = kiln("goss", "render", "goss/goss.yaml")  # image-builder's habit: the file alone
    assert run.returncode == 2 and "--target TARGET" in run.stderr, run.stderr


# --- the network: fast failures with their cause ----------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "cause"),
    [
        (["images", "ls", "--bucket", "capv-images", "--endpoint", "http://storage.invalid"],
         "could not resolve storage.invalid"),
        (["images", "ls", "--bucket", "capv-images", "--endpoint", "http://127.0.0.1:{port}"],
         "connection refused by 127.0.0.1:{port}"),
        (["images", "get", "http://downloads.invalid/x.ova"], "could not resolve downloads.invalid"),
        (["images", "get", "http://127.0.0.1:{port}/x.ova"], "connection refused by 127.0.0.1:{port}"),
        (["release", "debian-12", "--plan", "--bucket", "capv-images", "--endpoint", "http://127.0.0.1:{port}"],
         "connection refused by 127.0.0.1:{port}"),
    ],
)  # fmt: skip
def test_unresolvable_names_and_closed_ports_fail_fast_with_the_cause(args: list[str], cause: str) -> None:
    port = _closed_port()
    started = time.monotonic()
    run = (
        kiln(*[a.format(port=port) for a in args], "-o", "/tmp/kiln-none")
        if args[1] == "get"
        else kiln(*[a.format(port=port) for a in args])
    )
    seconds = time.monotonic() - started
    assert run.returncode != 0 and seconds < 10, (seconds, run.stderr)
    assert cause.format(port=port) in run.stderr and "Traceback" not in run.stderr


def test_the_network_classifier_keeps_retries_for_what_retrying_can_fix() -> None:
    import requests

    from kiln.core import net

    refused = f"http://127.0.0.1:{_closed_port()}/x"
    with pytest.raises(requests.ConnectionError) as err:
        requests.get(refused, timeout=5)
    assert not net.describe(err.value, refused).retryable
    reset = requests.ConnectionError(ConnectionResetError(104, "Connection reset by peer"))
    assert net.describe(reset, "https://storage.googleapis.com/x").retryable
    assert net.describe(requests.ReadTimeout("read timed out"), "https://h.example/x").retryable


@pytest.mark.parametrize("bucket", ["gs://b", "my bucket", "UPPER", "-lead", "a" * 64, "192.168.0.1"])
def test_bucket_names_are_checked_before_any_request(bucket: str) -> None:
    run = kiln("images", "ls", f"--bucket={bucket}", "--endpoint", "http://127.0.0.1:9")
    assert run.returncode == 2 and "GCS bucket name" in run.stderr and "refused" not in run.stderr, run.stderr


def test_a_gs_prefix_is_stripped() -> None:
    from kiln.config.validators import bucket_name, bucket_problem

    assert bucket_name("gs://capv-images/") == "capv-images" and bucket_problem("capv-images") is None
    with pytest.raises(ConfigError, match="gcs_bucket"):
        config.load("debian-12", overrides={"gcs_bucket": "gs://x"}, repo_root=REPO)


@pytest.mark.gcs
def test_a_missing_bucket_is_named_as_missing() -> None:
    from gcs_servers import FakeGcs

    server = FakeGcs()
    try:
        for args in (["release", "debian-12", "--plan"], ["images", "ls"]):
            run = kiln(*args, "--bucket", "no-such-bucket", "--endpoint", server.url)
            assert run.returncode == 2, run.stderr
            assert "gs://no-such-bucket: no such bucket" in run.stderr, run.stderr
        run = kiln("release", "debian-12", "--plan", "--bucket", server.bucket, "--endpoint", server.url)
        assert run.returncode == 0 and "build" in run.stdout, run.stderr
    finally:
        server.stop()


def test_an_unparsable_url_is_an_input_error_not_a_traceback() -> None:
    run = kiln("images", "get", "http://%zz/x.ova", "-o", "/tmp/kiln-none")
    assert (
        run.returncode == 2 and "not a host name or address" in run.stderr and "Traceback" not in run.stderr
    )


def test_errors_are_kiln_errors() -> None:
    assert issubclass(ConfigError, InputError) and not issubclass(UploadError, InputError)
