"""A small Google Cloud Storage JSON-API client: credentials, retries, resumable uploads.

Why not google-cloud-storage's Blob API: kiln needs per-chunk progress, a request and byte count for
every call, one retry policy for every request (429, 5xx, dropped connections) including the middle of a
resumable upload, and a verified final object (size + CRC32C) before anything else happens. The JSON API
is small; google-auth provides the credentials and the authorised `requests` session.

Credentials, in order: a service-account key file; anonymous when an endpoint override is given without a
key file (test servers, emulators); otherwise Application Default Credentials.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

from kiln.core import inputs, net
from kiln.core.errors import InputError, Interrupted, UploadError
from kiln.core.net import RETRYABLE_STATUS, RetryPolicy  # noqa: F401 - part of this module's API

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://storage.googleapis.com"
SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]


# A multiple of 256 KiB, as resumable uploads require. Chunks are streamed from the file, so a large one
# costs no memory, and fewer chunks mean fewer round trips (512 MiB to fake-gcs-server: 3-5 s in 512 MiB
# chunks, 7-12 s in 64 MiB ones). After a dropped connection the server's persisted count says where to go on.
CHUNK_SIZE = 256 * 1024 * 1024
_KEY_FIELDS = ("type", "client_email", "private_key", "token_uri")


class NoCredentials(InputError):
    """No key file and no Application Default Credentials."""


class PreconditionFailed(UploadError):
    """The server refused a write because the object's generation was not the expected one (HTTP 412)."""


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    name: str
    size: int
    generation: int
    crc32c: str | None
    sha256: str | None  # kiln's metadata.sha256, when the object was published by kiln
    updated: str
    metadata: dict[str, str] = field(default_factory=dict)  # all custom metadata (release: input_hash)

    @classmethod
    def from_resource(cls, res: dict[str, Any]) -> ObjectInfo:
        meta = res.get("metadata") or {}
        return cls(
            bucket=str(res.get("bucket", "")),
            name=str(res["name"]),
            size=int(res.get("size", 0)),
            generation=int(res.get("generation", 0)),
            crc32c=res.get("crc32c"),
            sha256=meta.get("sha256"),
            updated=str(res.get("updated", "")),
            metadata={str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {},
        )


def load_key_file(path: Path) -> Any:
    """Service-account credentials from a key file. Errors name the file and the field, never its contents."""
    from google.oauth2 import service_account

    text = inputs.read_text(path, "key file", inputs.KEY_LIMIT)  # regular file, <= 64 KiB, UTF-8
    try:
        info = json.loads(text)
    except ValueError as exc:
        # JSONDecodeError's message holds a position, never the document
        pos = f"line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "?"
        raise InputError(f"{path}: key file is not valid JSON ({pos})") from None
    except RecursionError:
        raise InputError(f"{path}: key file is nested too deeply") from None
    if not isinstance(info, dict):
        raise InputError(f"{path}: key file must hold a JSON object (a service-account key)")
    missing = [k for k in _KEY_FIELDS if not isinstance(info.get(k), str) or not info.get(k)]
    if missing:
        raise InputError(
            f"{path}: key file lacks {', '.join(missing)}", hint="download a JSON service-account key"
        )
    if info["type"] != "service_account":
        raise InputError(f"{path}: key file type is {info['type']!r}, expected 'service_account'")
    try:
        creds = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
    except (ValueError, TypeError):
        raise InputError(f"{path}: key file's private_key is not a valid PEM private key") from None
    creds._kiln_key_file = str(path)  # errors about refused grants name the file
    return creds


def credentials(key_file: Path | None, endpoint: str | None, anonymous: bool = False) -> Any:
    """Key file if given; anonymous for an endpoint override (emulators); else Application Default Creds."""
    if key_file is not None:
        return load_key_file(key_file)
    if anonymous or (endpoint and endpoint.rstrip("/") != DEFAULT_ENDPOINT):
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        creds, _project = google.auth.default(scopes=SCOPES)
    except DefaultCredentialsError:
        raise NoCredentials(
            "no GCS credentials: no key file given and Application Default Credentials are not configured",
            hint="pass --key-file FILE, set KEY_FILE, or run `gcloud auth application-default login`",
        ) from None
    return creds


def _error_text(resp: requests.Response) -> str:
    try:
        msg = resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        msg = resp.text
    return " ".join(str(msg).split())[:300]


@dataclass
class Stats:
    requests: int = 0
    bytes_sent: int = 0
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, requests: int = 0, bytes_sent: int = 0, retries: int = 0) -> None:
        with self.lock:
            self.requests += requests
            self.bytes_sent += bytes_sent
            self.retries += retries


