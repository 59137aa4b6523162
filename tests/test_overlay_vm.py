"""Base + overlay for real: debian-12 built for two Kubernetes versions in one run with FORMATS including
overlay (the chroot runner, the stand-in Kubernetes binaries over local HTTP), then each version's live ISO
booted under QEMU (base + overlay stacked by live-boot) and checked by `kiln verify --format iso`, whose
goss specs include `kubelet --version` against that build's kubernetes_semver. One version's netboot set
boots too, its two images loaded by iPXE from `kiln serve`.

Also: both builds share one base file (the os stage's, written once), and each overlay is at most 15 % of
the base.

`make test-overlay` runs these (about 25 minutes here); `make test` does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SITE_VAR_FILES
from kiln.artifacts import layers
from kiln.core.builddir import BuildDir
from kiln_runtime import RUNTIME

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.vm,
    pytest.mark.overlay,
    pytest.mark.skipif(os.geteuid() != 0, reason="the chroot runner and the live formats need root"),
]
ACCEL = os.environ.get("KILN_TEST_ACCELERATOR", "tcg")
VERSIONS = ("v1.36.1", "v1.35.4")
FORMATS = "qcow2 ova overlay iso netboot"


def _kiln(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kiln", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PACKER_VAR_FILES": ""}, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuildDir]:
    out = tmp_path_factory.mktemp("overlay-out")
    started = time.monotonic()
    argv = [sys.executable, str(REPO / "hack/k8s_standin.py"), "run",
            *[a for v in VERSIONS for a in ("--version", v)], "--",
            sys.executable, "-m", "kiln", "--progress", "plain", "build", "debian-12",
            "--var-file", "{varfile}", *[a for f in SITE_VAR_FILES for a in ("--var-file", str(f))],
            *[a for v in VERSIONS for a in ("--kubernetes-version", v)],
            "--var", f"output_dir={out}", "--var", f"accelerator={ACCEL}",
            "--var", f"formats={FORMATS}"]  # fmt: skip
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PACKER_VAR_FILES": ""}
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    print(f"\ntwo versions with overlays built in {time.monotonic() - started:.0f}s")
    dirs = {}
    for path in out.iterdir():
        if path.is_dir() and not path.name.startswith(".") and path.name != "logs":
            bd = BuildDir.open(path)
            dirs[bd.kubernetes_semver] = bd
    assert sorted(dirs) == sorted(VERSIONS), dirs
    return dirs


def test_two_versions_share_one_base_and_each_overlay_is_small(builds: dict[str, BuildDir]) -> None:
    infos = {}
    for version, bd in builds.items():
        ov = bd.path / layers.DIR
        info = json.loads((ov / layers.INFO).read_text())
        infos[version] = info
        assert (ov / layers.MODULE).read_text() == "base.squashfs\noverlay.squashfs\n"
        assert info["ratio"] <= 0.15, info
        log = (bd.path / "build.log").read_text()
        assert "checked stacked" in log, log[-3000:]
        sizes = {k: info[k]["size"] / 1e6 for k in ("overlay", "base")}
        print(f"\n{bd.name}: overlay {sizes['overlay']:.1f} MB on a {sizes['base']:.1f} MB base "
              f"({100 * info['ratio']:.1f} %), {info['changes']}")  # fmt: skip
    bases = {(bd.path / layers.DIR / layers.BASE).stat().st_ino for bd in builds.values()}
    assert len(bases) == 1, "one base file, linked into both build dirs"
    assert len({i["base"]["sha256"] for i in infos.values()}) == 1
    assert len({i["overlay"]["sha256"] for i in infos.values()}) == 2
    first = (builds[VERSIONS[0]].path / "build.log").read_text()
    second = (builds[VERSIONS[1]].path / "build.log").read_text()
    assert "base squashfs made from the os stage's tree" in first + second
    assert "is made already" in first + second, "the second version reuses the base"


@pytest.mark.parametrize("version", VERSIONS)
def test_each_versions_iso_boots_the_stack_with_its_own_kubelet(
    builds: dict[str, BuildDir], version: str
) -> None:
    bd = builds[version]
    started = time.monotonic()
    r = _kiln("verify", str(bd.path), "--format", "iso", "--accelerator", ACCEL)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    report = json.loads((bd.path / "goss" / "iso-bios" / "report.json").read_text())
    kubelet = [x for x in report["results"] if x["resource-id"] == "kubelet --version"]
    assert kubelet and all(x["successful"] for x in kubelet), kubelet
    stdout = [x for x in kubelet if x["property"] == "stdout"]
    assert stdout and version.lstrip("v") in json.dumps(stdout), stdout
    print(f"\n{bd.name}: the stacked ISO booted and passed verify in {time.monotonic() - started:.0f}s")


def test_the_layered_netboot_set_boots_through_ipxe(builds: dict[str, BuildDir]) -> None:
    bd = builds[VERSIONS[1]]
    net = bd.path / "netboot"
    script = (net / "boot.ipxe").read_text()
    assert "live-media=/kiln-live" in script and "kiln-live/live/overlay.squashfs" in script, script
    started = time.monotonic()
    r = _kiln("verify", str(bd.path), "--format", "netboot", "--accelerator", ACCEL)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    print(
        f"\n{bd.name}: the layered netboot set booted and passed verify in {time.monotonic() - started:.0f}s"
    )


@pytest.mark.gcs
def test_release_publishes_the_base_once_and_says_which_overlay_goes_on_it(
    builds: dict[str, BuildDir], tmp_path: Path
) -> None:
    from gcs_servers import BUCKET, FakeGcs, object_names, read_object
    from kiln import config
    from kiln.build import pipeline as build
    from kiln.publish import gcs, release

    # the var file the build had: both versions' stand-in sums; kubernetes_semver picks one, as
    # --kubernetes-version did
    argv = [
        sys.executable,
        str(REPO / "hack/k8s_standin.py"),
        "vars",
        *[a for v in VERSIONS for a in ("--version", v)],
    ]
    (tmp_path / "standin.json").write_text(
        subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    )
    configs = []
    for version, bd in builds.items():
        overrides = {"output_dir": str(bd.path.parent), "formats": FORMATS, "accelerator": ACCEL,
                     "kubernetes_semver": version}  # fmt: skip
        configs.append(config.load("debian-12", var_files=[*SITE_VAR_FILES, tmp_path / "standin.json"],
                                   overrides=overrides, repo_root=REPO))  # fmt: skip
        own = build.input_hash(configs[-1], RUNTIME)
        assert own == bd.custom_data["input_hash"], "the build's own inputs"
    server = FakeGcs()
    try:
        c = gcs.Client(gcs.credentials(None, server.url), server.url)
        entries = release.run(configs, c, BUCKET, runtime=RUNTIME)
        assert [e.status for e in entries] == ["reused", "reused"], release.summary(entries)  # verified
        bases = object_names(server.url, BUCKET, "bases/")
        assert [n for n in bases if n.endswith("base.squashfs")] and len(
            [n for n in bases if n.endswith("base.squashfs")]
        ) == 1, bases
        base_size = (next(iter(builds.values())).path / layers.DIR / layers.BASE).stat().st_size
        index = json.loads(read_object(server.url, BUCKET, "index.json") or b"{}")
        overlays = {i["kubernetes_semver"]: i["overlay"] for i in index["images"]}
        assert sorted(overlays) == sorted(VERSIONS), index
        assert len({o["base"]["url"] for o in overlays.values()}) == 1
        for version, o in overlays.items():
            info = json.loads((builds[version].path / layers.DIR / layers.INFO).read_text())
            assert o["sha256"] == info["overlay"]["sha256"] and o["base"]["sha256"] == info["base"]["sha256"]
            assert o["base"]["url"].endswith(f"/bases/{info['base']['sha256']}/base.squashfs")
        sent = sum(e.bytes_sent for e in entries)
        print(f"\nrelease of two overlay builds: {sent / 1e6:.0f} MB sent; the base "
              f"({base_size / 1e6:.0f} MB) once")  # fmt: skip
        assert min(e.bytes_sent for e in entries) < max(e.bytes_sent for e in entries) - base_size // 2
    finally:
        server.stop()
