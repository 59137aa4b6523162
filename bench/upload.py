#!/usr/bin/env python3
"""Measure kiln's uploader against the tools it replaces, all in one run, and print ratios.

1. hash throughput: kiln's one-pass SHA-256 + CRC32C vs `openssl dgst -sha256` (SHA-256 alone), warm cache;
2. an unchanged re-run of `kiln upload`: requests, payload bytes sent, wall time (vs the first upload);
3. a changed upload: `kiln upload` vs `gsutil cp` of the same file to the same fake-gcs-server.

    .venv/bin/python bench/upload.py [--size-mib 512]

Starts its own fake-gcs-server (tests/gcs_servers.py). gsutil is optional: without it step 3 prints kiln
alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))

from gcs_servers import BUCKET, FakeGcs, make_build_dir  # noqa: E402
from kiln.publish import upload  # noqa: E402


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=3600)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"bench: {argv[0]} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return dt, r


def kiln_upload(endpoint: str, bd: Path) -> tuple[float, dict]:
    argv = [
        sys.executable,
        "-m",
        "kiln",
        "upload",
        str(bd),
        "--endpoint",
        endpoint,
        "--bucket",
        BUCKET,
        "--json",
    ]
    env = {k: v for k, v in os.environ.items() if k != "KEY_FILE"}
    dt, r = timed(argv, env)
    return dt, json.loads(r.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=512, help="size of the synthetic OVA (default: 512)")
    args = ap.parse_args()
    size = args.size_mib * 1024 * 1024
    mib = size / 1024 / 1024

    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        root = Path(tmp)
        bd = make_build_dir(root / "a", version="v1.30.1", size=size)
        ova = bd / f"{bd.name}.ova"
        print(f"bench: {mib:.0f} MiB synthetic OVA, {os.cpu_count()} CPUs")

        # 1. hashing, warm cache (one untimed read first)
        upload.hash_file(ova)
        best_kiln = min(_time(lambda: upload.hash_file(ova)) for _ in range(3))
        best_ossl = min(timed(["openssl", "dgst", "-sha256", str(ova)])[0] for _ in range(3))
        print(
            f"hash: kiln sha256+crc32c {mib / best_kiln:7.0f} MiB/s | openssl dgst -sha256 "
            f"{mib / best_ossl:7.0f} MiB/s | kiln/openssl throughput ratio {best_ossl / best_kiln:.2f}"
        )

        server = FakeGcs()
        try:
            # 2. first upload, then an unchanged re-run
            t_first, first = kiln_upload(server.url, bd)
            t_again, again = kiln_upload(server.url, bd)
            assert [r["action"] for r in again["results"]] == ["skipped"], again
            print(
                f"first upload: {t_first:6.2f} s, {first['requests']} requests, {first['bytes_sent']} B sent"
            )
            print(
                f"unchanged re-run: {t_again:6.2f} s, {again['requests']} requests, "
                f"{again['bytes_sent']} B sent | re-run/first time ratio {t_again / t_first:.3f}"
            )

            # 3. a changed image (ci, so it may be replaced) vs gsutil cp of the same bytes
            ci = make_build_dir(root / "ci", version="v1.31.0-beta.0", size=size, seed=1)
            kiln_upload(server.url, ci)
            changed = make_build_dir(root / "ci2", version="v1.31.0-beta.0", size=size, seed=2)
            t_changed, out = kiln_upload(server.url, changed)
            assert [r["action"] for r in out["results"]] == ["uploaded"], out
            line = f"changed upload: kiln {t_changed:6.2f} s ({mib / t_changed:.0f} MiB/s, hash + upload)"
            gsutil = shutil.which("gsutil")
            if gsutil is None:
                print(line + " | gsutil not installed: no comparison")
            else:
                t_gsutil = _gsutil_cp(gsutil, server, root, changed / f"{changed.name}.ova")
                print(f"{line} | gsutil cp {t_gsutil:6.2f} s | kiln/gsutil time {t_changed / t_gsutil:.2f}")
        finally:
            server.stop()
    return 0


def _time(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _gsutil_cp(gsutil: str, server: FakeGcs, root: Path, src: Path) -> float:
    boto = root / "boto"
    boto.write_text(
        "[Credentials]\n"
        f"gs_json_host = 127.0.0.1\ngs_json_port = {server.https_port}\n"
        f"gs_host = 127.0.0.1\ngs_port = {server.https_port}\n"
        "[Boto]\nhttps_validate_certificates = False\n"
        "[GSUtil]\nprefer_api = json\ndefault_project_id = kiln-bench\n"
    )
    env = dict(
        os.environ,
        BOTO_CONFIG=str(boto),
        CLOUDSDK_CONFIG=str(root / "gcloud"),
        CLOUDSDK_CORE_PASS_CREDENTIALS_TO_GSUTIL="false",
        CLOUDSDK_CORE_DISABLE_PROMPTS="1",
    )
    dt, _ = timed([gsutil, "-q", "cp", str(src), f"gs://{BUCKET}/gsutil/{src.name}"], env)
    return dt


if __name__ == "__main__":
    sys.exit(main())
