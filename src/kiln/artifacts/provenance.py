"""Signed provenance: NAME.intoto.jsonl, an in-toto Statement v1 with a SLSA provenance v1 predicate, in a
DSSE envelope signed with the build's signing key (ed25519 or ECDSA P-256, PEM), or unsigned when none is
given (and the build says so).

    subject                 every artifact of the build with its sha256
    buildDefinition         the target, the resolved config (values only), the downloaded files with their
                            URL and sha256, the package set (as purls)
    runDetails.builder      the runner (chroot or vm), kiln's version and commit, the CI run when there is one

`verify(build_dir, public_key)` checks the signature and then every subject's digest against the files;
a malformed envelope or key is InputError (exit 2), a failed check VerifyError (exit 1) saying which.
DSSE: the signature is over PAE("DSSEv1", payloadType, payload), as the DSSE spec defines it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kiln import __version__
from kiln.core import inputs
from kiln.core.builddir import sha256_file
from kiln.core.errors import InputError, VerifyError

SUFFIX = ".intoto.jsonl"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT = "https://in-toto.io/Statement/v1"
SLSA = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://kiln.invalid/buildtypes/image/v1"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def load_private_key(path: Path) -> Any:
    """An ed25519 or ECDSA P-256 private key from a PEM file; InputError (exit 2) names the file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    data = inputs.read_bytes(path, "signing key")
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InputError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise InputError(f"{path}: a {type(key).__name__}; kiln signs with ed25519 or ECDSA P-256 keys")


def load_public_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    data = inputs.read_bytes(path, "public key")
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InputError(f"{path}: not a PEM public key ({exc})") from None
    if isinstance(key, ed25519.Ed25519PublicKey) or (
        isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    ):
        return key
    raise InputError(f"{path}: a {type(key).__name__}; kiln verifies ed25519 or ECDSA P-256 signatures")


