"""debian-12-cloudimg for real, under TCG, from a cloud image served over local HTTP: the bootstrap base disk
kiln makes for debian-12 (a generic cloud image in all but name: GPT, GRUB for BIOS and UEFI, cloud-init,
growpart, an SSH server without host keys), published with a SHA512SUMS file as Debian publishes its own.

- The image is downloaded once, checked against the SHA512SUMS entry and cached by digest; the os and
  kubernetes stages boot it under overlays with the VM runner (Packer, the per-build key through a cidata
  seed), then finalize converts, makes the OVA and verifies (goss final phase and hygiene) in one boot.
- The finished image boots on UEFI too (OVMF), where the final checks pass again.
- A second plan of the same inputs finds both stages cached.
- A disk without cloud-init never takes the build's key: the build says so within ssh_timeout, names the
  serial log, and leaves nothing in the output dir or the stage cache.

`make test-cloudimg` runs these (about 25 minutes here); `make test` does not."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SITE_MAKE_VAR, SITE_VAR_FILES
from kiln import config
from kiln.build import bootstrap
from kiln.build import pipeline as build
from kiln.core.builddir import BuildDir
from kiln_runtime import RUNTIME

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.vm,
    pytest.mark.cloudimg,
    pytest.mark.skipif(os.geteuid() != 0, reason="the served image is kiln's bootstrap base, built as root"),
]
IMAGE = "debian-12-genericcloud-amd64.qcow2"
ACCEL = os.environ.get("KILN_TEST_ACCELERATOR", "tcg")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def cloud_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(image URL, checksum file URL) of the debian-12 bootstrap base, served with a SHA512SUMS file."""
    cfg = config.load("debian-12", var_files=SITE_VAR_FILES, repo_root=REPO)
    spec = build.base_spec(cfg)
    assert spec is not None
    base = bootstrap.ensure_base(spec, cfg.path("cache_dir"), REPO, runtime=RUNTIME)
    www = tmp_path_factory.mktemp("cloud-images")
    (www / IMAGE).symlink_to(base.disk)
    sha = hashlib.sha512()
    with base.disk.open("rb") as f:
        while block := f.read(1 << 22):
            sha.update(block)
    (www / "SHA512SUMS").write_text(f"{sha.hexdigest()}  {IMAGE}\n")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield f"{url}/{IMAGE}", f"{url}/SHA512SUMS"
    server.shutdown()
    server.server_close()


def _make(
    out: Path, image: str, sums: str, *extra: str, formats: str = "qcow2 ova"
) -> subprocess.CompletedProcess:
    flags = (f"-var output_dir={out} -var accelerator={ACCEL} -var cloudimg_url={image} "
             f"-var cloudimg_checksum=file:{sums} " + " ".join(extra))  # fmt: skip
    return subprocess.run(
        ["make", "--no-print-directory", "build-qemu-debian-12-cloudimg", "K8S_STANDIN=1", SITE_MAKE_VAR,
         f"PACKER_FLAGS={flags}", f"FORMATS={formats}"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip


def test_the_cloud_image_builds_verifies_and_boots_on_bios_and_uefi(
    cloud_image: tuple[str, str], tmp_path: Path
) -> None:
    image, sums = cloud_image
    out = tmp_path / "out"
    done = _make(out, image, sums)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    (path,) = [
        p for p in out.iterdir() if p.is_dir() and p.name not in ("logs",) and not p.name.startswith(".")
    ]
    bd = BuildDir.open(path)
    log = (path / "build.log").read_text()
    assert "base: downloading the cloud image" in log and "sha512 ok" in log, log[:3000]
    for stage in ("os", "kubernetes"):
        assert f"stage {stage}: ok" in log
    assert "verify:" in log and "checks passed" in log
    assert bd.qcow2.is_file() and bd.ova.is_file()
    packages = (path / f"{path.name}.packages").read_text()
    for package in (
        "cloud-init",
        "conntrack",
        "containernetworking-plugins",
    ):  # containerd: a release tarball
        assert f"\n{package}\t" in "\n" + packages, package
    print(f"\n{path.name}: built from the served cloud image; stages:",
          [line for line in log.splitlines() if "stage " in line and ": ok in" in line])  # fmt: skip

    # UEFI: the same image, booted with OVMF, passes the final checks again
    efi = subprocess.run(
        [sys.executable, "-m", "kiln", "verify", str(path), "--firmware", "efi"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert efi.returncode == 0, efi.stdout[-4000:] + efi.stderr[-3000:]

    # the same inputs again: both stages are in the cache (the image's digest names the base)
    standin = subprocess.run(
        [sys.executable, str(REPO / "hack/k8s_standin.py"), "vars", "--version", bd.kubernetes_semver],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (tmp_path / "standin.json").write_text(standin)
    plan = subprocess.run(
        [sys.executable, "-m", "kiln", "stages", "debian-12-cloudimg", "--json",
         "--var", f"cloudimg_url={image}", "--var", f"cloudimg_checksum=file:{sums}",
         "--var", "formats=qcow2 ova",
         *[a for f in [*SITE_VAR_FILES, tmp_path / "standin.json"] for a in ("--var-file", str(f))]],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    rows = {row["stage"]: row for row in json.loads(plan.stdout)["stages"]}
    assert rows["base"]["runner"] == "download", rows
    assert [rows[s]["state"] for s in ("base", "os", "kubernetes")] == ["cached"] * 3, rows


def test_a_disk_without_cloud_init_is_named_within_ssh_timeout(tmp_path: Path) -> None:
    """A raw disk with a partition table and nothing to boot: it is a disk, so it is taken; it never
    answers SSH, and the build says so when ssh_timeout ends, naming the serial log."""
    disk = tmp_path / "blank.raw"
    with disk.open("wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["sfdisk", "--quiet", str(disk)], input="label: gpt\nstart=2048, size=20480\n", text=True,
                   check=True)  # fmt: skip
    digest = hashlib.sha256(disk.read_bytes()).hexdigest()
    out, cache = tmp_path / "out", tmp_path / "cache"
    done = subprocess.run(
        ["make", "--no-print-directory", "build-qemu-debian-12-cloudimg", "K8S_STANDIN=1", SITE_MAKE_VAR,
         f"PACKER_FLAGS=-var output_dir={out} -var cache_dir={cache} -var accelerator={ACCEL} "
         f"-var cloudimg_url={disk} -var cloudimg_checksum=sha256:{digest} -var ssh_timeout=90s",
         "FORMATS=qcow2"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    said = done.stdout + done.stderr
    # make's own exit is 2 for any failed recipe; the recipe's (kiln's) exit code is in make's message
    assert done.returncode == 2 and "build-qemu-debian-12-cloudimg] Error 1" in said, said[-3000:]
    assert "never answered SSH within ssh_timeout (90s)" in said and "without cloud-init" in said, said[
        -3000:
    ]
    assert ".serial.log" in said, said[-2000:]
    assert [p.name for p in out.iterdir()] == ["logs"]
    assert not (cache / "stages").exists() or not [
        p for p in (cache / "stages").iterdir() if not p.name.startswith(".")
    ]
