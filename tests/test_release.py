"""`kiln release` against a real fake-gcs-server: plan by input hash, publish only what is missing, an
index.json updated under generation preconditions (two releases at once lose no entry), SBOMs, and the CLI's
--plan --json matrix. The build dirs here are made to carry the input hash the config computes, so release
uses them as they are (the rule for a local build with the same input hash); test_release_built.py runs the
same flow on the real built image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gcs_servers import BUCKET, FakeGcs, get_object, make_build_dir, object_names, read_object
from kiln import config
from kiln.build import pipeline as build
from kiln.core import inputs
from kiln.core.builddir import sha256_file
from kiln.goss import reports
from kiln.publish import gcs, release
from kiln_runtime import RUNTIME

pytestmark = pytest.mark.gcs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server():
    s = FakeGcs()
    yield s
    s.stop()


def client(server: FakeGcs) -> gcs.Client:
    return gcs.Client(gcs.credentials(None, server.url), server.url)


def prepared(out: Path, version: str) -> config.Config:
    """A config and a finished, verified local build dir that carries the config's input hash."""
    cfg = config.load(
        "debian-12", overrides={"output_dir": str(out), "kubernetes_semver": version}, repo_root=REPO
    )
    d = make_build_dir(out, version=version, size=1 << 20, seed=hash(version) & 0xFFFF)
    manifest = json.loads((d / "packer-manifest.json").read_text())
    digest = build.input_hash(cfg, RUNTIME)
    manifest["builds"][-1]["custom_data"].update(input_hash=digest, kiln_version="0.1.0")
    manifest["builds"][-1]["files"] = [{"name": f"{d.name}.ova"}, {"name": f"{d.name}.qcow2"}]
    (d / "packer-manifest.json").write_text(json.dumps(manifest))
    (d / f"{d.name}.spdx.json").write_text(json.dumps({"spdxVersion": "SPDX-2.3", "name": d.name}))
    reports.write_reports([], d / "goss")  # as a verify that passed writes it
    inputs.mark(d, "test")
    assert build.up_to_date(d, build.input_hash(cfg, RUNTIME))
    return cfg


def test_release_publishes_what_is_missing_and_nothing_twice(server: FakeGcs, tmp_path: Path) -> None:
    bucket = f"{BUCKET}"
    c = client(server)
    a = prepared(tmp_path / "out", "v1.30.2-0-test")  # not a vX.Y.Z tag: the ci channel
    plan = release.plan([a], c, bucket, runtime=RUNTIME)
    assert [(e.status, e.channel) for e in plan] == [("build", "ci")]
    first = release.run([a], c, bucket, runtime=RUNTIME)
    assert [e.status for e in first] == ["reused"], release.summary(first)
    name = a.artifact_name
    objects = object_names(server.url, bucket, f"ci/v1.30.2-0-test/{name}")
    assert {f"ci/v1.30.2-0-test/{name}{s}" for s in (".ova", ".ova.sha256", ".spdx.json")} <= set(objects)
    meta = get_object(server.url, bucket, f"ci/v1.30.2-0-test/{name}.ova")["metadata"]
    assert meta["input_hash"] == build.input_hash(a, RUNTIME)
    index = json.loads(read_object(server.url, bucket, "index.json"))
    (entry,) = [i for i in index["images"] if i["name"] == name]
    ova = a.path("output_dir") / name / f"{name}.ova"
    assert entry["sha256"] == sha256_file(ova) and entry["size"] == ova.stat().st_size
    assert entry["input_hash"] == build.input_hash(a, RUNTIME) and entry["channel"] == "ci"
    assert set(entry["urls"]) >= {"ova", "sha256", "sbom"} and entry["target"] == "debian-12"

    c2 = client(server)
    second = release.run([a], c2, bucket, runtime=RUNTIME)
    assert [e.status for e in second] == ["published"] and c2.stats.bytes_sent == 0
    print(
        f"\nunchanged re-release: {c2.stats.requests} requests, 0 bytes (first: {c.stats.requests} requests)"
    )

    b = prepared(tmp_path / "out", "v1.31.0-0-test")
    c3 = client(server)
    third = release.run([a, b], c3, bucket, runtime=RUNTIME)
    assert [e.status for e in third] == ["published", "reused"]
    assert third[0].bytes_sent == 0 and third[1].bytes_sent > 0
    names = {i["name"] for i in json.loads(read_object(server.url, bucket, "index.json"))["images"]}
    assert {a.artifact_name, b.artifact_name} <= names


