"""Same inputs, same bytes: a second build of the suite image's cached stages, into another output dir,
makes a byte-identical qcow2 and the same root, package list and file manifest, and `kiln diff` says so;
its provenance, signed with a key made for the test, passes `kiln provenance verify`. (Both builds must
come from one commit: the source date is the commit's time.)
(Its formats differ from the suite image's, so its finalize input hash, and with it the OVA's descriptor,
differ; that is the one difference `kiln diff` may report.)"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from conftest import SITE_MAKE_VAR

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the chroot runner needs root")]
NAME = "debian-12+kube-v1.36.1"


def test_a_second_build_from_the_same_inputs_has_the_same_bytes(built_image, tmp_path):
    if not (built_image.path / f"{NAME}.files.jsonl").is_file():
        pytest.skip("the suite image predates file manifests")
    accel = os.environ.get("KILN_TEST_ACCELERATOR", "tcg")
    key = ed25519.Ed25519PrivateKey.generate()  # this build's provenance is signed
    private, public = tmp_path / "signing.pem", tmp_path / "signing.pub.pem"
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    private.write_bytes(key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    public.write_bytes(key.public_key().public_bytes(pem, spki))
    out = tmp_path / "out"
    flags = f"-var output_dir={out} -var accelerator={accel} --no-verify --signing-key {private}"
    done = subprocess.run(
        ["make", "--no-print-directory", "build-qemu-debian-12", "K8S_STANDIN=1", SITE_MAKE_VAR,
         f"PACKER_FLAGS={flags}", "FORMATS=qcow2"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    again = out / NAME
    assert "provenance: " in done.stdout and "signed" in done.stdout, done.stdout[-2000:]
    checked = subprocess.run(
        [str(REPO / ".venv/bin/kiln"), "provenance", "verify", str(again), "--key", str(public)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert checked.returncode == 0 and f"{NAME}.qcow2: sha256 ok" in checked.stdout, (
        checked.stdout + checked.stderr
    )
    diff = subprocess.run(
        [str(REPO / ".venv/bin/kiln"), "diff", str(built_image.path), str(again), "--json"],
        capture_output=True, text=True,
    )  # fmt: skip
    result = json.loads(diff.stdout)
    assert result["artifacts"][".qcow2"]["equal"], result["artifacts"]
    for section in ("packages", "files"):
        assert not any(result[section][k] for k in ("added", "removed", "changed")), result[section]
    assert list(result["config"]) == ["formats"], result["config"]  # the one input that differs
    assert (built_image.path / f"{NAME}.qcow2.sha256").read_text().split()[0] == (
        again / f"{NAME}.qcow2.sha256"
    ).read_text().split()[0]
