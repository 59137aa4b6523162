"""kiln upload against real GCS-speaking servers (fake-gcs-server, gcp-storage-emulator) started here."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import google_crc32c
import pytest

from gcs_servers import (
    BUCKET,
    Emulator,
    FakeGcs,
    FaultProxy,
    TokenServer,
    get_object,
    make_build_dir,
    object_names,
)
from gcs_servers import read_object as server_read
from kiln import cli
from kiln.cli import publish as cli_publish
from kiln.core.builddir import BuildDir
from kiln.core.errors import InputError
from kiln.publish import gcs, upload

REPO = Path(__file__).resolve().parents[1]
KILN = [sys.executable, "-m", "kiln"]


# --- unit tests: no server ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "channel"),
    [
        ("v1.30.1", "release"),
        ("v1.30.1-2", "release"),
        ("v10.200.3000-17", "release"),
        ("v1.30.1-rc.0", "ci"),
        ("v1.31.0-alpha.1.123+abcdef", "ci"),
        ("1.30.1", "ci"),
        ("v1.30", "ci"),
        ("v1.30.1-", "ci"),
    ],
)
def test_channel_from_version(version: str, channel: str) -> None:
    assert upload.channel_for(version) == channel
    assert upload.channel_for(version, "ci") == "ci"
    assert upload.channel_for(version, "release") == "release"


@pytest.mark.parametrize(
    "size", [0, 1, upload.HASH_BUFFER - 1, upload.HASH_BUFFER, 2 * upload.HASH_BUFFER + 7]
)
def test_hash_file_one_pass_matches_reference(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    f = tmp_path / "blob"
    f.write_bytes(data)
    seen: list[int] = []
    h = upload.hash_file(f, seen.append)
    assert h.size == size
    assert h.sha256 == hashlib.sha256(data).hexdigest()
    assert h.crc32c == google_crc32c.value(data)
    assert base64.b64decode(h.crc32c_b64) == google_crc32c.Checksum(data).digest()
    assert (seen[-1] if seen else 0) == size


def test_plan_rejects_unknown_and_missing_artifacts(tmp_path: Path) -> None:
    bd = BuildDir.open(make_build_dir(tmp_path, size=1024))
    with pytest.raises(InputError, match="unknown artifact 'dvd'"):
        upload.plan(bd, upload.Options(artifacts=("ova", "dvd")))
    bd.qcow2.unlink()
    with pytest.raises(InputError, match=r"\.qcow2: missing"):
        upload.plan(bd, upload.Options(artifacts=("qcow2",)))
    channel, items = upload.plan(bd, upload.Options(artifacts=("ova", "manifest")))
    assert channel == "release"
    assert [i.object_name for i in items] == [
        "release/v1.30.1/debian-12+kube-v1.30.1.ova",
        "release/v1.30.1/debian-12+kube-v1.30.1.packer-manifest.json",
    ]


# --- servers ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> FakeGcs:
    server = FakeGcs()
    yield server
    server.stop()


@pytest.mark.parametrize("holder", ["silent", "answering"])
def test_the_test_servers_start_when_a_port_they_were_given_is_taken(monkeypatch, holder: str) -> None:
    """fake-gcs-server takes its ports on the command line: one taken between "found free" and the server's
    bind makes it exit, and it is started again on new ports; a holder that answers HTTP is not taken for
    the server. The emulator binds port 0 and keeps it."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import gcs_servers

    class Other(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = b'{"kind": "something#else"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    real = gcs_servers.free_port
    with contextlib.ExitStack() as stack:
        if holder == "silent":  # listens, never answers
            taken = stack.enter_context(socket.socket())
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            ports = iter([busy, busy])
        else:  # another HTTP server on the HTTP port
            other = ThreadingHTTPServer(("127.0.0.1", 0), Other)
            threading.Thread(target=other.serve_forever, daemon=True).start()
            stack.callback(other.server_close)
            stack.callback(other.shutdown)
            busy = other.server_address[1]
            ports = iter([real(), busy])
        monkeypatch.setattr(gcs_servers, "free_port", lambda: next(ports, None) or real())
        server = FakeGcs()
        try:
            assert busy not in (server.http_port, server.https_port)
            assert server.proc.poll() is None
            assert object_names(server.url, BUCKET) == []
        finally:
            server.stop()
    emulated = Emulator()
    try:
        assert emulated.port != 0 and object_names(emulated.url, BUCKET) == []
    finally:
        emulated.stop()


@pytest.fixture(scope="module")
def emulator() -> Emulator:
    server = Emulator()
    yield server
    server.stop()


def kiln_upload(
    endpoint: str, build_dir: Path, *extra: str, env: dict | None = None, pre: tuple[str, ...] = ()
) -> tuple[int, dict, str]:
    """Run `kiln upload --json` as a user would; returns (exit code, parsed JSON or {}, stderr)."""
    argv = [
        *KILN,
        *pre,
        "upload",
        str(build_dir),
        "--endpoint",
        endpoint,
        "--bucket",
        BUCKET,
        "--json",
        *extra,
    ]
    full_env = {k: v for k, v in os.environ.items() if k not in ("KEY_FILE", "KILN_GCS_BUCKET")}
    full_env.update(env or {})
    r = subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=120)
    try:
        out = json.loads(r.stdout) if r.stdout.strip() else {}
    except ValueError:
        out = {"raw": r.stdout}
    return r.returncode, out, r.stderr


