#!/usr/bin/env python3
"""Benchmark the stage chain, in one run, against cold builds measured in the same run.

With the chroot runner (provisioner chroot):
    1. cold            an empty cache_dir (base, os, kubernetes, finalize, verify)
    2. unchanged       the same inputs again: "up to date", nothing boots; in-process, then through
                       `make build-qemu-TARGET` as an operator runs it (goal: <= 2 s of make)
    3. kubernetes      another kubernetes_semver: rebuilds from `kubernetes` (goal: <= 0.25 x cold)
    4. extra_packages  another extra_packages: rebuilds from `os`
    5. three versions  three more Kubernetes versions of one OS, sharing the os stage
Then, as the baseline:
    6. vm cold         the VM runner (provisioner vm) from another empty cache_dir

Each scenario prints seconds, the ratio to the chroot cold build and to the VM cold build. Kubernetes
binaries come from the stand-in TEST FIXTURE (hack/k8s_standin.py) over local HTTP, as with K8S_STANDIN=1.

    .venv/bin/python bench/build.py [--target debian-12] [--accelerator tcg] [--no-verify] [--no-vm]
                                    [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "hack"))

import k8s_standin  # noqa: E402  (the stand-in server in hack/, found through the path above)

from kiln import config
from kiln.build import pipeline as build  # noqa: E402
from kiln.core import proc, progress

RUNTIME = config.default_runtime()  # the one runtime, as the CLI makes it


VERSIONS = ("v1.36.1", "v1.35.7", "v1.34.10", "v1.33.13", "v1.32.13")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="debian-12")
    parser.add_argument("--accelerator", default="tcg")
    parser.add_argument("--no-verify", action="store_true", help="skip the verify step in every build")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument(
        "--no-vm", action="store_true", help="skip the VM runner's cold build (about 30 min of TCG)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    proc.install_sigterm_handler()  # a stopped bench cleans up as a stopped build: children, mounts, work dir

    work = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    try:
        figures = _scenarios(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    cold, vm_cold = figures["cold"], figures.get("vm_cold")
    print(f"\n{'scenario':<22} {'seconds':>9} {'x cold':>8} {'x vm cold':>10}")
    for name, seconds in figures.items():
        vs_vm = f"{seconds / vm_cold:>10.3f}" if vm_cold else f"{'-':>10}"
        print(f"{name:<22} {seconds:>9.1f} {seconds / cold:>8.3f} {vs_vm}")
    if args.json:
        rounded = {k: (None if v != v else round(v, 1)) for k, v in figures.items()}  # NaN (failed): null
        args.json.write_text(json.dumps(rounded, indent=2) + "\n")
    return 0


def _scenarios(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """Every scenario, in one work dir; the figures by scenario name."""
    server = k8s_standin.start()
    url = f"http://{k8s_standin.GUEST_HOST}:{server.server_address[1]}"
    var_file = work / "standin.json"
    var_file.write_text(json.dumps(k8s_standin.var_values(list(VERSIONS), url)))
    monitor = progress.Terminal()

    def settings(provisioner: str, overrides: dict[str, str]) -> dict[str, str]:
        """One runner's output and cache dirs in the work dir, the accelerator, and the scenario's values."""
        return {
            "output_dir": str(work / f"out-{provisioner}"),
            "cache_dir": str(work / f"cache-{provisioner}"),
            "accelerator": args.accelerator,
            "provisioner": provisioner,
            **overrides,
        }

    def run(label: str, provisioner: str = "chroot", **overrides: str) -> float:
        cfg = config.load(args.target, var_files=[str(var_file)], overrides=settings(provisioner, overrides))
        print(f"--- {label}", flush=True)
        started = time.monotonic()
        result = build.run_build(cfg, monitor=monitor, verify=not args.no_verify, runtime=RUNTIME)
        took = time.monotonic() - started
        print(f"--- {label}: {took:.1f}s (up to date: {result.up_to_date}; reused: {sorted(result.reused)})")
        return took

    def run_make(provisioner: str = "chroot", **overrides: str) -> float:
        """The unchanged rebuild as an operator runs it: `make build-qemu-TARGET`, wall time of make
        (its deps check, kiln's start-up and the up-to-date check)."""
        flags = settings(provisioner, overrides)
        argv = ["make", "--no-print-directory", f"build-qemu-{args.target}", f"PACKER_VAR_FILES={var_file}",
                "PACKER_FLAGS=" + " ".join(f"-var {k}={v}" for k, v in flags.items())]  # fmt: skip
        if args.no_verify:
            argv[-1] += " --no-verify"
        print(f"--- unchanged rebuild through make: {' '.join(argv[:3])} ...", flush=True)
        started = time.monotonic()
        # proc.run: a stopped bench stops make's whole process group (kiln with it), not make alone
        done = proc.run(argv, cwd=REPO, check=False, runtime=RUNTIME)
        took = time.monotonic() - started
        if done.returncode != 0:  # reported, and the other scenarios still run
            print(f"make failed ({done.returncode}):\n{done.output[-4000:]}", flush=True)
            return float("nan")
        print(f"--- unchanged rebuild through make: {took:.1f}s ({done.output.strip().splitlines()[-1:]})")
        return took

    figures: dict[str, float] = {}
    try:
        figures["cold"] = run("cold build", kubernetes_semver=VERSIONS[0])
        figures["unchanged"] = run("unchanged rebuild", kubernetes_semver=VERSIONS[0])
        figures["unchanged_make"] = run_make(kubernetes_semver=VERSIONS[0])
        figures["kubernetes_semver"] = run("kubernetes_semver change", kubernetes_semver=VERSIONS[1])
        figures["extra_packages"] = run(
            "extra_packages change", kubernetes_semver=VERSIONS[0], extra_packages="jq"
        )
        started = time.monotonic()
        for v in VERSIONS[2:5]:
            run(f"version {v}", kubernetes_semver=v, extra_packages="jq")
        figures["three_versions"] = time.monotonic() - started
        if not args.no_vm:
            figures["vm_cold"] = run("cold build, VM runner", "vm", kubernetes_semver=VERSIONS[0])
    finally:
        server.shutdown()
    return figures


if __name__ == "__main__":
    sys.exit(main())
