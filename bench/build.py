#!/usr/bin/env python3
"""Benchmark a build: wall time per stage for a cold build (empty base cache) and for a build with the base
cached, their ratio, and the OVA's size next to the bytes used inside the guest's root file system.

    .venv/bin/python bench/build.py [--target debian-12] [--accelerator tcg] [--no-verify] [--json FILE]

Kubernetes binaries come from the stand-in TEST FIXTURE (tests/fixtures/k8s_standin.py) over local HTTP, as
with `make build-qemu-debian-12 K8S_STANDIN=1`. Both builds go to a temp dir (removed at the end, unless
--keep); the cold build uses a fresh, empty cache_dir, the second one the cache the first one filled.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))

import k8s_standin  # noqa: E402  (test fixture, found through the path above)

from kiln import build, config  # noqa: E402
from kiln.builddir import BuildDir  # noqa: E402


def guest_fs_used_bytes(qcow2: Path, work: Path) -> int:
    """Bytes in use in the image's root (last) partition, read with dumpe2fs from a sparse raw copy."""
    raw = work / "bench-image.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(qcow2), str(raw)], check=True)
    try:
        table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True,
                                          check=True).stdout)["partitiontable"]  # fmt: skip
        root = table["partitions"][-1]
        fs = f"{raw}?offset={root['start'] * table.get('sectorsize', 512)}"
        text = subprocess.run(["dumpe2fs", "-h", fs], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        blocks = int(fields["Block count"])
        free = int(fields["Free blocks"])
        size = int(fields["Block size"])
        return (blocks - free) * size
    finally:
        raw.unlink(missing_ok=True)


def one_build(
    target: str, overrides: dict[str, str], var_file: Path, verify: bool
) -> tuple[build.BuildResult, float]:
    cfg = config.load(target, var_files=[str(var_file)], overrides=overrides)
    started = time.monotonic()
    result = build.run_build(cfg, say=lambda line: print(f"  | {line}", flush=True), verify=verify)
    return result, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="debian-12")
    parser.add_argument("--accelerator", default="tcg")
    parser.add_argument("--no-verify", action="store_true", help="skip the verify stage in both builds")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with both builds")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    server = k8s_standin.start()
    port = server.server_address[1]
    semver = str(config.load(args.target).get("kubernetes_semver"))
    var_file = work / "standin.json"
    var_file.write_text(json.dumps({
        "kubernetes_source_type": "http",
        "kubernetes_http_source": f"http://{k8s_standin.GUEST_HOST}:{port}",
        "kubernetes_http_sha256": k8s_standin.sums(semver),
    }))  # fmt: skip
    runs: dict[str, dict[str, object]] = {}
    try:
        for label in ("cold", "cached"):
            overrides = {
                "output_dir": str(work / f"out-{label}"),
                "cache_dir": str(work / "cache"),
                "accelerator": args.accelerator,
            }
            print(f"== {label} build ({args.target}, base cache {'empty' if label == 'cold' else 'filled'})")
            result, wall = one_build(args.target, overrides, var_file, verify=not args.no_verify)
            runs[label] = {"wall": round(wall, 1), "stages": result.stages, "base_cached": result.base_cached,
                           "path": str(result.path)}  # fmt: skip
        final = BuildDir.open(runs["cached"]["path"])  # type: ignore[arg-type]
        ova_size = final.ova.stat().st_size
        qcow2_size = final.qcow2.stat().st_size
        used = guest_fs_used_bytes(final.qcow2, work)
    finally:
        server.shutdown()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    cold, cached = runs["cold"], runs["cached"]
    print()
    print(f"{'stage':<10} {'cold s':>8} {'cached s':>9}")
    stages = list(dict.fromkeys([*cold["stages"], *cached["stages"]]))  # type: ignore[list-item]
    for stage in stages:
        a = cold["stages"].get(stage, 0.0)  # type: ignore[attr-defined]
        b = cached["stages"].get(stage, 0.0)  # type: ignore[attr-defined]
        print(f"{stage:<10} {a:>8.1f} {b:>9.1f}")
    ratio = float(cold["wall"]) / float(cached["wall"])  # type: ignore[arg-type]
    print(f"{'total':<10} {cold['wall']:>8} {cached['wall']:>9}   cold/cached = {ratio:.2f}")
    print(f"base reused in the second build: {cached['base_cached']}")
    print(f"OVA {ova_size / 1e6:.0f} MB, qcow2 {qcow2_size / 1e6:.0f} MB, "
          f"guest root fs used {used / 1e6:.0f} MB (OVA/used = {ova_size / used:.2f})")  # fmt: skip
    if args.json:
        figures = {"cold": cold, "cached": cached, "ratio": ratio, "ova_bytes": ova_size,
                   "qcow2_bytes": qcow2_size, "guest_used_bytes": used}  # fmt: skip
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