def actions(out: dict) -> dict[str, str]:
    return {r["artifact"]: r["action"] for r in out["results"]}


@pytest.mark.gcs
@pytest.mark.parametrize("server", ["fake", "emulator"])
def test_upload_then_unchanged_rerun_sends_nothing(
    tmp_path: Path, request: pytest.FixtureRequest, server: str
) -> None:
    srv = request.getfixturevalue(server)
    bd = make_build_dir(tmp_path, version=f"v1.30.{1 if server == 'fake' else 2}", size=5 * 1024 * 1024)
    name = bd.name
    ova = (bd / f"{name}.ova").read_bytes()
    code, out, err = kiln_upload(srv.url, bd)
    assert code == 0, err
    assert out["channel"] == "release"
    assert actions(out) == {"ova": "uploaded"}
    for line in ("hashing", "uploading: 50%", "sidecar", "uploaded new"):  # progress when not on a terminal
        assert line in err, err
    obj_name = f"release/{out['version']}/{name}.ova"
    obj = get_object(srv.url, BUCKET, obj_name)
    assert obj is not None
    assert int(obj["size"]) == len(ova)
    assert obj["metadata"]["sha256"] == hashlib.sha256(ova).hexdigest()
    assert obj["crc32c"] == base64.b64encode(google_crc32c.Checksum(ova).digest()).decode()
    assert server_read(srv.url, BUCKET, obj_name) == ova
    # image-builder compatible sidecar: bare hex, equal to the build's own .ova.sha256
    assert server_read(srv.url, BUCKET, obj_name + ".sha256") == (bd / f"{name}.ova.sha256").read_bytes()
    assert out["bytes_sent"] >= len(ova)

    code, out2, err = kiln_upload(srv.url, bd)
    assert code == 0, err
    assert actions(out2) == {"ova": "skipped"}
    assert out2["bytes_sent"] == 0
    assert out2["requests"] <= 3  # object resource + sidecar (+ sidecar generation where the server hides it)
    assert get_object(srv.url, BUCKET, obj_name)["generation"] == obj["generation"]


