"""A release publishes each image's records beside it (provenance, file manifest, package list, SBOM) and
indexes the provenance; `kiln provenance verify URL` and `kiln diff BUILD URL` then work on the published
image, against a real fake-gcs-server. `--require-signature` publishes nothing of an unsigned build. The
real counterpart of the build dirs made here is test_repro_vm.py (a real build's provenance and diff)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gcs_servers import BUCKET, FakeGcs, make_build_dir, object_names, read_object
from kiln import config
from kiln.artifacts import filelist, provenance
from kiln.build import pipeline as build
from kiln.core import inputs
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


def _client(server: FakeGcs) -> gcs.Client:
    return gcs.Client(gcs.credentials(None, server.url), server.url)


def _keypair(where: Path, name: str) -> tuple[Path, Path]:
    key = ed25519.Ed25519PrivateKey.generate()
    private, public = where / f"{name}.pem", where / f"{name}.pub.pem"
    pem = serialization.Encoding.PEM
    private.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _prepared(out: Path, version: str, signing_key: Path | None) -> tuple[config.Config, Path]:
    """A config and a finished local build dir carrying its input hash, with every record a build writes:
    package list, file manifest (of a real tree), config.json, SBOM and the provenance over them."""
    cfg = config.load(
        "debian-12", overrides={"output_dir": str(out), "kubernetes_semver": version}, repo_root=REPO
    )
    d = make_build_dir(out, version=version, size=1 << 20, seed=hash(version) & 0xFFFF)
    name = d.name
    manifest = json.loads((d / "packer-manifest.json").read_text())
    digest = build.input_hash(cfg, RUNTIME)
    manifest["builds"][-1]["custom_data"].update(input_hash=digest, kiln_version="0.1.0")
    manifest["builds"][-1]["files"] = [{"name": f"{name}.ova"}, {"name": f"{name}.qcow2"}]
    (d / "packer-manifest.json").write_text(json.dumps(manifest))
    (d / f"{name}.packages").write_text("containerd\t1.6.20\nrunc\t1.1.5\n")
    tree = out / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("node\n")
    filelist.write(tree, d / f"{name}{filelist.SUFFIX}")
    (d / "config.json").write_text(json.dumps(cfg.to_json()))
    (d / f"{name}.spdx.json").write_text(json.dumps({"spdxVersion": "SPDX-2.3", "name": name}))
    reports.write_reports([], d / "goss")  # as a verify that passed writes it
    subjects = [d / f"{name}{ext}" for ext in (".ova", ".qcow2", ".spdx.json", ".packages", filelist.SUFFIX)]
    stmt = provenance.statement(
        d, subjects, cfg.plain(), {"containerd": "1.6.20", "runc": "1.1.5"}, target="debian-12",
        runner="chroot", commit="abc", input_hash=digest, ci={}, started=0, finished=1,
    )  # fmt: skip
    key = provenance.load_private_key(signing_key) if signing_key else None
    provenance.write(d / f"{name}{provenance.SUFFIX}", stmt, key)
    inputs.mark(d, "test")
    assert build.up_to_date(d, build.input_hash(cfg, RUNTIME))
    return cfg, d


def kiln(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, cwd=REPO)


def test_a_release_publishes_and_indexes_the_provenance_which_verifies_and_diffs_from_its_url(
    server: FakeGcs, tmp_path: Path
) -> None:
    private, public = _keypair(tmp_path, "release")
    cfg, local = _prepared(tmp_path / "out", "v1.33.0-0-pub", private)
    entries = release.run([cfg], _client(server), BUCKET, runtime=RUNTIME, signing_key=private,
                          require_signature=True)  # fmt: skip
    assert [e.status for e in entries] == ["reused"], release.summary(entries)
    name = local.name
    prefix = f"ci/v1.33.0-0-pub/{name}"
    published = set(object_names(server.url, BUCKET, prefix))
    for ext in (".ova", ".spdx.json", ".intoto.jsonl", ".files.jsonl", ".packages"):
        assert {prefix + ext, prefix + ext + ".sha256"} <= published, published
    assert prefix + ".qcow2" not in published  # not asked for: its subject is "not published"
    index = json.loads(read_object(server.url, BUCKET, "index.json") or b"{}")
    (entry,) = [i for i in index["images"] if i["name"] == name]
    assert entry["provenance"]["signed"] and entry["provenance"]["url"].endswith(f"{name}.intoto.jsonl")
    assert (
        entry["provenance"]["sha256"]
        == hashlib.sha256((local / f"{name}.intoto.jsonl").read_bytes()).hexdigest()
    )
    url = f"{server.url}/{BUCKET}/{prefix}.ova"

    checked = kiln("provenance", "verify", url, "--key", str(public))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{name}.ova: sha256 ok" in checked.stdout and f"{name}.files.jsonl: sha256 ok" in checked.stdout
    assert f"{name}.qcow2: not published" in checked.stdout

    # the same image named by its channel path and bucket, through --base-url
    same = kiln("diff", str(local), f"{prefix}.intoto.jsonl", "--base-url", server.url, "--bucket", BUCKET)
    assert same.returncode == 0 and same.stdout.rstrip().endswith("equal"), same.stdout + same.stderr

    other_cfg, other = _prepared(tmp_path / "other", "v1.33.0-0-pub", None)
    (other / f"{name}.packages").write_text("containerd\t1.7.0\nrunc\t1.1.5\njq\t1.6\n")
    (tmp_path / "other" / "tree" / "etc" / "motd").write_text("hi\n")
    filelist.write(tmp_path / "other" / "tree", other / f"{name}{filelist.SUFFIX}")
    different = kiln("diff", str(other), url, "--json")
    assert different.returncode == 1, different.stdout + different.stderr
    result = json.loads(different.stdout)
    assert result["packages"]["removed"] == {"jq": "1.6"} and not result["packages"]["added"]
    assert result["packages"]["changed"] == {"containerd": ["1.7.0", "1.6.20"]}
    assert result["files"]["removed"] == ["/etc/motd"] and not result["files"]["added"]

    # tampering: the published OVA, then the statement, then a key that did not sign it
    c = _client(server)
    c.put_small(BUCKET, f"{prefix}.ova", b"not the image")
    bad = kiln("provenance", "verify", url, "--key", str(public))
    assert bad.returncode == 1 and "digest check failed" in bad.stderr, bad.stdout + bad.stderr
    env = json.loads((local / f"{name}.intoto.jsonl").read_text())
    stmt = json.loads(base64.b64decode(env["payload"]))
    stmt["subject"] = stmt["subject"][1:]
    env["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    c.put_small(BUCKET, f"{prefix}.intoto.jsonl", json.dumps(env).encode())
    bad = kiln("provenance", "verify", url, "--key", str(public))
    assert bad.returncode == 1 and "signature check failed" in bad.stderr, bad.stdout + bad.stderr
    _, stranger = _keypair(tmp_path, "stranger")
    c.put_small(BUCKET, f"{prefix}.intoto.jsonl", (local / f"{name}.intoto.jsonl").read_bytes())
    bad = kiln("provenance", "verify", url, "--key", str(stranger))
    assert bad.returncode == 1 and "signature check failed" in bad.stderr, bad.stdout + bad.stderr
    # a signed statement about another image, replayed under a new name and version
    replay = "ci/v1.35.0-0-replay/debian-12+kube-v1.35.0-0-replay"
    c.put_small(BUCKET, f"{replay}.intoto.jsonl", (local / f"{name}.intoto.jsonl").read_bytes())
    c.put_small(BUCKET, f"{replay}.ova", (local / f"{name}.ova").read_bytes())
    bad = kiln("provenance", "verify", f"{server.url}/{BUCKET}/{replay}.ova", "--key", str(public))
    assert bad.returncode == 1 and "not about this image" in bad.stderr, bad.stdout + bad.stderr
    # a file the statement does not name (the image's own files put back as they were)
    c.put_small(BUCKET, f"{prefix}.ova", (local / f"{name}.ova").read_bytes())
    c.put_small(BUCKET, f"ci/v1.33.0-0-pub/iso/{name}.iso", b"an ISO nobody signed")
    bad = kiln("provenance", "verify", f"{server.url}/{BUCKET}/ci/v1.33.0-0-pub/iso/{name}.iso", "--key",
               str(public))  # fmt: skip
    assert bad.returncode == 1 and "not a subject" in bad.stderr, bad.stdout + bad.stderr
    missing = kiln("provenance", "verify", f"{server.url}/{BUCKET}/ci/v9.9.9/x+kube-v9.9.9.ova", "--key",
                   str(public))  # fmt: skip
    assert missing.returncode == 1 and "no provenance published" in missing.stderr, missing.stderr
    assert other_cfg.target == "debian-12"


def test_require_signature_publishes_nothing_of_an_unsigned_build(server: FakeGcs, tmp_path: Path) -> None:
    private, _ = _keypair(tmp_path, "release")
    cfg, local = _prepared(tmp_path / "out", "v1.34.0-0-unsigned", None)
    entries = release.run([cfg], _client(server), BUCKET, runtime=RUNTIME, signing_key=private,
                          require_signature=True)  # fmt: skip
    assert [e.status for e in entries] == ["failed"] and "unsigned" in entries[0].detail, entries
    assert object_names(server.url, BUCKET, "ci/v1.34.0-0-unsigned/") == []
    signed_elsewhere, _ = _keypair(tmp_path, "other")
    cfg, local = _prepared(tmp_path / "out2", "v1.34.0-0-foreign", signed_elsewhere)
    entries = release.run([cfg], _client(server), BUCKET, runtime=RUNTIME, signing_key=private,
                          require_signature=True)  # fmt: skip
    assert [e.status for e in entries] == ["failed"] and "signature check failed" in entries[0].detail
    assert object_names(server.url, BUCKET, "ci/v1.34.0-0-foreign/") == []
    no_key = kiln("release", "debian-12", "--require-signature", "--endpoint", server.url, "--bucket", BUCKET)
    assert no_key.returncode == 2 and "--require-signature: no signing key" in no_key.stderr, no_key.stderr
