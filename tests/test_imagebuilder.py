"""image-builder users walk in: their var files work unchanged (strings for numbers and booleans, null,
{{user `KEY`}} references, image-builder key names, keys kiln ignores with one warning line)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kiln import cli, config
from kiln.config.imagebuilder import ALIASES, IMAGE_BUILDER_IGNORED
from kiln.config.settings import BY_NAME
from kiln.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "imagebuilder"
SITE = [
    FIXTURES / n
    for n in ("site-common.json", "site-kubernetes.json", "site-cni.json", "site-vars.pkrvars.hcl")
]


def load(*var_files: Path, **overrides: str) -> config.Config:
    return config.load("debian-12", var_files=list(var_files), overrides=overrides, repo_root=REPO)


def test_var_files_as_image_builder_users_write_them() -> None:
    cfg = load(*SITE)
    assert (
        cfg["cpus"] == 4 and cfg["memory"] == 8192 and cfg["disk_size"] == 40960 and cfg["headless"] is True
    )
    assert cfg["extra_packages"] == ("nfs-common", "jq", "open-iscsi")
    assert cfg["extra_roles_before"] == () and cfg["extra_roles_after"] == ("site_hardening",)
    assert cfg["cni_plugins_version"] == "v1.6.2" and cfg["cni_source_type"] == "pkg"
    assert cfg["kubernetes_semver"] == "v1.33.4" and cfg["kubernetes_deb_version"] == "1.33.4-1.1"
    assert (
        cfg["pause_image"] == "registry.example.internal/k8s/pause:3.10"
    )  # {{user}} resolved after layering
    assert cfg["http_proxy"] == ""  # null: not set here
    assert cfg["containerd_version"] == "1.7.24" and cfg["extra_kernel_boot_params"] == "console=ttyS0 nosmt"
    common = "tests/fixtures/imagebuilder/site-common.json"
    assert cfg.origins["extra_packages"] == f"{common} (image-builder: extra_debs)"
    assert cfg.origins["cni_plugins_version"].endswith("site-cni.json (image-builder: kubernetes_cni_semver)")
    assert cfg.origins["cpus"] == common
    assert len(cfg.warnings) == 3
    want = "site-common.json: image-builder keys kiln does not use, ignored: goss_version, build_target"
    assert any(want in w for w in cfg.warnings)


def test_kiln_config_shows_image_builder_origin_and_one_warning(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["config", "debian-12"] + [a for f in SITE for a in ("--var-file", str(f))]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert re.search(r"site-common.json \(image-builder: extra_debs\) +extra_packages=", out), out
    warnings = [ln for ln in err.splitlines() if ln.startswith("kiln: warning:")]
    assert len(warnings) == 3 and all("ignored" in w for w in warnings)


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        ({"disk_size": "big"}, "disk_size: wrong type: want a number"),
        ({"headless": "perhaps"}, "headless: wrong type: want bool"),
        (
            {"pause_image": "{{user `nope_nothing`}}"},
            "pause_image: {{user `nope_nothing`}} names no variable",
        ),
        ({"pause_image": "{{user `pause_image`}}"}, "refers back to itself (pause_image -> pause_image)"),
        (
            {"crictl_version": "{{user `runc_version`}}", "runc_version": "{{user `crictl_version`}}"},
            "refers back to itself (crictl_version -> runc_version -> crictl_version)",
        ),
        ({"pause_image": "{{env `HOME`}}/x"}, "Packer function {{env}} is not supported"),
        ({"disk_size": "{{user `extra_kernel_boot_params`}}", "extra_kernel_boot_params": "x"}, "disk_size"),
        ({"crictl_versoin": "1.0"}, "crictl_versoin: unknown key (did you mean 'crictl_version'?)"),
        ({"extra_deb": "jq"}, "did you mean 'extra_debs', image-builder's name for 'extra_packages'?"),
        ({"iso_checksum": "abc123"}, "a bare digest of 6 hex digits matches no checksum type"),
    ],
)
def test_image_builder_habits_errors_name_file_and_key(tmp_path: Path, data: dict, expect: str) -> None:
    var = tmp_path / "site.json"
    var.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        load(var)
    assert any(p.startswith(str(var)) and expect in p for p in err.value.problems), err.value.problems


def test_reference_to_an_ignored_key_and_to_a_later_layer(tmp_path: Path) -> None:
    first = tmp_path / "a.json"
    first.write_text(json.dumps({"crictl_url": "https://dl.example/crictl-{{user `crictl_version`}}-linux-"
                                 "{{user `kubernetes_cni_http_checksum_arch`}}.tgz"}))  # fmt: skip
    second = tmp_path / "b.json"
    second.write_text(json.dumps({"crictl_version": "1.32.0", "kubernetes_cni_http_checksum_arch": "amd64",
                                  "crictl_sha256": "a" * 64}))  # fmt: skip
    cfg = load(first, second)
    assert cfg["crictl_url"] == "https://dl.example/crictl-1.32.0-linux-amd64.tgz"


def test_bare_hex_checksum_is_accepted_by_length() -> None:
    cfg = config.load(
        "ubuntu-2204", overrides={"iso_checksum": "c" * 64}, repo_root=REPO
    )  # Packer infers sha256 from 64 hex digits
    assert cfg["iso_checksum"] == "c" * 64


def test_the_alias_and_ignored_tables_are_consistent() -> None:
    assert not set(ALIASES) & set(BY_NAME), "an alias must not shadow a kiln key"
    assert not set(ALIASES) & set(IMAGE_BUILDER_IGNORED)
    assert not set(IMAGE_BUILDER_IGNORED) & set(BY_NAME)
    readme = (REPO / "docs" / "image-builder.md").read_text()
    for name in [*ALIASES, *IMAGE_BUILDER_IGNORED]:
        assert f"`{name}`" in readme, f"docs/image-builder.md lacks {name}"


def test_current_image_builder_qemu_and_vsphere_keys_and_spellings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Keys of image-builder's 2026 var files kiln has no use for are accepted with one warning; its Packer
    spellings (a checksum-file URL, an OVMF image path, iso_url for a cloud image) mean what they meant."""
    site = FIXTURES / "site-qemu-cloudimg.json"
    cfg = config.load("ubuntu-2404-cloudimg", var_files=[site], repo_root=REPO)
    assert cfg.get("cloudimg_url") == "https://images.example.internal/noble/noble-server-cloudimg-amd64.img"
    assert cfg.get("cloudimg_checksum") == "file:https://images.example.internal/noble/SHA256SUMS"
    assert cfg.origins["cloudimg_url"] == f"{site.relative_to(REPO)} (image-builder: iso_url)"
    assert cfg.get("firmware") == "efi"
    assert cli.main(["config", "ubuntu-2404-cloudimg", "--var-file", str(site)]) == 0
    captured = capsys.readouterr()
    (warning,) = [line for line in captured.err.splitlines() if "warning" in line]
    for key in ("goss_sleep", "vcenter_server", "password", "ecr_credential_provider_version", "disk_image"):
        assert key in warning
    assert "not-a-real-password" not in captured.out + captured.err, "an ignored key's value is never shown"