@pytest.mark.gcs
def test_ci_layout_forcing_flags_and_all_artifacts(tmp_path: Path, fake: FakeGcs) -> None:
    bd = make_build_dir(tmp_path, version="v1.31.0-alpha.1.5+0123abcd", size=300_000)
    code, out, err = kiln_upload(fake.url, bd, "--all")
    assert code == 0, err
    assert out["channel"] == "ci"
    assert set(actions(out).values()) == {"uploaded"}
    prefix = "ci/v1.31.0-alpha.1.5+0123abcd/"
    assert object_names(fake.url, BUCKET, prefix) == sorted(
        prefix + bd.name + suffix + side
        for suffix in (".ova", ".qcow2", ".packages", ".packer-manifest.json")
        for side in ("", ".sha256")
    )
    rel = make_build_dir(tmp_path / "r", version="v1.29.9", size=1000)
    code, out, err = kiln_upload(fake.url, rel, "--ci")
    assert code == 0 and out["channel"] == "ci", err
    assert get_object(fake.url, BUCKET, f"ci/v1.29.9/{rel.name}.ova") is not None
    code, out, err = kiln_upload(fake.url, bd, "--release", "--artifacts", "packages")
    assert code == 0 and out["channel"] == "release", err
    assert get_object(fake.url, BUCKET, f"release/v1.31.0-alpha.1.5+0123abcd/{bd.name}.packages") is not None


@pytest.mark.gcs
def test_release_is_create_only_unless_force(tmp_path: Path, fake: FakeGcs) -> None:
    bd = make_build_dir(tmp_path, version="v1.28.4", size=200_000)
    name = f"release/v1.28.4/{bd.name}.ova"
    assert kiln_upload(fake.url, bd)[0] == 0
    before = get_object(fake.url, BUCKET, name)
    side_before = get_object(fake.url, BUCKET, name + ".sha256")

    other = make_build_dir(tmp_path / "other", version="v1.28.4", size=200_000, seed=1)
    code, out, err = kiln_upload(fake.url, other, "--dry-run")
    assert code == 1 and actions(out) == {"ova": "would-refuse"}
    code, out, err = kiln_upload(fake.url, other)
    assert code == 1
    assert actions(out) == {"ova": "refused"}
    assert "--force" in out["results"][0]["detail"] and "refused" in err
    assert out["bytes_sent"] == 0
    assert get_object(fake.url, BUCKET, name) == before
    assert get_object(fake.url, BUCKET, name + ".sha256") == side_before

    code, out, err = kiln_upload(fake.url, other, "--force")
    assert code == 0, err
    assert actions(out) == {"ova": "uploaded"}
    new_sha = (other / f"{other.name}.ova.sha256").read_text()
    assert get_object(fake.url, BUCKET, name)["metadata"]["sha256"] == new_sha
    assert server_read(fake.url, BUCKET, name + ".sha256") == new_sha.encode()


@pytest.mark.gcs
def test_ci_objects_are_replaced(tmp_path: Path, fake: FakeGcs) -> None:
    a = make_build_dir(tmp_path / "a", version="v1.32.0-beta.0", size=100_000, seed=1)
    b = make_build_dir(tmp_path / "b", version="v1.32.0-beta.0", size=120_000, seed=2)
    assert kiln_upload(fake.url, a)[0] == 0
    code, out, err = kiln_upload(fake.url, b)
    assert code == 0, err
    assert out["results"][0]["detail"] == "replaced"
    name = f"ci/v1.32.0-beta.0/{b.name}.ova"
    assert server_read(fake.url, BUCKET, name) == (b / f"{b.name}.ova").read_bytes()
    assert server_read(fake.url, BUCKET, name + ".sha256") == (b / f"{b.name}.ova.sha256").read_bytes()


@pytest.mark.gcs
@pytest.mark.parametrize("where", ["global", "subcommand"])
def test_dry_run_writes_nothing(tmp_path: Path, fake: FakeGcs, where: str) -> None:
    version = "v1.27.3" if where == "global" else "v1.27.4"
    bd = make_build_dir(tmp_path, version=version, size=50_000)
    if where == "global":
        code, out, err = kiln_upload(fake.url, bd, pre=("--dry-run",))
    else:
        code, out, err = kiln_upload(fake.url, bd, "--dry-run")
    assert code == 0, err
    assert out["dry_run"] is True and actions(out) == {"ova": "would-upload"} and out["bytes_sent"] == 0
    assert object_names(fake.url, BUCKET, f"release/{version}/") == []


