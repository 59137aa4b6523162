"""The release flow on the real built image (session fixture `built_image`) against fake-gcs-server: the
first release publishes the OVA, its .sha256, the SBOM and the index entry without rebuilding; an unchanged
second release builds nothing and sends 0 payload bytes. The image's SBOM passes spdx-tools validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ALL_FORMATS, SITE_VAR_FILES
from gcs_servers import BUCKET, FakeGcs, object_names, read_object
from kiln import config
from kiln.build import pipeline as build
from kiln.publish import gcs, release
from kiln_runtime import RUNTIME

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.vm, pytest.mark.gcs]


def _standin_config(built_image, tmp_path: Path) -> config.Config:  # type: ignore[no-untyped-def]
    """The config the built image was built from (the site's and the stand-in's var files; any port)."""
    semver = built_image.dir.kubernetes_semver
    standin = subprocess.run(
        [sys.executable, str(REPO / "hack/k8s_standin.py"), "vars", "--version", semver],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    var_file = tmp_path / "standin.json"
    var_file.write_text(standin)
    overrides = {"output_dir": str(built_image.path.parent), "formats": ALL_FORMATS}
    var_files = [*SITE_VAR_FILES, var_file]
    return config.load("debian-12", var_files=var_files, overrides=overrides, repo_root=REPO)


def test_release_of_the_built_image(built_image, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = _standin_config(built_image, tmp_path)
    digest = build.input_hash(cfg, RUNTIME)
    assert digest == built_image.dir.custom_data["input_hash"], "same inputs, same hash"
    server = FakeGcs()
    try:
        c = gcs.Client(gcs.credentials(None, server.url), server.url)
        first = release.run([cfg], c, BUCKET, runtime=RUNTIME)
        assert [e.status for e in first] == ["reused"], release.summary(first)  # no rebuild
        prefix = f"{first[0].channel}/{built_image.dir.kubernetes_semver}/{built_image.dir.name}"
        assert {prefix + s for s in (".ova", ".ova.sha256", ".spdx.json")} <= set(
            object_names(server.url, BUCKET, prefix)
        )
        index = json.loads(read_object(server.url, BUCKET, "index.json"))
        assert [i["input_hash"] for i in index["images"]] == [built_image.dir.custom_data["input_hash"]]
        c2 = gcs.Client(gcs.credentials(None, server.url), server.url)
        second = release.run([cfg], c2, BUCKET, runtime=RUNTIME)
        assert [e.status for e in second] == ["published"] and c2.stats.bytes_sent == 0
        print(
            f"\nrelease of the built image: {first[0].seconds:.1f}s, {c.stats.requests} requests, "
            f"{c.stats.bytes_sent} bytes; unchanged re-release: {second[0].seconds:.2f}s, "
            f"{c2.stats.requests} requests, 0 bytes"
        )
    finally:
        server.stop()


def test_sbom_of_the_built_image_is_valid_spdx(built_image, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sbom = built_image.dir.sbom
    tool = Path(sys.executable).parent / "pyspdxtools"
    r = subprocess.run([str(tool), "-i", str(sbom)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(sbom.read_text())
    by_name = {p["name"]: p for p in doc["packages"]}
    assert by_name["containerd"]["versionInfo"] not in ("", "NOASSERTION")
    assert by_name["kubelet"]["versionInfo"] == built_image.dir.kubernetes_semver
    assert by_name["kubelet"]["checksums"][0]["algorithm"] == "SHA256"
    packages = (built_image.path / f"{built_image.dir.name}.packages").read_text().splitlines()
    assert len(doc["packages"]) >= len(packages)
