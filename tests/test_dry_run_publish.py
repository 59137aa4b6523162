"""`--dry-run` reaches every effect of publishing: against a real fake-gcs-server, `kiln --dry-run release`
with a stale local build in place, and `kiln --dry-run upload`, send no write request and leave the bucket
(objects, generations, index.json) exactly as it was, while saying what they would publish."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gcs_servers import FakeGcs, make_build_dir, object_names, read_object
from kiln import cli, config
from kiln.build import pipeline as build
from kiln.core import inputs
from kiln.goss import reports
from kiln.publish import gcs, release
from kiln_runtime import RUNTIME

pytestmark = pytest.mark.gcs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeGcs]:
    s = FakeGcs()
    yield s
    s.stop()


@pytest.fixture
def methods(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every HTTP method kiln's GCS client sends (AuthorizedSession and plain sessions both end here)."""
    sent: list[str] = []
    real = requests.Session.request

    def recording(self: requests.Session, method: str, url: str, *args: object, **kwargs: object) -> object:
        if "/storage/" in str(url) or "/upload/" in str(url):
            sent.append(method.upper())
        return real(self, method, url, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(requests.Session, "request", recording)
    monkeypatch.setattr(requests.Session, "put", lambda self, url, **kw: recording(self, "PUT", url, **kw))
    return sent


def bucket_state(base: str, bucket: str) -> dict[str, tuple[str, str, str]]:
    """name -> (generation, metageneration, md5) of every object: any write changes it."""
    r = requests.get(f"{base}/storage/v1/b/{bucket}/o", timeout=10)
    items = r.json().get("items", [])
    return {
        i["name"]: (str(i.get("generation")), str(i.get("metageneration")), i.get("md5Hash", ""))
        for i in items
    }


def verified_build(out: Path, cfg: config.Config, input_hash: str, seed: int) -> Path:
    """A finished, verified build dir at the config's output path that records `input_hash`."""
    d = make_build_dir(out, version=cfg.settings.kubernetes_semver, size=1 << 20, seed=seed)
    manifest = json.loads((d / "packer-manifest.json").read_text())
    manifest["builds"][-1]["custom_data"].update(input_hash=input_hash, kiln_version="0.0.1")
    manifest["builds"][-1]["files"] = [{"name": f"{d.name}.ova"}, {"name": f"{d.name}.qcow2"}]
    (d / "packer-manifest.json").write_text(json.dumps(manifest))
    reports.write_reports([], d / "goss")  # as a verify that passed writes it
    inputs.mark(d, "test")
    return d


def stale_build(out: Path, cfg: config.Config) -> Path:
    """A build dir whose input hash is NOT the config's (an older build a release must never publish as
    the current one)."""
    d = verified_build(out, cfg, "0" * 64, seed=7)
    assert not build.up_to_date(d, build.input_hash(cfg, RUNTIME))
    return d


def _gcs_args(server: FakeGcs, bucket: str) -> list[str]:
    return ["--endpoint", server.url, "--bucket", bucket]


def _new_bucket(server: FakeGcs, name: str) -> str:
    requests.post(server.url + "/storage/v1/b", json={"name": name}, timeout=5)
    return name


def test_dry_run_release_with_a_stale_local_build_writes_nothing(
    server: FakeGcs, tmp_path: Path, methods: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = _new_bucket(server, "kiln-dry-release")
    out = tmp_path / "out"
    version = "v1.30.2-0-dry"
    cfg = config.load(
        "debian-12", overrides={"output_dir": str(out), "kubernetes_semver": version}, repo_root=REPO
    )
    # the bucket already holds an older image of this name and an index that lists it
    old = make_build_dir(tmp_path / "old", version=version, size=1 << 20, seed=3)
    client = gcs.Client(gcs.credentials(None, server.url), server.url)
    ova = old / f"{old.name}.ova"
    client.put_small(
        bucket, f"ci/{version}/{ova.name}", ova.read_bytes(), content_type="application/octet-stream"
    )
    release.update_index(client, bucket, {"name": old.name, "channel": "ci", "input_hash": "1" * 64})
    stale = stale_build(out, cfg)
    before = (bucket_state(server.url, bucket), read_object(server.url, bucket, "index.json"))
    methods.clear()

    argv = [
        "--dry-run",
        "release",
        "debian-12",
        "--var",
        f"output_dir={out}",
        "--var",
        f"kubernetes_semver={version}",
    ]
    code = cli.main(argv + _gcs_args(server, bucket))
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "would-build" in printed.out and "would run: " in printed.out  # the stages it would run
    assert set(methods) <= {"GET"}, f"a dry run sent {sorted(set(methods))}"
    assert (bucket_state(server.url, bucket), read_object(server.url, bucket, "index.json")) == before
    assert stale.is_dir() and (stale / f"{stale.name}.ova").is_file()  # not touched, not published

    # the same with the local build up to date: it says what it would publish, object by object
    fresh = verified_build(tmp_path / "fresh", cfg, build.input_hash(cfg, RUNTIME), seed=9)
    assert build.up_to_date(fresh, build.input_hash(cfg, RUNTIME))
    fresh_out = tmp_path / "fresh"
    argv = [
        "--dry-run",
        "release",
        "debian-12",
        "--var",
        f"output_dir={fresh_out}",
        "--var",
        f"kubernetes_semver={version}",
    ]
    code = cli.main(argv + _gcs_args(server, bucket))
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "would-publish" in printed.out and "would-upload" in printed.err + printed.out
    assert set(methods) <= {"GET"}, f"a dry run sent {sorted(set(methods))}"
    assert (bucket_state(server.url, bucket), read_object(server.url, bucket, "index.json")) == before


def test_dry_run_release_in_process_never_opens_the_stale_build(server: FakeGcs, tmp_path: Path) -> None:
    """The library path: release.run under a dry-run runtime plans, reads and reports; the client it is given
    is writable, and still nothing is written."""
    import dataclasses

    bucket = _new_bucket(server, "kiln-dry-release-lib")
    out = tmp_path / "out"
    cfg = config.load(
        "debian-12", overrides={"output_dir": str(out), "kubernetes_semver": "v1.31.1-0-dry"}, repo_root=REPO
    )
    stale_build(out, cfg)
    client = gcs.Client(gcs.credentials(None, server.url), server.url)
    entries = release.run([cfg], client, bucket, runtime=dataclasses.replace(RUNTIME, dry_run=True))
    assert [e.status for e in entries] == ["would-build"], release.summary(entries)
    assert client.stats.bytes_sent == 0
    assert object_names(server.url, bucket) == []


@pytest.mark.parametrize("where", ["global", "subcommand"])
def test_dry_run_upload_writes_nothing(
    server: FakeGcs, tmp_path: Path, methods: list[str], where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = _new_bucket(server, f"kiln-dry-upload-{where}")
    bd = make_build_dir(tmp_path, version="v1.30.3", size=1 << 20)
    before = bucket_state(server.url, bucket)
    sidecar = (bd / f"{bd.name}.ova.sha256").read_text()
    methods.clear()
    flag = ["--dry-run", "upload", str(bd)] if where == "global" else ["upload", str(bd), "--dry-run"]
    assert cli.main([*flag, "--all", *_gcs_args(server, bucket), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] is True and report["bytes_sent"] == 0
    assert {r["action"] for r in report["results"]} == {"would-upload"}
    assert set(methods) <= {"GET"}, f"a dry run sent {sorted(set(methods))}"
    assert bucket_state(server.url, bucket) == before == {}
    assert (bd / f"{bd.name}.ova.sha256").read_text() == sidecar


def test_a_read_only_client_refuses_writes_before_sending(server: FakeGcs, methods: list[str]) -> None:
    from kiln.core.errors import UploadError

    bucket = _new_bucket(server, "kiln-read-only")
    ro = gcs.Client(gcs.credentials(None, server.url), server.url, read_only=True)
    methods.clear()
    with pytest.raises(UploadError, match="read-only"):
        ro.put_small(bucket, "x", b"x", content_type="text/plain")
    assert methods == [] and object_names(server.url, bucket) == []