@pytest.mark.gcs
def test_missing_sidecar_is_repaired_without_payload(tmp_path: Path, fake: FakeGcs) -> None:
    """A run that died between object and sidecar: the rerun writes only the sidecar."""
    bd = make_build_dir(tmp_path, version="v1.26.15", size=400_000)
    name = f"release/v1.26.15/{bd.name}.ova"
    assert kiln_upload(fake.url, bd)[0] == 0
    gen = get_object(fake.url, BUCKET, name)["generation"]
    assert gcs.Client(gcs.credentials(None, fake.url), fake.url).delete(BUCKET, name + ".sha256")
    code, out, err = kiln_upload(fake.url, bd)
    assert code == 0, err
    assert actions(out) == {"ova": "sidecar-written"}
    assert out["results"][0]["bytes_sent"] == 0
    assert get_object(fake.url, BUCKET, name)["generation"] == gen
    assert server_read(fake.url, BUCKET, name + ".sha256") == (bd / f"{bd.name}.ova.sha256").read_bytes()


@pytest.mark.gcs
def test_object_published_by_gsutil_style_tool_is_recognised_by_sidecar(
    tmp_path: Path, fake: FakeGcs
) -> None:
    """image-builder's uploader leaves no sha256 metadata, only the sidecar: kiln still skips."""
    bd = make_build_dir(tmp_path, version="v1.25.16", size=100_000)
    name = f"release/v1.25.16/{bd.name}.ova"
    client = gcs.Client(gcs.credentials(None, fake.url), fake.url)
    data = (bd / f"{bd.name}.ova").read_bytes()
    client.put_small(BUCKET, name, data, content_type="application/octet-stream")
    client.put_small(BUCKET, name + ".sha256", (bd / f"{bd.name}.ova.sha256").read_bytes())
    code, out, err = kiln_upload(fake.url, bd)
    assert code == 0, err
    assert actions(out) == {"ova": "skipped"} and out["bytes_sent"] == 0


@pytest.mark.gcs
def test_local_checksum_mismatch_is_bad_input_and_sends_nothing(tmp_path: Path, fake: FakeGcs) -> None:
    bd = make_build_dir(tmp_path, version="v1.24.17", size=10_000)
    (bd / f"{bd.name}.ova.sha256").write_text("0" * 64)
    code, out, err = kiln_upload(fake.url, bd)
    assert code == 2
    assert f"{bd.name}.ova.sha256: says {'0' * 64}" in err
    assert object_names(fake.url, BUCKET, "release/v1.24.17/") == []


def test_build_dir_without_manifest_is_exit_2(tmp_path: Path) -> None:
    bd = make_build_dir(tmp_path, size=10)
    (bd / "packer-manifest.json").unlink()
    assert cli.main(["upload", str(bd), "--endpoint", "http://127.0.0.1:9"]) == 2


# --- credentials ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens() -> TokenServer:
    server = TokenServer()
    yield server
    server.stop()


def _secret_fragments(key_file: Path) -> list[str]:
    info = json.loads(key_file.read_text())
    body = [ln for ln in info["private_key"].splitlines() if ln and "-----" not in ln]
    return [info["private_key_id"], *body[:3], body[-1]]


