"""kiln images ls|get against fake-gcs-server: listing, and verified, resumable downloads over public URLs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gcs_servers import BUCKET, FakeGcs, FaultProxy, make_build_dir
from kiln.core.builddir import BuildDir
from kiln.core.errors import InputError, UploadError
from kiln.publish import gcs, images, upload
from kiln_runtime import RUNTIME

FAST = gcs.RetryPolicy(attempts=6, initial=0.02, maximum=0.2)


def test_resolve_url_forms() -> None:
    base = "http://127.0.0.1:1"
    assert images.resolve_url("debian-12+kube-v1.30.1.ova", base, "b") == (
        "http://127.0.0.1:1/b/release/v1.30.1/debian-12%2Bkube-v1.30.1.ova"
    )
    assert images.resolve_url("ubuntu-2204+kube-v1.31.0-rc.1.qcow2", base + "/", "b") == (
        "http://127.0.0.1:1/b/ci/v1.31.0-rc.1/ubuntu-2204%2Bkube-v1.31.0-rc.1.qcow2"
    )
    assert images.resolve_url("ci/v1.2.3/x.ova", base, "b") == "http://127.0.0.1:1/b/ci/v1.2.3/x.ova"
    assert images.resolve_url("gs://other/release/v1.2.3/x.ova", base, "b") == (
        "http://127.0.0.1:1/other/release/v1.2.3/x.ova"
    )
    assert images.resolve_url("https://example.test/x.ova", base, "b") == "https://example.test/x.ova"
    with pytest.raises(InputError, match="not a URL"):
        images.resolve_url("whatever.ova", base, "b")


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[FakeGcs, list[Path]]:
    server = FakeGcs()
    root = tmp_path_factory.mktemp("builds")
    builds = [
        make_build_dir(root / "a", version="v1.30.1", size=3 * 1024 * 1024 + 17),
        make_build_dir(root / "b", version="v1.31.0-beta.2", size=200_000, build_name="ubuntu-2204"),
    ]
    client = gcs.Client(gcs.credentials(None, server.url), server.url)
    for bd in builds:
        opts = upload.Options(bucket=BUCKET, artifacts=("ova", "qcow2"))
        _, results = upload.publish_build(BuildDir.open(bd), client, opts, runtime=RUNTIME)
        assert all(r.action == "uploaded" for r in results)
    yield server, builds
    server.stop()


def kiln(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.gcs
def test_images_ls(published: tuple[FakeGcs, list[Path]]) -> None:
    server, builds = published
    r = kiln("images", "ls", "--endpoint", server.url, "--bucket", BUCKET, "--json")
    assert r.returncode == 0, r.stderr
    listed = {i["path"]: i for i in json.loads(r.stdout)}
    assert set(listed) == {
        "release/v1.30.1/debian-12+kube-v1.30.1.ova",
        "release/v1.30.1/debian-12+kube-v1.30.1.qcow2",
        "ci/v1.31.0-beta.2/ubuntu-2204+kube-v1.31.0-beta.2.ova",
        "ci/v1.31.0-beta.2/ubuntu-2204+kube-v1.31.0-beta.2.qcow2",
    }
    ova = listed["release/v1.30.1/debian-12+kube-v1.30.1.ova"]
    assert ova["has_sidecar"] is True
    assert ova["sha256"] == (builds[0] / f"{builds[0].name}.ova.sha256").read_text()
    r = kiln("images", "ls", "--endpoint", server.url, "--bucket", BUCKET, "--ci", "--json")
    assert {i["channel"] for i in json.loads(r.stdout)} == {"ci"}
    r = kiln("images", "ls", "--endpoint", server.url, "--bucket", BUCKET, "--version", "v1.30.1", "--json")
    assert {i["version"] for i in json.loads(r.stdout)} == {"v1.30.1"}
    r = kiln("images", "ls", "--endpoint", server.url, "--bucket", BUCKET)  # not a terminal: one per line
    assert r.returncode == 0
    line = f"gs://{BUCKET}/release/v1.30.1/debian-12+kube-v1.30.1.ova\t{ova['size']}\t{ova['updated']}\t"
    assert line + ova["sha256"] in r.stdout.splitlines()


@pytest.mark.gcs
def test_images_get_by_name_verifies_checksum(tmp_path: Path, published: tuple[FakeGcs, list[Path]]) -> None:
    server, builds = published
    bd = builds[0]
    r = kiln(
        "images", "get", f"{bd.name}.ova", "-o", str(tmp_path), "--base-url", server.url, "--bucket", BUCKET
    )
    assert r.returncode == 0, r.stderr
    got = tmp_path / f"{bd.name}.ova"
    assert got.read_bytes() == (bd / f"{bd.name}.ova").read_bytes()
    assert "verified" in r.stdout
    assert ".ova: 50%" in r.stderr  # progress lines when not on a terminal
    assert sorted(p.name for p in tmp_path.iterdir()) == [got.name]  # no .part left behind
    r = kiln(
        "images", "get", f"{bd.name}.ova", "-o", str(tmp_path), "--base-url", server.url, "--bucket", BUCKET
    )
    assert r.returncode == 0 and "present" in r.stdout


@pytest.mark.gcs
def test_images_get_resumes_after_dropped_connections(
    tmp_path: Path, published: tuple[FakeGcs, list[Path]]
) -> None:
    server, builds = published
    bd = builds[0]
    data = (bd / f"{bd.name}.ova").read_bytes()
    proxy = FaultProxy(server.url)
    try:
        proxy.add("cut", lambda m, p, h: m == "GET" and p.endswith(".ova"), times=2)
        url = images.resolve_url(f"{bd.name}.ova", proxy.url, BUCKET)
        res = images.download(url, tmp_path, retry=FAST)
        assert res.path.read_bytes() == data
        gets = [s for s in proxy.seen if s.path.endswith(".ova")]
        assert [s.action for s in gets] == ["cut", "cut", ""]
        assert "range" not in gets[0].headers
        # picked up where the body stopped (less the block being read when the connection dropped)
        first = int(gets[1].headers["range"][6:-1])
        assert len(data) // 2 - images.BLOCK <= first <= len(data) // 2
        second = int(gets[2].headers["range"][6:-1])
        assert first < second <= first + (len(data) - first) // 2
        assert res.bytes_received <= len(data) + 2 * images.BLOCK
    finally:
        proxy.stop()


@pytest.mark.gcs
def test_images_get_resumes_a_part_left_by_an_earlier_run(
    tmp_path: Path, published: tuple[FakeGcs, list[Path]]
) -> None:
    server, builds = published
    bd = builds[0]
    data = (bd / f"{bd.name}.ova").read_bytes()
    (tmp_path / f"{bd.name}.ova.part").write_bytes(data[:1_000_000])
    (tmp_path / f"{bd.name}.ova.part.sha256").write_text(hashlib.sha256(data).hexdigest())
    url = images.resolve_url(f"{bd.name}.ova", server.url, BUCKET)
    res = images.download(url, tmp_path, retry=FAST)
    assert res.action == "resumed"
    assert res.bytes_received == len(data) - 1_000_000
    assert res.path.read_bytes() == data


@pytest.mark.gcs
def test_images_get_refuses_a_mismatching_or_missing_checksum(
    tmp_path: Path, published: tuple[FakeGcs, list[Path]]
) -> None:
    server, builds = published
    bd = builds[1]
    client = gcs.Client(gcs.credentials(None, server.url), server.url)
    base = f"ci/v1.31.0-beta.2/{bd.name}"
    client.put_small(BUCKET, f"{base}.qcow2.sha256", b"ab" * 32)  # a lying sidecar
    url = images.resolve_url(f"{base}.qcow2", server.url, BUCKET)
    with pytest.raises(UploadError, match="its .sha256 says abab"):
        images.download(url, tmp_path, retry=FAST)
    assert list(tmp_path.iterdir()) == []  # nothing half-written kept
    client.delete(BUCKET, f"{base}.qcow2.sha256")
    with pytest.raises(UploadError, match="no published checksum"):
        images.download(url, tmp_path, retry=FAST)
    r = kiln("images", "get", url, "-o", str(tmp_path))
    assert r.returncode == 1 and "no published checksum" in r.stderr
