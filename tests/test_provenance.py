"""Signed provenance: an in-toto statement in a DSSE envelope, signed with ed25519 or ECDSA P-256, checked
by `kiln provenance verify` (signature, then every subject's digest). The real counterpart is
test_repro_vm.py, which signs a real build and verifies it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from kiln import cli
from kiln.artifacts import provenance

NAME = "debian-12+kube-v1.36.1"


def _keys(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    key = {"ed25519": lambda: ed25519.Ed25519PrivateKey.generate(),
           "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
           "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)}[kind]()  # fmt: skip
    private, public = tmp_path / f"{kind}.pem", tmp_path / f"{kind}.pub.pem"
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    private.write_bytes(key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    public.write_bytes(key.public_key().public_bytes(pem, spki))
    return private, public


def _build(tmp_path: Path, signing_key: Path | None) -> Path:
    build = tmp_path / NAME
    build.mkdir()
    (build / f"{NAME}.qcow2").write_bytes(b"disk" * 1000)
    (build / f"{NAME}.packages").write_text("containerd\t1.6.20\n")
    values = {"os_name": "debian", "containerd_url": "http://x/c.tgz", "containerd_sha256": "ab" * 32}
    (build / "squashfs").mkdir()
    (build / "squashfs" / "filesystem.squashfs").write_bytes(b"live root")
    stmt = provenance.statement(
        build,
        [build / f"{NAME}.qcow2", build / f"{NAME}.packages", build / "squashfs" / "filesystem.squashfs"],
        values, {"containerd": "1.6.20"},
        target="debian-12", runner="chroot", commit="abc123", input_hash="f" * 64,
        ci={"run": "42", "url": "https://ci.example/runs/42"}, started=0, finished=60,
    )  # fmt: skip
    key = provenance.load_private_key(signing_key) if signing_key else None
    provenance.write(build / f"{NAME}{provenance.SUFFIX}", stmt, key)
    return build


@pytest.mark.parametrize("kind", ["ed25519", "p256"])
def test_a_signed_build_verifies_and_says_what_it_checked(tmp_path: Path, kind: str, capsys) -> None:  # type: ignore[no-untyped-def]
    private, public = _keys(tmp_path, kind)
    build = _build(tmp_path, private)
    assert cli.main(["provenance", "verify", str(build), "--key", str(public)]) == 0
    out = capsys.readouterr().out
    assert "signature: ok" in out and f"{NAME}.qcow2: sha256 ok" in out and "provenance: ok" in out
    assert "squashfs/filesystem.squashfs: sha256 ok" in out  # live formats live in subdirectories
    env, stmt, _ = provenance.read(build / f"{NAME}{provenance.SUFFIX}")
    assert stmt["predicateType"] == "https://slsa.dev/provenance/v1"
    deps = stmt["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert {"uri": "http://x/c.tgz", "digest": {"sha256": "ab" * 32}, "name": "containerd"} in deps
    assert {"uri": "pkg:deb/debian/containerd@1.6.20?arch=amd64"} in deps
    assert stmt["predicate"]["runDetails"]["builder"]["id"].endswith("/chroot")


def test_each_failed_check_is_named(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    private, public = _keys(tmp_path, "ed25519")
    _, other = _keys(tmp_path / "o" if (tmp_path / "o").mkdir() is None else tmp_path, "p256")
    build = _build(tmp_path, private)
    assert cli.main(["provenance", "verify", str(build), "--key", str(other)]) == 1
    assert "signature check failed" in capsys.readouterr().err
    (build / f"{NAME}.qcow2").write_bytes(b"tampered")
    assert cli.main(["provenance", "verify", str(build), "--key", str(public)]) == 1
    assert f"{NAME}.qcow2: digest check failed" in capsys.readouterr().err
    envelope = build / f"{NAME}{provenance.SUFFIX}"
    doc = json.loads(envelope.read_text())
    doc["payload"] = base64.b64encode(b'{"_type": "https://in-toto.io/Statement/v1", "subject": []}').decode()
    envelope.write_text(json.dumps(doc) + "\n")
    assert cli.main(["provenance", "verify", str(build), "--key", str(public)]) == 1
    assert "signature check failed" in capsys.readouterr().err  # a changed payload no longer verifies


def test_unsigned_malformed_and_unsupported_inputs(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    _, public = _keys(tmp_path, "ed25519")
    build = _build(tmp_path, None)
    assert cli.main(["provenance", "verify", str(build), "--key", str(public)]) == 1
    assert "unsigned" in capsys.readouterr().err
    (build / f"{NAME}{provenance.SUFFIX}").write_text("{not json\n")
    assert cli.main(["provenance", "verify", str(build), "--key", str(public)]) == 2
    assert "not a DSSE envelope" in capsys.readouterr().err
    rsa_key, _ = _keys(tmp_path, "rsa")
    with pytest.raises(Exception, match="ed25519 or ECDSA P-256"):
        provenance.load_private_key(rsa_key)
    assert cli.main(["provenance", "verify", str(build), "--key", str(tmp_path / "missing.pem")]) == 2


def test_the_signature_is_over_dsse_pae() -> None:
    assert (
        provenance.pae("application/vnd.in-toto+json", b"{}")
        == b"DSSEv1 28 application/vnd.in-toto+json 2 {}"
    )


@pytest.mark.parametrize("kind", ["ed25519", "p256"])
def test_an_independent_dsse_implementation_verifies_the_envelope(tmp_path: Path, kind: str) -> None:
    """securesystemslib (the in-toto project's DSSE code, not kiln's) accepts the envelope and its
    signature, and rejects it once the payload is changed."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError
    from securesystemslib.signer import SSlibKey

    private, public = _keys(tmp_path, kind)
    build = _build(tmp_path, private)
    text = (build / f"{NAME}{provenance.SUFFIX}").read_text()
    raw = json.loads(text)
    pub = serialization.load_pem_public_key(public.read_bytes())
    scheme = {"ed25519": "ed25519", "p256": "ecdsa-sha2-nistp256"}[kind]
    key = SSlibKey.from_crypto(pub, keyid=raw["signatures"][0]["keyid"], scheme=scheme)  # type: ignore[arg-type]
    envelope = Envelope.from_dict(json.loads(text))  # from_dict changes the dict it is given
    assert list(envelope.verify([key], 1)) == [key.keyid]
    statement = json.loads(envelope.payload)
    assert statement["_type"] == "https://in-toto.io/Statement/v1" and statement["subject"]
    statement["subject"][0]["digest"]["sha256"] = "0" * 64
    raw["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    with pytest.raises(VerificationError):
        Envelope.from_dict(raw).verify([key], 1)