def _network_hint(endpoint: str) -> str:
    if endpoint == DEFAULT_ENDPOINT:
        return "check the network and DNS of this machine, or give --endpoint for a GCS-compatible server"
    return f"check --endpoint {endpoint} (is the server running and reachable from here?)"


class Client:
    """One bucket-agnostic JSON-API client. Thread-safe enough for one upload per thread."""

    def __init__(
        self,
        creds: Any,
        endpoint: str = DEFAULT_ENDPOINT,
        retry: RetryPolicy | None = None,
        timeout: float = 120.0,
        chunk_size: int = CHUNK_SIZE,
        read_only: bool = False,
    ) -> None:
        """`read_only`: every request that would change the bucket is refused before it is sent (the CLI
        makes a read-only client for --dry-run and for listing)."""
        from google.auth.transport.requests import AuthorizedSession

        if chunk_size % (256 * 1024):
            raise InputError(f"chunk size {chunk_size}: must be a multiple of 256 KiB")
        self.endpoint = endpoint.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.chunk_size = chunk_size
        self.read_only = read_only
        self.stats = Stats()
        self.cancel = threading.Event()  # set: every request and upload block raises Interrupted
        self._local = threading.local()
        self._creds = creds
        from google.auth.credentials import AnonymousCredentials

        # AuthorizedSession would try to refresh anonymous credentials on a 401: plain requests for those
        anonymous = isinstance(creds, AnonymousCredentials)
        self._session_factory = requests.Session if anonymous else lambda: AuthorizedSession(creds)

    @property
    def _session(self) -> requests.Session:
        # requests sessions are not guaranteed thread-safe: one per thread
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = self._session_factory()
        return s  # type: ignore[no-any-return]

    # --- the one request path: counting, retries, error mapping ---------------------------------------

    def request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        ok: tuple[int, ...] = (200,),
        allow: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> requests.Response:
        """Send, retrying RETRYABLE_STATUS and dropped connections. `allow` statuses are returned too."""
        from google.auth.exceptions import RefreshError, TransportError

        if self.read_only and method not in ("GET", "HEAD"):
            raise UploadError(f"{what}: refusing {method}: this client is read-only (--dry-run or a listing)")
        body = kwargs.get("data")
        sent = len(body) if isinstance(body, bytes | bytearray) else 0
        for attempt in range(self.retry.attempts):
            self._check_cancel()
            self.stats.add(requests=1, bytes_sent=sent)
            try:
                resp = self._session.request(
                    method, url, timeout=(net.CONNECT_TIMEOUT, self.timeout), **kwargs
                )
            except RefreshError as exc:
                source = getattr(self._creds, "_kiln_key_file", None)
                whose = f"key file {source}" if source else "credentials"
                detail = inputs.clip(str(exc.args[0]) if exc.args else type(exc).__name__, 200)
                raise InputError(
                    f"{what}: {whose}: refused by the token endpoint ({detail})",
                    hint="check that the service account and its key still exist and are enabled",
                ) from None
            except (requests.ConnectionError, requests.Timeout, TransportError) as exc:
                failure = net.describe(exc, url)
                if not failure.retryable:  # a name that does not resolve, a refused connection: say so now
                    raise UploadError(f"{what}: {failure.cause}", hint=_network_hint(self.endpoint)) from None
                problem = failure.cause
            else:
                if resp.status_code in ok or resp.status_code in allow:
                    return resp
                if resp.status_code == 412:
                    raise PreconditionFailed(f"{what}: precondition failed (412): the object changed")
                if resp.status_code == 401:
                    raise InputError(f"{what}: not authorised (401): {_error_text(resp)}")
                if resp.status_code == 403:
                    raise UploadError(f"{what}: permission denied (403): {_error_text(resp)}")
                if resp.status_code not in RETRYABLE_STATUS:
                    raise UploadError(f"{what}: HTTP {resp.status_code}: {_error_text(resp)}")
                problem = f"HTTP {resp.status_code}"
            if attempt + 1 == self.retry.attempts:
                raise UploadError(f"{what}: giving up after {self.retry.attempts} attempts (last: {problem})")
            delay = self.retry.delay(attempt)
            log.info("%s: %s, retrying in %.1fs", what, problem, delay)
            self.stats.add(retries=1)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Interrupted("interrupted")

    def _o(self, bucket: str, name: str) -> str:
        return f"{self.endpoint}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}"

    def check_bucket(self, bucket: str) -> None:
        """InputError naming the bucket when it does not exist (asked when a 404 leaves it open whether the
        object or the whole bucket is missing)."""
        resp = self.request(
            "GET", f"{self.endpoint}/storage/v1/b/{bucket}", f"gs://{bucket}", allow=(403, 404)
        )
        if resp.status_code == 404:
            raise InputError(
                f"gs://{bucket}: no such bucket",
                hint="check the bucket name (--bucket, KILN_GCS_BUCKET or gcs_bucket), or create the bucket",
            )

    # --- objects ---------------------------------------------------------------------------------------

    def get_object(self, bucket: str, name: str) -> ObjectInfo | None:
        resp = self.request("GET", self._o(bucket, name), f"gs://{bucket}/{name}", allow=(404,))
        return None if resp.status_code == 404 else ObjectInfo.from_resource(resp.json())

    def read_object(
        self, bucket: str, name: str, max_bytes: int = 1 << 20
    ) -> tuple[bytes, int | None] | None:
        """Contents (up to max_bytes) and generation (from X-Goog-Generation, when the server sends it)."""
        resp = self.request(
            "GET", self._o(bucket, name), f"gs://{bucket}/{name}", params={"alt": "media"}, allow=(404,)
        )
        if resp.status_code == 404:
            return None
        gen = resp.headers.get("X-Goog-Generation")
        return resp.content[:max_bytes], int(gen) if gen and gen.isdigit() else None

    def delete(self, bucket: str, name: str, if_generation_match: int | None = None) -> bool:
        params = {} if if_generation_match is None else {"ifGenerationMatch": str(if_generation_match)}
        resp = self.request(
            "DELETE",
            self._o(bucket, name),
            f"gs://{bucket}/{name}",
            ok=(200, 204),
            allow=(404,),
            params=params,
        )
        return resp.status_code != 404

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        token: str | None = None
        while True:
            params = {"prefix": prefix, "maxResults": "1000"}
            if token:
                params["pageToken"] = token
            resp = self.request(
                "GET", f"{self.endpoint}/storage/v1/b/{bucket}/o", f"gs://{bucket}/{prefix}", params=params,
                allow=(404,),
            )  # fmt: skip
            if resp.status_code == 404:  # listing a bucket that is not there
                self.check_bucket(bucket)
                raise UploadError(f"gs://{bucket}/{prefix}: HTTP 404 listing the bucket")
            body = resp.json()
            for item in body.get("items", []):
                yield ObjectInfo.from_resource(item)
            token = body.get("nextPageToken")
            if not token:
                return

    def put_small(
        self,
        bucket: str,
        name: str,
        data: bytes,
        content_type: str = "text/plain",
        if_generation_match: int | None = None,
        metadata: dict[str, str] | None = None,
        crc32c: str | None = None,
    ) -> ObjectInfo:
        """A single-request multipart upload (for sidecars); the server checks crc32c when given."""
        resource: dict[str, Any] = {"name": name, "contentType": content_type}
        if metadata:
            resource["metadata"] = metadata
        if crc32c:
            resource["crc32c"] = crc32c
        boundary = f"kiln-{uuid.uuid4().hex}"
        body = b"".join(
            [
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
                json.dumps(resource).encode(),
                f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode(),
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        params = {"uploadType": "multipart"}
        if if_generation_match is not None:
            params["ifGenerationMatch"] = str(if_generation_match)
        resp = self.request(
            "POST",
            f"{self.endpoint}/upload/storage/v1/b/{bucket}/o",
            f"gs://{bucket}/{name}",
            params=params,
            data=body,
            headers={"Content-Type": f"multipart/related; boundary={boundary}"},
        )
        return ObjectInfo.from_resource(resp.json())

    def upload_resumable(
        self,
        bucket: str,
        name: str,
        source: IO[bytes],
        size: int,
        *,
        crc32c: str,
        metadata: dict[str, str],
        content_type: str = "application/octet-stream",
        if_generation_match: int | None = None,
        on_progress: Callable[[int], None] | None = None,
        tally: Stats | None = None,
    ) -> ObjectInfo:
        """Resumable upload of `size` bytes from `source` (seekable).

        The object resource sent at initiation carries crc32c: GCS checks the finished object against it
        and refuses to create the object on a mismatch, so a corrupted upload never becomes visible.
        Chunk failures (429, 5xx, dropped connections) are retried: the session is asked how much it
        persisted (`Content-Range: bytes */SIZE`) and the upload goes on from there.
        """
        what = f"gs://{bucket}/{name}"
        resource = {"name": name, "contentType": content_type, "crc32c": crc32c, "metadata": metadata}
        params = {"uploadType": "resumable", "name": name}
        if if_generation_match is not None:
            params["ifGenerationMatch"] = str(if_generation_match)
        resp = self.request(
            "POST",
            f"{self.endpoint}/upload/storage/v1/b/{bucket}/o",
            what,
            params=params,
            json=resource,
            headers={"X-Upload-Content-Type": content_type, "X-Upload-Content-Length": str(size)},
        )
        session_url = resp.headers.get("Location")
        if not session_url:
            raise UploadError(f"{what}: the server started no resumable session (no Location header)")

        offset = 0
        failures = 0
        while True:
            length = min(self.chunk_size, size - offset)
            # streamed from the file (no chunk held in memory); progress as the bytes go out
            self._check_cancel()
            body = _Slice(source, offset, length, on_progress, self.cancel)
            end = offset + length - 1
            headers = {
                "Content-Range": f"bytes {offset}-{end}/{size}" if length else f"bytes */{size}",
                "Content-Length": str(length),
            }
            problem = ""
            self.stats.add(requests=1, bytes_sent=length)
            if tally is not None:
                tally.add(requests=1, bytes_sent=length)
            try:
                r = self._session.put(
                    session_url,
                    data=body if length else b"",
                    headers=headers,
                    timeout=(net.CONNECT_TIMEOUT, self.timeout),
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem = type(exc).__name__
            else:
                if r.status_code in (200, 201):
                    if on_progress:
                        on_progress(size)
                    return ObjectInfo.from_resource(r.json())
                if r.status_code == 308:
                    new = _persisted(r)
                    failures = 0 if new > offset else failures + 1
                    offset = new
                    if on_progress:
                        on_progress(offset)
                    if failures < self.retry.attempts:
                        continue
                    problem = "no progress"
                elif r.status_code == 412:
                    raise PreconditionFailed(f"{what}: precondition failed (412): the object changed")
                elif r.status_code in (404, 410):
                    raise UploadError(f"{what}: the upload session expired ({r.status_code})")
                elif r.status_code not in RETRYABLE_STATUS:
                    raise UploadError(f"{what}: HTTP {r.status_code}: {_error_text(r)}")
                else:
                    problem = f"HTTP {r.status_code}"
            failures += 1
            if failures >= self.retry.attempts:
                raise UploadError(f"{what}: giving up after {failures} failed attempts (last: {problem})")
            delay = self.retry.delay(failures - 1)
            log.info("%s: %s at byte %d, resuming in %.1fs", what, problem, offset, delay)
            self.stats.add(retries=1)
            time.sleep(delay)
            status = self.request(
                "PUT",
                session_url,
                what,
                ok=(308,),
                allow=(200, 201),
                data=b"",
                headers={"Content-Range": f"bytes */{size}"},
            )
            if status.status_code in (200, 201):
                if on_progress:
                    on_progress(size)
                return ObjectInfo.from_resource(status.json())
            offset = _persisted(status)
            if on_progress:
                on_progress(offset)


class _Slice:
    """`length` bytes of `source` from `offset`, read in large blocks, for requests to stream as a body."""

    def __init__(
        self,
        source: IO[bytes],
        offset: int,
        length: int,
        on_progress: Callable[[int], None] | None,
        cancel: threading.Event,
    ) -> None:
        self.source, self.left, self.on_progress, self.cancel = source, length, on_progress, cancel
        self.length = length
        self.pos = offset
        source.seek(offset)

    def __len__(self) -> int:
        return self.length

    def read(self, n: int = -1) -> bytes:
        if self.cancel.is_set():
            raise Interrupted("interrupted")
        n = self.left if n is None or n < 0 else min(max(n, 1 << 20), self.left)
        data = self.source.read(n) if n else b""
        self.left -= len(data)
        self.pos += len(data)
        if self.on_progress and data:
            self.on_progress(self.pos)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while block := self.read(1 << 20):
            yield block


def _persisted(resp: requests.Response) -> int:
    """Bytes the server holds, from a 308's `Range: bytes=0-N` (absent when it holds nothing)."""
    rng = resp.headers.get("Range", "")
    if not rng.startswith("bytes=0-"):
        return 0
    return int(rng.split("-", 1)[1]) + 1
