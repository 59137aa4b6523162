"""The offline stand-in server (hack/k8s_standin.py): what it serves is what its var file promises.

The containerd and runc it serves are the host Debian's real binaries (apt-get download), in the layout of
the upstream release downloads kiln's containerd role unpacks; this checks that layout, that they run, and
that every sum in the var file is the sum of what the server sends.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "hack"))

import k8s_standin  # noqa: E402  (the stand-in server in hack/, found through the path above)

from kiln import config  # noqa: E402


@pytest.fixture(scope="module")
def served() -> tuple[str, dict]:
    server = k8s_standin.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield url, k8s_standin.var_values(["v1.36.1", "v1.35.7"], url)
    finally:
        server.shutdown()


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return resp.read()


def test_var_file_selects_every_http_source_and_kiln_accepts_it(served, tmp_path: Path) -> None:
    url, values = served
    var_file = tmp_path / "standin.json"
    var_file.write_text(json.dumps(values))
    cfg = config.load("debian-12", var_files=[var_file], repo_root=REPO)
    assert cfg.get("kubernetes_semver") == "v1.36.1"
    assert (cfg.get("containerd_source_type"), cfg.get("kubernetes_source_type")) == ("http", "http")
    assert cfg.get("crictl_version") == "1.36.0"
    assert set(cfg.get("kubernetes_http_sha256")) == {"kubelet", "kubeadm", "kubectl"}  # the built version's


def test_containerd_tarball_has_the_release_layout_and_runs(served, tmp_path: Path) -> None:
    url, values = served
    body = get(values["containerd_url"])
    assert hashlib.sha256(body).hexdigest() == values["containerd_sha256"]
    name = values["containerd_url"].rsplit("/", 1)[1]
    assert name == f"containerd-{values['containerd_version']}-linux-amd64.tar.gz"
    assert get(values["containerd_url"] + ".sha256sum").decode() == f"{values['containerd_sha256']}  {name}\n"
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert sorted(tar.getnames()) == ["bin/containerd", "bin/containerd-shim-runc-v2", "bin/ctr"]
        tar.extractall(tmp_path, filter="data")
    out = subprocess.run([str(tmp_path / "bin" / "containerd"), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and f" {values['containerd_version']}" in out.stdout, out.stdout
    again = k8s_standin.var_values(["v1.36.1"], url)
    assert again["containerd_sha256"] == values["containerd_sha256"], "the tarball is made byte-identical"


def test_runc_and_crictl(served, tmp_path: Path) -> None:
    url, values = served
    runc = get(values["runc_url"])
    assert hashlib.sha256(runc).hexdigest() == values["runc_sha256"]
    sums = get(values["runc_url"].rsplit("/", 1)[0] + "/runc.sha256sum").decode()
    assert sums == f"{values['runc_sha256']}  runc.amd64\n"
    (tmp_path / "runc").write_bytes(runc)
    (tmp_path / "runc").chmod(0o755)
    out = subprocess.run([str(tmp_path / "runc"), "--version"], capture_output=True, text=True)
    assert out.stdout.startswith(f"runc version {values['runc_version']}"), out.stdout
    crictl = get(values["crictl_url"])
    assert hashlib.sha256(crictl).hexdigest() == values["crictl_sha256"]
    with tarfile.open(fileobj=io.BytesIO(crictl)) as tar:
        assert tar.getnames() == ["crictl"]
        tar.extractall(tmp_path, filter="data")
    out = subprocess.run([str(tmp_path / "crictl"), "--version"], capture_output=True, text=True)
    assert out.stdout == "crictl version v1.36.0\n"


def test_unknown_paths_and_other_versions_are_404(served) -> None:
    url, values = served
    for path in ("/containerd/v9.9.9/containerd-9.9.9-linux-amd64.tar.gz", "/runc/v0.0.1/runc.amd64", "/x"):
        with pytest.raises(urllib.error.HTTPError) as exc:
            get(url + path)
        assert exc.value.code == 404


def test_upstream_version_of_debian_versions() -> None:
    assert k8s_standin.upstream_version("1.6.20~ds1-1+deb12u3") == "1.6.20"
    assert k8s_standin.upstream_version("1.1.5+ds1-1+deb12u1") == "1.1.5"
    assert k8s_standin.upstream_version("1:2.0.0-1") == "2.0.0"
