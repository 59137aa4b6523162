"""Faults injected between kiln and a real GCS-speaking server: what survives, and what a reader sees.

Resets mid-upload run against gcp-storage-emulator: fake-gcs-server finalises an upload when asked for its
status (`Content-Range: bytes */N`), which real GCS never does.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import subprocess
import sys
import threading
from pathlib import Path

import google_crc32c
import pytest

from gcs_servers import (
    BUCKET,
    Emulator,
    FakeGcs,
    FaultProxy,
    get_object,
    is_upload_chunk,
    make_build_dir,
    object_names,
    read_object,
)
from kiln.core.builddir import BuildDir
from kiln.publish import gcs, upload
from kiln_runtime import RUNTIME

pytestmark = pytest.mark.gcs
CHUNK = 256 * 1024
FAST = gcs.RetryPolicy(attempts=8, initial=0.02, maximum=0.2)


@pytest.fixture(scope="module")
def emulator() -> Emulator:
    server = Emulator()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fake() -> FakeGcs:
    server = FakeGcs()
    yield server
    server.stop()


@pytest.fixture
def proxy_for(request: pytest.FixtureRequest):
    proxies: list[FaultProxy] = []

    def make(upstream: str, **kw) -> FaultProxy:
        p = FaultProxy(upstream, **kw)
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        p.stop()


def publish(endpoint: str, bd: Path, **opts) -> tuple[list[upload.Result], gcs.Client]:
    client = gcs.Client(gcs.credentials(None, endpoint), endpoint, retry=FAST, chunk_size=CHUNK)
    _, results = upload.publish_build(
        BuildDir.open(bd), client, upload.Options(bucket=BUCKET, **opts), runtime=RUNTIME
    )
    return results, client


def nth(n: int, pred=is_upload_chunk):
    """A matcher true for the n-th (1-based) request satisfying pred, and only that one."""
    counter = itertools.count(1)
    lock = threading.Lock()

    def match(m: str, p: str, h: dict[str, str]) -> bool:
        if not pred(m, p, h):
            return False
        with lock:
            return next(counter) == n

    return match


def after_first_chunk(m: str, p: str, h: dict[str, str]) -> bool:
    """Chunks after the first. gcp-storage-emulator answers a status query on a session that holds nothing
    with `Range: bytes=0-0` (one byte) where GCS sends no Range, so faults start once it holds data."""
    return is_upload_chunk(m, p, h) and not h.get("content-range", "").startswith("bytes 0-")


def expect_published(base: str, name: str, data: bytes) -> None:
    obj = get_object(base, BUCKET, name)
    assert obj is not None and int(obj["size"]) == len(data)
    assert obj["metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert obj["crc32c"] == base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
    assert read_object(base, BUCKET, name) == data
    assert read_object(base, BUCKET, name + ".sha256") == hashlib.sha256(data).hexdigest().encode()


def test_retryable_statuses() -> None:
    assert all(s in gcs.RETRYABLE_STATUS for s in (408, 429, 500, 502, 503, 504, 599))
    assert not any(s in gcs.RETRYABLE_STATUS for s in (200, 308, 400, 401, 403, 404, 412, 501))


def test_a_non_retryable_error_fails_at_once_and_publishes_nothing(
    tmp_path: Path, emulator: Emulator, proxy_for
) -> None:
    bd = make_build_dir(tmp_path, version="v1.20.400", size=CHUNK)
    proxy = proxy_for(emulator.url)
    proxy.add("501", lambda m, p, h: "uploadType=resumable" in p)
    results, client = publish(proxy.url, bd)
    assert [r.action for r in results] == ["failed"] and "HTTP 501" in results[0].detail
    assert client.stats.retries == 0
    assert object_names(emulator.url, BUCKET, "release/v1.20.400/") == []


@pytest.mark.parametrize("status", ["503", "429", "500"])
def test_bursts_of_errors_on_every_kind_of_request_are_retried(
    tmp_path: Path, emulator: Emulator, proxy_for, status: str
) -> None:
    bd = make_build_dir(tmp_path, version=f"v1.20.{status}", size=5 * CHUNK + 1234)
    proxy = proxy_for(emulator.url)
    proxy.add(status, lambda m, p, h: m == "GET", times=3)  # metadata reads
    proxy.add(status, lambda m, p, h: "uploadType=resumable" in p and m == "POST", times=2)  # initiation
    proxy.add(status, nth(2), times=1)  # a chunk in the middle
    proxy.add(status, after_first_chunk, times=3)  # then a burst on the next chunks
    proxy.add(status, lambda m, p, h: "uploadType=multipart" in p, times=2)  # the sidecar
    results, client = publish(proxy.url, bd)
    assert [r.action for r in results] == ["uploaded"], results
    assert sum(r.hits for r in proxy.rules) == 3 + 2 + 1 + 3 + 2
    assert client.stats.retries >= 11
    expect_published(
        emulator.url, f"release/v1.20.{status}/{bd.name}.ova", (bd / f"{bd.name}.ova").read_bytes()
    )


def test_connection_reset_mid_upload_resumes_where_the_server_stopped(
    tmp_path: Path, emulator: Emulator, proxy_for
) -> None:
    size = 8 * CHUNK + 99
    bd = make_build_dir(tmp_path, version="v1.19.16", size=size)
    proxy = proxy_for(emulator.url)
    proxy.add("reset", nth(4))  # the 4th chunk: 3 chunks persisted, half of the 4th read, then RST
    results, client = publish(proxy.url, bd)
    assert [r.action for r in results] == ["uploaded"], results
    chunk_puts = [s for s in proxy.seen if s.method == "PUT" and "upload_id=" in s.path]
    status_queries = [s for s in chunk_puts if s.headers.get("content-range", "").startswith("bytes */")]
    assert [s.action for s in chunk_puts].count("reset") == 1
    assert len(status_queries) == 1, "asked the server how much it holds"
    # resumed, not restarted: the 4th chunk was sent twice, nothing else
    assert results[0].bytes_sent == size + CHUNK
    expect_published(emulator.url, f"release/v1.19.16/{bd.name}.ova", (bd / f"{bd.name}.ova").read_bytes())


def test_corrupted_payload_is_refused_by_the_server_leaving_no_object_no_sidecar(
    tmp_path: Path, emulator: Emulator, proxy_for
) -> None:
    bd = make_build_dir(tmp_path, version="v1.18.20", size=3 * CHUNK)
    proxy = proxy_for(emulator.url)
    proxy.add("corrupt", nth(2))
    results, _ = publish(proxy.url, bd)
    assert [r.action for r in results] == ["failed"]
    assert "400" in results[0].detail  # the emulator checked the CRC32C kiln sent and refused
    assert object_names(emulator.url, BUCKET, "release/v1.18.20/") == []


def test_corrupted_replacement_of_a_ci_object_leaves_the_old_object_and_no_sidecar(
    tmp_path: Path, emulator: Emulator, proxy_for
) -> None:
    """What a reader sees mid-failure: the old object (its metadata matches it) and no sidecar, never a
    sidecar or metadata that disagrees with the bytes."""
    old = make_build_dir(tmp_path / "old", version="v1.33.0-alpha.0", size=2 * CHUNK, seed=1)
    new = make_build_dir(tmp_path / "new", version="v1.33.0-alpha.0", size=3 * CHUNK, seed=2)
    name = f"ci/v1.33.0-alpha.0/{old.name}.ova"
    assert [r.action for r in publish(emulator.url, old)[0]] == ["uploaded"]
    proxy = proxy_for(emulator.url)
    proxy.add("corrupt", nth(3))
    results, _ = publish(proxy.url, new)
    assert [r.action for r in results] == ["failed"]
    old_bytes = (old / f"{old.name}.ova").read_bytes()
    assert read_object(emulator.url, BUCKET, name) == old_bytes
    assert (
        get_object(emulator.url, BUCKET, name)["metadata"]["sha256"] == hashlib.sha256(old_bytes).hexdigest()
    )
    assert get_object(emulator.url, BUCKET, name + ".sha256") is None
    # a clean re-run completes the replacement
    assert [r.action for r in publish(emulator.url, new)[0]] == ["uploaded"]
    expect_published(emulator.url, name, (new / f"{new.name}.ova").read_bytes())


def test_server_that_does_not_verify_crc32c_still_cannot_keep_a_corrupted_object(
    tmp_path: Path, fake: FakeGcs, proxy_for
) -> None:
    """fake-gcs-server stores whatever arrives; kiln checks the stored CRC32C and takes the object down."""
    bd = make_build_dir(tmp_path, version="v1.17.17", size=3 * CHUNK)
    proxy = proxy_for(fake.url)
    proxy.add("corrupt", nth(1))
    results, _ = publish(proxy.url, bd)
    assert [r.action for r in results] == ["failed"]
    assert "does not match the local file" in results[0].detail
    assert object_names(fake.url, BUCKET, "release/v1.17.17/") == []


def _race(upstream: str, bds: list[Path]) -> list[subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if k != "KEY_FILE"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kiln",
                "upload",
                str(bd),
                "--endpoint",
                upstream,
                "--bucket",
                BUCKET,
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for bd in bds
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


@pytest.mark.parametrize("same", [True, False], ids=["same-image", "different-images"])
def test_two_uploaders_racing_on_a_release_path(tmp_path: Path, fake: FakeGcs, proxy_for, same: bool) -> None:
    """Exactly one upload is published; the other never overwrites it.

    The proxy holds each upload's initiation until both have arrived, so both uploaders have looked (and
    found nothing) before either finishes, and adds GCS's ifGenerationMatch check at finalisation.
    """
    import json

    version = "v1.16.15" if same else "v1.16.16"
    a = make_build_dir(tmp_path / "a", version=version, size=4 * CHUNK, seed=1)
    b = make_build_dir(tmp_path / "b", version=version, size=4 * CHUNK, seed=1 if same else 2)
    proxy = proxy_for(fake.url, enforce_resumable_preconditions=True)
    proxy.add("barrier", lambda m, p, h: m == "POST" and "uploadType=resumable" in p, times=2)
    runs = _race(proxy.url, [a, b])
    outs = [json.loads(r.stdout) for r in runs]
    acts = sorted(o["results"][0]["action"] for o in outs)
    finals = [
        s for s in proxy.seen if is_upload_chunk(s.method, s.path, s.headers) and s.status in (200, 201, 412)
    ]
    assert sorted(s.status for s in finals) == [200, 412], "one finalisation won, one was refused"
    name = f"release/{version}/{a.name}.ova"
    winner = 0 if runs[0].returncode == 0 and outs[0]["results"][0]["action"] == "uploaded" else 1
    data = ((a, b)[winner] / f"{a.name}.ova").read_bytes()
    expect_published(fake.url, name, data)
    if same:
        assert acts == ["skipped", "uploaded"]
        assert [r.returncode for r in runs] == [0, 0]
        loser = outs[1 - winner]["results"][0]
        assert loser["detail"] == "an identical image was published concurrently"
    else:
        assert acts == ["failed", "uploaded"]
        assert runs[1 - winner].returncode == 1
        assert "another upload published a different object" in runs[1 - winner].stderr
    gens = {get_object(fake.url, BUCKET, name)["generation"]}
    assert len(gens) == 1


def test_interrupt_mid_upload_exits_130_and_leaves_nothing_unverified(
    tmp_path: Path, emulator: Emulator, proxy_for
) -> None:
    import json
    import signal
    import time

    bd = make_build_dir(tmp_path, version="v1.15.12", size=2 * CHUNK)
    name = f"release/v1.15.12/{bd.name}.ova"
    proxy = proxy_for(emulator.url)
    proxy.add("delay:2", is_upload_chunk)
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kiln",
            "upload",
            str(bd),
            "--endpoint",
            proxy.url,
            "--bucket",
            BUCKET,
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell that starts the suite in the background leaves SIGINT ignored, and Python then never
        # turns it into KeyboardInterrupt: give the child the disposition a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 30
    while not any(is_upload_chunk(s.method, s.path, s.headers) for s in proxy.seen):
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "interrupted" in err
    assert get_object(emulator.url, BUCKET, name + ".sha256") is None  # never a sidecar for an unfinished run
    obj = get_object(emulator.url, BUCKET, name)
    if obj is not None:  # the chunk in flight completed: the object is whole and its metadata is true
        expect_sha = hashlib.sha256((bd / f"{bd.name}.ova").read_bytes()).hexdigest()
        assert obj["metadata"]["sha256"] == expect_sha
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kiln",
            "upload",
            str(bd),
            "--endpoint",
            emulator.url,
            "--bucket",
            BUCKET,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"][0]["action"] in ("uploaded", "sidecar-written")
    expect_published(emulator.url, name, (bd / f"{bd.name}.ova").read_bytes())
