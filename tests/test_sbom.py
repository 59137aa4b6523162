"""The SBOM kiln writes for every image passes the SPDX project's own validator (spdx-tools)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kiln import config
from kiln.artifacts import sbom
from kiln.config.settings import BY_NAME

REPO = Path(__file__).resolve().parents[1]
SUMS = {"kubelet": "a" * 64, "kubeadm": "b" * 64, "kubectl": "c" * 64}


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # the defaults: Kubernetes from pkgs.k8s.io, containerd's release tarball, CNI from the distro
        {"kubernetes_source_type": "http", "kubernetes_http_source": "http://10.0.2.2:8088",
         "kubernetes_http_sha256": json.dumps(SUMS), "containerd_source_type": "http",
         "containerd_url": "https://github.com/containerd/containerd/releases/download/v1.7.18/c.tar.gz",
         "containerd_sha256": "d" * 64, "cni_source_type": "http", "cni_sha256": "e" * 64,
         "cni_url": "https://github.com/containernetworking/plugins/releases/download/v1.4.1/cni.tgz",
         "runc_version": "1.4.3"},
    ],
)  # fmt: skip
def test_sbom_is_valid_spdx_and_names_the_node_components(tmp_path: Path, overrides: dict) -> None:
    packages = tmp_path / "x.packages"
    packages.write_text("containerd\t1.6.20~ds1-1+b1\nrunc\t1.1.5+ds1-1\nlibc6\t2.36-9\n")
    cfg = config.load("debian-12", overrides=overrides, repo_root=REPO)
    out = sbom.write(tmp_path / "x.spdx.json", cfg.artifact_name, cfg.settings, packages)
    tool = Path(sys.executable).parent / "pyspdxtools"
    r = subprocess.run([str(tool), "-i", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    names = {p["name"]: p for p in doc["packages"]}
    semver = BY_NAME["kubernetes_semver"].default
    assert names["containerd"]["versionInfo"] and names["kubelet"]["versionInfo"] == semver
    purls = [ref["referenceLocator"] for p in doc["packages"] for ref in p.get("externalRefs", [])]
    assert "pkg:deb/debian/libc6@2.36-9?arch=amd64" in purls
    if overrides:
        assert names["kubelet"]["checksums"] == [{"algorithm": "SHA256", "checksumValue": "a" * 64}]
        assert "10.0.2.2:8088" in names["kubelet"]["sourceInfo"]
        assert names["cni-plugins"]["downloadLocation"].startswith("https://github.com/")
        assert names["crictl"]["versionInfo"] == "1.36.0" and names["runc"]["versionInfo"] == "1.4.3"
        assert "pkg:github/opencontainers/runc@v1.4.3" in purls
    else:
        assert "crictl" not in names and names["runc"]["versionInfo"] == "1.1.5+ds1-1"  # the package's runc