@pytest.mark.gcs
def test_key_file_auth_through_local_token_endpoint(
    tmp_path: Path, fake: FakeGcs, tokens: TokenServer
) -> None:
    proxy = FaultProxy(fake.url, require_token=tokens.tokens)
    try:
        key = tokens.key_file(tmp_path / "key.json")
        bd = make_build_dir(tmp_path, version="v1.23.17", size=300_000)
        # no credentials: the server (proxy) says 401 -> bad credentials, exit 2
        code, _, err = kiln_upload(proxy.url, bd)
        assert code == 2 and "401" in err
        # KEY_FILE from the environment, --debug on: works, and the key never shows
        code, out, err = kiln_upload(proxy.url, bd, env={"KEY_FILE": str(key)}, pre=("--debug",))
        assert code == 0, err
        assert actions(out) == {"ova": "uploaded"}
        assert tokens.grants and tokens.grants[-1]["iss"] == "uploader@kiln-test.iam.gserviceaccount.com"
        assert "devstorage" in tokens.grants[-1]["scope"]
        assert all(
            s.headers.get("authorization", "").startswith("Bearer ya29.test-") for s in proxy.seen[-3:]
        )
        for fragment in _secret_fragments(key):
            assert fragment not in err and fragment not in json.dumps(out)
        assert "ya29.test-" not in err, "access tokens are secrets too"
        assert "assertion=" not in err
    finally:
        proxy.stop()


