"""The real built image (session fixture `built_image`) published to and fetched back from a real server."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gcs_servers import BUCKET, FakeGcs, get_object


def kiln(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("KEY_FILE", "KILN_GCS_BUCKET")}
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args], capture_output=True, text=True, env=env, timeout=900
    )


@pytest.mark.vm
@pytest.mark.gcs
def test_publish_and_fetch_the_real_built_image(built_image, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bd = built_image.dir
    server = FakeGcs()
    try:
        ova = bd.ova
        expected = (bd.path / f"{bd.name}.ova.sha256").read_text().split()[0]
        r = kiln("upload", str(bd.path), "--endpoint", server.url, "--bucket", BUCKET, "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert [x["action"] for x in out["results"]] == ["uploaded"]
        assert out["results"][0]["sha256"] == expected
        name = f"{out['channel']}/{bd.kubernetes_semver}/{bd.name}.ova"
        obj = get_object(server.url, BUCKET, name)
        assert obj is not None and int(obj["size"]) == ova.stat().st_size
        assert obj["metadata"]["sha256"] == expected
        print(f"\nupload of {ova.stat().st_size >> 20} MiB OVA: {out['results'][0]['seconds']:.1f}s")

        r = kiln("upload", str(bd.path), "--endpoint", server.url, "--bucket", BUCKET, "--json")
        again = json.loads(r.stdout)
        assert r.returncode == 0 and [x["action"] for x in again["results"]] == ["skipped"]
        assert again["bytes_sent"] == 0

        r = kiln(
            "images",
            "get",
            f"{bd.name}.ova",
            "-o",
            str(tmp_path),
            "--base-url",
            server.url,
            "--bucket",
            BUCKET,
        )
        assert r.returncode == 0, r.stderr
        assert filecmp.cmp(tmp_path / ova.name, ova, shallow=False)
    finally:
        server.stop()
