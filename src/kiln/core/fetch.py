"""Reading small files and streaming large ones over HTTP(S), with kiln's retry rules (kiln.core.net):
a 404 is "absent" (None), retryable answers and dropped connections are retried, anything else is
UploadError (exit 1) naming the URL and the cause; a file that cannot be written is BuildError."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from kiln.core import net
from kiln.core.errors import BuildError, UploadError
from kiln.core.net import RETRYABLE_STATUS, RetryPolicy

BLOCK = 64 * 1024


def get(
    s: requests.Session, url: str, retry: RetryPolicy, timeout: float, stream: bool = False
) -> requests.Response | None:
    """GET with kiln's retry rules; None for 404, UploadError (exit 1) for anything else that fails."""
    problem = ""
    for attempt in range(retry.attempts):
        try:
            r = s.get(url, timeout=(net.CONNECT_TIMEOUT, timeout), stream=stream)
        except (requests.ConnectionError, requests.Timeout) as exc:
            failure = net.describe(exc, url)
            if not failure.retryable:
                raise UploadError(f"{url}: {failure.cause}") from None
            problem = failure.cause
        else:
            if r.status_code == 200:
                return r
            r.close()
            if r.status_code == 404:
                return None
            if r.status_code not in RETRYABLE_STATUS:
                raise UploadError(f"{url}: HTTP {r.status_code}")
            problem = f"HTTP {r.status_code}"
        if attempt + 1 < retry.attempts:
            time.sleep(retry.delay(attempt))
    raise UploadError(f"{url}: giving up after {retry.attempts} attempts (last: {problem})")


def fetch(
    url: str,
    *,
    session: requests.Session | None = None,
    retry: RetryPolicy | None = None,
    timeout: float = 60.0,
    max_bytes: int = 256 << 20,
) -> bytes | None:
    """A small published file's bytes (a record: provenance, file manifest, package list); None if absent."""
    r = get(session or requests.Session(), url, retry or RetryPolicy(), timeout, stream=True)
    if r is None:
        return None
    with r:
        data = bytearray()
        try:
            for block in r.iter_content(BLOCK):
                data += block
                if len(data) > max_bytes:
                    raise UploadError(f"{url}: larger than {max_bytes} bytes; not a record kiln publishes")
        except requests.RequestException as exc:
            raise UploadError(f"{url}: {net.describe(exc, url).cause} after {len(data)} bytes") from None
    return bytes(data)


def sha256_of(
    url: str,
    *,
    session: requests.Session | None = None,
    retry: RetryPolicy | None = None,
    timeout: float = 60.0,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> str | None:
    """The SHA-256 of a published object's bytes, streamed (nothing is stored); None if it is absent."""
    r = get(session or requests.Session(), url, retry or RetryPolicy(), timeout, stream=True)
    if r is None:
        return None
    sha = hashlib.sha256()
    total = _length(r)
    done = 0
    with r:
        try:
            for block in r.iter_content(1 << 20):
                sha.update(block)
                done += len(block)
                if on_progress:
                    on_progress(done, total)
        except requests.RequestException as exc:
            cause = net.describe(exc, url).cause
            raise UploadError(f"{url}: {cause} after {done} bytes; run it again") from None
    if total is not None and done != total:
        raise UploadError(f"{url}: got {done} of {total} bytes")
    return sha.hexdigest()


def save(
    url: str,
    out: Path,
    sha: Any,
    *,
    session: requests.Session | None = None,
    retry: RetryPolicy | None = None,
    timeout: float = 60.0,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> int:
    """Stream `url` into `out`, feeding every block to `sha` (a hashlib object); returns the bytes written.
    A 404 or any other failure is UploadError (exit 1) naming the URL and the cause."""
    r = get(session or requests.Session(), url, retry or RetryPolicy(), timeout, stream=True)
    if r is None:
        raise UploadError(f"{url}: not found (HTTP 404)")
    total = _length(r)
    done = 0
    try:
        with r, out.open("wb") as dst:
            try:
                for block in r.iter_content(1 << 20):
                    sha.update(block)
                    dst.write(block)
                    done += len(block)
                    if on_progress:
                        on_progress(done, total)
            except requests.RequestException as exc:
                raise UploadError(f"{url}: {net.describe(exc, url).cause} after {done} bytes") from None
    except OSError as exc:
        raise BuildError(f"{out}: could not write the download ({exc.strerror or exc})") from None
    if total is not None and done != total:
        raise UploadError(f"{url}: got {done} of {total} bytes")
    return done


def _length(r: requests.Response) -> int | None:
    length = r.headers.get("Content-Length", "")
    return int(length) if length.isascii() and length.isdigit() else None
