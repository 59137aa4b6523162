"""Same inputs, same bytes, from nothing: debian-12 built twice from the same commit, each from an empty
cache of its own (the base disk from mmdebstrap, the os and kubernetes stages in the chroot, finalize), and
`kiln diff` finds no difference; the squashfs, the root file manifest, the package list, the SBOM and the
qcow2 are byte-identical. Two cold builds take about 20 minutes under TCG: `make test-repro-cold` runs it,
`make test` does not (test_repro_vm.py shows the same from the suite's cached stages, in CI)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import SITE_MAKE_VAR
from kiln.vm.qemu import free_port

REPO = Path(__file__).resolve().parents[1]
NAME = "debian-12+kube-v1.36.1"
pytestmark = [
    pytest.mark.vm,
    pytest.mark.repro_cold,
    pytest.mark.skipif(os.geteuid() != 0, reason="the chroot runner needs root"),
]
SAME = (f"{NAME}.qcow2", f"{NAME}.files.jsonl", f"{NAME}.packages", f"{NAME}.spdx.json",
        "squashfs/filesystem.squashfs", "squashfs/filesystem.manifest")  # fmt: skip


def _cold_build(root: Path, standin_port: int) -> Path:
    accel = os.environ.get("KILN_TEST_ACCELERATOR", "tcg")
    flags = (f"-var output_dir={root / 'out'} -var cache_dir={root / 'cache'} -var accelerator={accel} "
             "--no-verify")  # fmt: skip
    done = subprocess.run(
        ["make", "--no-print-directory", "build-qemu-debian-12", "K8S_STANDIN=1", SITE_MAKE_VAR,
         f"PACKER_FLAGS={flags}", "FORMATS=qcow2 squashfs", f"K8S_STANDIN_PORT={standin_port}"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "no cached base" in (root / "out" / NAME / "build.log").read_text()  # it really started cold
    return root / "out" / NAME


def test_two_builds_from_empty_caches_are_the_same_bytes(tmp_path: Path) -> None:
    # the stand-in's URLs are inputs (the SBOM records where each binary came from): one port for both
    port = free_port()
    a, b = _cold_build(tmp_path / "a", port), _cold_build(tmp_path / "b", port)
    diff = subprocess.run(
        [str(REPO / ".venv/bin/kiln"), "diff", str(a), str(b), "--json"], capture_output=True, text=True
    )
    result = json.loads(diff.stdout)
    files = result["files"]
    print("\npackages:", result["packages"], "\nfiles added:", files.get("added"), "\nremoved:",
          files.get("removed"), "\nchanged:", json.dumps(files.get("changed"), indent=1)[:6000],
          "\nartifacts:", {k: v["equal"] for k, v in result["artifacts"].items()})  # fmt: skip
    differing = [rel for rel in SAME if (a / rel).read_bytes() != (b / rel).read_bytes()]
    assert diff.returncode == 0 and not differing, (differing, diff.stdout[-3000:])