@pytest.mark.gcs
def test_hack_image_upload_wrapper(tmp_path: Path, fake: FakeGcs, tokens: TokenServer) -> None:
    """The anchor's entry point: hack/image-upload.py --key-file KEY_FILE BUILD_DIR."""
    proxy = FaultProxy(fake.url, require_token=tokens.tokens)
    try:
        key = tokens.key_file(tmp_path / "key.json")
        bd = make_build_dir(tmp_path, version="v1.22.17", size=100_000)
        env = dict(os.environ, KILN_GCS_ENDPOINT=proxy.url, KILN_GCS_BUCKET=BUCKET)
        env.pop("KEY_FILE", None)
        r = subprocess.run(
            [sys.executable, str(REPO / "hack" / "image-upload.py"), "--key-file", str(key), str(bd)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert "uploaded" in r.stdout
        assert get_object(fake.url, BUCKET, f"release/v1.22.17/{bd.name}.ova.sha256") is not None
        r = subprocess.run(
            [sys.executable, str(REPO / "hack" / "image-upload.py"), str(bd)],
            capture_output=True,
            text=True,
            env=dict(env, KEY_FILE=str(key)),
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert "skipped" in r.stdout
    finally:
        proxy.stop()


def _key_variants(tmp_path: Path, tokens_pem: str) -> dict[str, tuple[Path, str]]:
    good = {
        "type": "service_account",
        "private_key_id": "feedface" * 5,
        "private_key": tokens_pem,
        "client_email": "x@y.iam.gserviceaccount.com",
        "token_uri": "http://127.0.0.1:9/token",
    }
    cases: dict[str, tuple[Path, str]] = {}

    def put(label: str, content: str, expect: str) -> None:
        p = tmp_path / f"{label}.json"
        p.write_text(content)
        cases[label] = (p, expect)

    cases["missing"] = (tmp_path / "nope.json", "key file does not exist")
    (tmp_path / "adir.json").mkdir()
    cases["unreadable"] = (tmp_path / "adir.json", "key file is a directory, not a regular file")
    put("not-json", tokens_pem, "key file is not valid JSON (line 1 column 1)")
    put("list", "[1, 2]", "key file must hold a JSON object")
    put(
        "no-email",
        json.dumps({k: v for k, v in good.items() if k != "client_email"}),
        "key file lacks client_email",
    )
    put("user-creds", json.dumps(dict(good, type="authorized_user")), "key file type is 'authorized_user'")
    mangled = tokens_pem.replace(tokens_pem.splitlines()[5], "A" * 64)
    put("bad-key", json.dumps(dict(good, private_key=mangled)), "key file's private_key is not a valid PEM")
    return cases


def test_bad_key_files_are_exit_2_and_never_echoed(
    tmp_path: Path, tokens: TokenServer, capsys: pytest.CaptureFixture[str]
) -> None:
    bd = make_build_dir(tmp_path / "b", size=10)
    for label, (path, expect) in _key_variants(tmp_path, tokens.private_pem).items():
        code = cli.main(
            ["--debug", "upload", str(bd), "--key-file", str(path), "--endpoint", "http://127.0.0.1:9"]
        )
        out, err = capsys.readouterr()
        assert code == 2, label
        assert f"{path}: {expect}" in err, (label, err)
        for line in tokens.private_pem.splitlines()[1:-1]:
            assert line not in out + err, label


def test_no_credentials_at_all_is_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No key file, the real endpoint, no ADC: a clear error before anything is read remotely."""
    for var in ("KEY_FILE", "GOOGLE_APPLICATION_CREDENTIALS", "KILN_GCS_ENDPOINT", "STORAGE_EMULATOR_HOST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(InputError, match="no GCS credentials"):
        gcs.credentials(None, None)
    # writers stop there (exit 2); readers list public buckets anonymously
    bd = make_build_dir(tmp_path, size=10)
    assert cli.main(["upload", str(bd)]) == 2
    args = cli.build_parser().parse_args(["images", "ls"])
    client = cli_publish._gcs_client(args, read_only=True)
    assert client.endpoint == gcs.DEFAULT_ENDPOINT
    assert type(client._session).__name__ == "Session"  # plain requests: no credentials attached


# --- compatibility: gsutil ------------------------------------------------------------------------------


@pytest.mark.gcs
def test_gsutil_rsync_sees_nothing_to_do_after_kiln(tmp_path: Path, fake: FakeGcs) -> None:
    gsutil = shutil.which("gsutil")
    if gsutil is None:
        pytest.skip("gsutil is not installed on this machine (Google Cloud SDK); nothing to compare against")
    bd = make_build_dir(tmp_path, version="v1.21.14", size=2 * 1024 * 1024)
    assert kiln_upload(fake.url, bd)[0] == 0
    boto = tmp_path / "boto"
    boto.write_text(
        "[Credentials]\n"
        f"gs_json_host = 127.0.0.1\ngs_json_port = {fake.https_port}\n"
        f"gs_host = 127.0.0.1\ngs_port = {fake.https_port}\n"
        "[Boto]\nhttps_validate_certificates = False\nnum_retries = 1\n"
        "[GSUtil]\nprefer_api = json\ndefault_project_id = kiln-test\n"
    )
    env = dict(
        os.environ,
        BOTO_CONFIG=str(boto),
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
        CLOUDSDK_CORE_PASS_CREDENTIALS_TO_GSUTIL="false",
        CLOUDSDK_CORE_DISABLE_PROMPTS="1",
    )
    # the build dir holds what kiln published (NAME.ova + NAME.ova.sha256) and files it did not
    argv = [
        gsutil,
        "rsync",
        "-n",
        "-c",
        "-x",
        r".*\.(qcow2|packages|json|log)$",
        str(bd),
        "gs://kiln-test/release/v1.21.14",
    ]
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Would" not in r.stdout + r.stderr, r.stderr
    # the same command does see a change: the comparison is real
    (bd / f"{bd.name}.ova").write_bytes(os.urandom(2 * 1024 * 1024))
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert f"Would copy file://{bd}/{bd.name}.ova" in r.stdout + r.stderr


@pytest.mark.gcs
def test_key_the_token_endpoint_refuses_is_exit_2(tmp_path: Path, fake: FakeGcs, tokens: TokenServer) -> None:
    """A well-formed key whose signature the token endpoint rejects (revoked or wrong key): exit 2."""
    other = TokenServer()  # a different RSA key, same token endpoint as `tokens`
    try:
        info = json.loads(other.key_file(tmp_path / "other.json").read_text())
        info["token_uri"] = tokens.url
        key = tmp_path / "revoked.json"
        key.write_text(json.dumps(info))
        bd = make_build_dir(tmp_path, version="v1.14.10", size=1000)
        code, _, err = kiln_upload(fake.url, bd, "--key-file", str(key))
        assert code == 2
        assert f"key file {key}: refused by the token endpoint" in err and "invalid_grant" in err
        assert info["private_key"].splitlines()[1] not in err
        assert object_names(fake.url, BUCKET, "release/v1.14.10/") == []
    finally:
        other.stop()