def _keyid(public: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _sign(key: Any, message: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if isinstance(key, ec.EllipticCurvePrivateKey):
        return bytes(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return bytes(key.sign(message))


def _check(public: Any, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        else:
            public.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def downloads(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The files a build downloads with a pinned sha256: each `X_url` with its `X_sha256`."""
    out = []
    for key in sorted(values):
        if not key.endswith("_url") or not values[key]:
            continue
        digest = values.get(key[: -len("_url")] + "_sha256")
        if isinstance(digest, str) and len(digest) == 64:
            out.append({"uri": str(values[key]), "digest": {"sha256": digest}, "name": key[: -len("_url")]})
    return out


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name


def statement(
    root: Path,
    subjects: Sequence[Path],
    values: Mapping[str, Any],
    packages: Mapping[str, str],
    *,
    target: str,
    runner: str,
    commit: str,
    input_hash: str,
    ci: Mapping[str, str],
    started: float,
    finished: float,
) -> dict[str, Any]:
    import time

    def when(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    deps = downloads(values)
    deps += [{"uri": f"pkg:deb/{values.get('os_name') or 'debian'}/{n}@{v}?arch=amd64"} for n, v in
             sorted(packages.items())]  # fmt: skip
    return {
        "_type": STATEMENT,
        "subject": [{"name": _relative(p, root), "digest": {"sha256": sha256_file(p)}} for p in subjects],
        "predicateType": SLSA,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"target": target, "config": dict(values)},
                "internalParameters": {"input_hash": input_hash},
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {
                    "id": f"https://kiln.invalid/builders/{runner}",
                    "version": {"kiln": __version__, "commit": commit},
                    **({"builderDependencies": [{"uri": ci["url"]}]} if ci.get("url") else {}),
                },
                "metadata": {
                    "invocationId": ci.get("run", "") or input_hash,
                    "startedOn": when(started),
                    "finishedOn": when(finished),
                },
            },
        },
    }


def envelope(stmt: Mapping[str, Any], key: Any | None) -> dict[str, Any]:
    payload = json.dumps(stmt, sort_keys=True, separators=(",", ":")).encode()
    signatures = []
    if key is not None:
        sig = base64.b64encode(_sign(key, pae(PAYLOAD_TYPE, payload))).decode()
        signatures.append({"keyid": _keyid(key.public_key()), "sig": sig})
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": signatures,
    }


def write(path: Path, stmt: Mapping[str, Any], key: Any | None) -> Path:
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(envelope(stmt, key), sort_keys=True) + "\n")
    part.replace(path)
    return path


def read(path: Path) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """(envelope, statement, payload bytes); InputError for anything malformed."""
    return parse(inputs.read_text(path, "provenance"), str(path))


def parse(text: str, where: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """An envelope's text (from a file or a URL `where`) as (envelope, statement, payload bytes)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise InputError(f"{where}: want one DSSE envelope (one JSON line), got {len(lines)} lines")
    try:
        env = json.loads(lines[0])
        payload = base64.b64decode(env["payload"], validate=True)
        stmt = json.loads(payload)
        sigs = env["signatures"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{where}: not a DSSE envelope with an in-toto statement ({exc})") from None
    if not isinstance(env, dict) or env.get("payloadType") != PAYLOAD_TYPE or not isinstance(sigs, list):
        raise InputError(f"{where}: payloadType must be {PAYLOAD_TYPE} and signatures a list")
    if (
        not isinstance(stmt, dict)
        or stmt.get("_type") != STATEMENT
        or not isinstance(stmt.get("subject"), list)
    ):
        raise InputError(f"{where}: the payload is not an in-toto Statement v1 with subjects")
    return env, stmt, payload


def find(build_dir: Path) -> Path:
    found = sorted(build_dir.glob(f"*{SUFFIX}"))
    if len(found) != 1:
        raise InputError(f"{build_dir}: want one *{SUFFIX} file, found {len(found)}",
                         hint="builds since kiln writes provenance have NAME.intoto.jsonl")  # fmt: skip
    return found[0]


def check_signature(env: Mapping[str, Any], payload: bytes, public: Any, where: str, key: str) -> str:
    """VerifyError unless a signature over PAE(payload) verifies with `public` (named `key`)."""
    if not env["signatures"]:
        raise VerifyError(f"{where}: unsigned (the build was given no signing key)")
    message = pae(PAYLOAD_TYPE, payload)
    good = False
    for sig in env["signatures"]:
        try:
            raw = base64.b64decode(sig["sig"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{where}: malformed signature ({exc})") from None
        good = good or _check(public, raw, message)
    if not good:
        raise VerifyError(f"{where}: signature check failed: no signature verifies with {key}")
    return f"signature: ok ({key}, key id {_keyid(public)[:16]})"


def subjects(stmt: Mapping[str, Any], where: str) -> list[tuple[str, str]]:
    """(path in the build dir, sha256) per subject; InputError for a malformed one or a path outside."""
    out = []
    for subject in stmt["subject"]:
        name = subject.get("name") if isinstance(subject, dict) else None
        digest = subject.get("digest") if isinstance(subject, dict) else None
        want = digest.get("sha256") if isinstance(digest, dict) else None
        if not isinstance(name, str) or not isinstance(want, str):
            raise InputError(f"{where}: malformed subject {inputs.clip(subject)}")
        parts = Path(name).parts
        if not parts or name.startswith("/") or ".." in parts:
            raise InputError(f"{where}: subject {inputs.clip(name)} is not a path inside the build directory")
        out.append((name, want.lower()))
    return out


def verify(build_dir: Path, public_key: Path) -> list[str]:
    """Check the signature, then every subject's digest; returns what was checked (one line each)."""
    public = load_public_key(public_key)
    return verify_with(build_dir, public, str(public_key))


def verify_with(build_dir: Path, public: Any, key: str) -> list[str]:
    path = find(build_dir)
    env, stmt, payload = read(path)
    checked = [check_signature(env, payload, public, str(path), key)]
    for name, want in subjects(stmt, str(path)):
        artifact = build_dir / name
        if not artifact.is_file():
            raise VerifyError(f"{artifact}: subject missing (the provenance names it)")
        got = sha256_file(artifact)
        if got != want:
            raise VerifyError(f"{artifact}: digest check failed: sha256 {got}, the provenance says {want}")
        checked.append(f"{name}: sha256 ok")
    return checked


def verify_published(url: str, public_key: Path, say: Callable[[str], None] | None = None) -> list[str]:
    """The same checks on a published image, from the URL of any of its files: the envelope beside it and
    its signature; that the statement is about this image (every subject is a file of NAME, built for the
    Kubernetes version the folder and NAME say); then each subject that was published, streamed and hashed.
    Subjects a release did not publish (a qcow2 left out) are listed as not checked, but the file the URL
    names must be a subject and must check."""
    import urllib.parse

    from kiln.artifacts import layout
    from kiln.core import fetch

    public = load_public_key(public_key)
    folder, name = layout.published_image(url)
    where = f"{folder}/{name}{SUFFIX}"
    text = fetch.fetch(where)
    if text is None:
        raise VerifyError(f"{where}: no provenance published beside {url}")
    env, stmt, payload = parse(text.decode("utf-8", "replace"), where)
    checked = [check_signature(env, payload, public, where, str(public_key))]
    config = ((stmt.get("predicate") or {}).get("buildDefinition") or {}).get("externalParameters") or {}
    semver = str((config.get("config") or {}).get("kubernetes_semver") or "")
    version = folder.rsplit("/", 1)[-1]
    if not semver or not name.endswith(f"+kube-{semver}") or (version.startswith("v") and version != semver):
        raise VerifyError(
            f"{where}: built for Kubernetes {semver or '(none)'}, published as {name} under {version}/: "
            "the statement is not about this image"
        )
    named = layout.local_file(name, urllib.parse.unquote(url[len(folder) + 1 :]))
    wanted = {named} if named is not None and not named.endswith(SUFFIX) else set()
    for rel, want in subjects(stmt, where):
        obj = layout.object_file(name, rel)
        if obj is None:
            raise VerifyError(
                f"{where}: subject {inputs.clip(rel)} is not a file of {name} that kiln publishes"
            )
        target = f"{folder}/{urllib.parse.quote(obj)}"
        if obj == layout.SHARED_BASE:  # published once by content, at the bucket's top: bases/SHA256/
            target = f"{folder.rsplit('/', 2)[0]}/{layout.BASES}/{want}/base.squashfs"
        if say:
            say(f"hashing {target}")
        got = fetch.sha256_of(target)
        if got is None:
            checked.append(f"{rel}: not published ({target}); not checked")
            continue
        if got != want:
            raise VerifyError(f"{target}: digest check failed: sha256 {got}, the provenance says {want}")
        wanted.discard(rel)
        checked.append(f"{rel}: sha256 ok ({target})")
    if wanted:
        raise VerifyError(f"{url}: not a subject of {where} (or not published): the provenance does "
                          "not vouch for it")  # fmt: skip
    if len(checked) == 1 or all(line.endswith("not checked") for line in checked[1:]):
        count = len(stmt["subject"])
        raise VerifyError(f"{where}: none of its {count} subjects is published under {folder}/")
    return checked


def signing_status(build_dir: Path, public: Any | None) -> str:
    """For `kiln release --require-signature`: VerifyError unless the build's provenance is signed (and,
    given the release's key, signed by it and true of every subject)."""
    path = find(build_dir)
    env, _, payload = read(path)
    if public is None:
        if not env["signatures"]:
            raise VerifyError(f"{path}: unsigned (the build was given no signing key)")
        return f"{path.name}: signed"
    verify_with(build_dir, public, "the release's signing key")
    return f"{path.name}: signed with the release's key; every subject checked"


def public_of(private: Any) -> Any:
    return private.public_key()