def test_a_failed_entry_does_not_stop_the_others(
    server: FakeGcs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = prepared(tmp_path / "good", "v1.29.9-0-test")
    # no local build, and kvm forced where there is none: that entry's build fails at once
    overrides = {
        "output_dir": str(tmp_path / "none"),
        "kubernetes_semver": "v1.28.1-0-test",
        "accelerator": "kvm",
    }
    broken = config.load("debian-12", overrides=overrides, repo_root=REPO)
    from kiln.vm import accel

    monkeypatch.setattr(accel, "kvm_available", lambda: False)  # the machine may have a usable /dev/kvm
    entries = release.run([broken, good], client(server), BUCKET, runtime=RUNTIME)
    assert [e.status for e in entries] == ["failed", "reused"]
    assert "accelerator" in entries[0].detail and "failed" in release.summary(entries)


def test_an_interrupt_ends_the_release_not_just_its_entry(
    server: FakeGcs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiln.core.errors import Interrupted

    tried: list[str] = []

    def interrupted(cfg: config.Config, **kwargs: object) -> None:
        tried.append(cfg.settings.kubernetes_semver)
        raise Interrupted("packer: interrupted")

    monkeypatch.setattr(build, "run_build", interrupted)
    configs = [
        config.load(
            "debian-12", overrides={"output_dir": str(tmp_path), "kubernetes_semver": v}, repo_root=REPO
        )
        for v in ("v1.27.5-0-stop", "v1.27.6-0-stop")
    ]
    with pytest.raises(Interrupted):
        release.run(configs, client(server), BUCKET, runtime=RUNTIME)
    assert tried == ["v1.27.5-0-stop"]
    assert not [n for n in object_names(server.url, BUCKET) if "-0-stop" in n], "nothing published"


def test_two_releases_updating_the_index_at_once_lose_no_entry(server: FakeGcs) -> None:
    bucket = "kiln-index-race"
    import requests

    requests.post(server.url + "/storage/v1/b", json={"name": bucket}, timeout=5)
    barrier = threading.Barrier(2)
    attempts: list[int] = []

    class Racing(gcs.Client):
        first = True

        def put_small(self, *args, **kwargs):  # both read the same generation, then both write
            if self.first:
                self.first = False
                barrier.wait(60)
            return super().put_small(*args, **kwargs)

    def job(n: int) -> None:
        c = Racing(gcs.credentials(None, server.url), server.url)
        attempts.append(release.update_index(c, bucket, {"name": f"img-{n}", "channel": "ci"}))

    threads = [threading.Thread(target=job, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = sorted(i["name"] for i in json.loads(read_object(server.url, bucket, "index.json"))["images"])
    assert names == ["img-0", "img-1"]
    assert sorted(attempts) == [1, 2], "one write hit the generation precondition (412) and retried"


def test_cli_plan_json_is_a_ci_matrix(server: FakeGcs, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KEY_FILE", "KILN_GCS_BUCKET")}
    env["PACKER_VAR_FILES"] = ""
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "release", "debian-12", "--kubernetes-version", "v1.30.2",
         "--kubernetes-version", "v1.31.4", "--endpoint", server.url, "--bucket", BUCKET, "--plan", "--json",
         "--var", f"output_dir={tmp_path}"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    matrix = json.loads(r.stdout)
    assert [e["kubernetes_semver"] for e in matrix["include"]] == ["v1.30.2", "v1.31.4"]
    for e in matrix["include"]:
        assert set(e) == {"target", "kubernetes_semver", "input_hash", "channel", "status"}
        assert e["channel"] == "release" and e["status"] == "build" and len(e["input_hash"]) == 64
