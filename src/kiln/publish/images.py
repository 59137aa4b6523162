"""Listing published images and downloading them through their public HTTP URL, checked and resumable.

`get` fetches URL.sha256 first (no checksum, no download), downloads into DIR/FILE.part, resumes with a
`Range` request after a dropped connection (in the same run, and across runs: the .part stays), checks the
SHA-256 of the whole file and only then renames it into place.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from kiln.config.validators import unprintable, url_problem
from kiln.core import net
from kiln.core.builddir import sha256_file
from kiln.core.errors import InputError, UploadError
from kiln.core.inputs import clip
from kiln.publish.bucket import CHANNELS, OBJECT_RE, channel_for
from kiln.publish.gcs import RETRYABLE_STATUS, Client, RetryPolicy

HEX64 = re.compile(r"^[0-9a-f]{64}$")

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://storage.googleapis.com"
_LAYOUT = OBJECT_RE
# bytes read per write: after a dropped connection at most one block is fetched again
BLOCK = 64 * 1024
_KUBE = re.compile(r"\+kube-(?P<version>v[^/]+?)\.(ova|qcow2|packages|packer-manifest\.json)$")


@dataclass(frozen=True)
class Image:
    channel: str
    version: str
    file: str
    size: int
    updated: str
    sha256: str | None  # recorded in the object's metadata
    has_sidecar: bool

    @property
    def path(self) -> str:
        return f"{self.channel}/{self.version}/{self.file}"


def list_images(
    client: Client, bucket: str, channel: str | None = None, version: str | None = None
) -> list[Image]:
    """Published objects under {ci,release}/VERSION/, sidecars folded into their artifact."""
    prefixes = [f"{ch}/{version + '/' if version else ''}" for ch in ([channel] if channel else CHANNELS)]
    objects = {o.name: o for p in prefixes for o in client.list(bucket, p)}
    images = []
    for name, o in sorted(objects.items()):
        m = _LAYOUT.match(name)
        if not m or name.endswith(".sha256"):
            continue
        images.append(
            Image(
                m["channel"],
                m["version"],
                m["file"],
                o.size,
                o.updated,
                o.sha256,
                name + ".sha256" in objects,
            )
        )
    return images


def resolve_url(name_or_url: str, base_url: str, bucket: str) -> str:
    """An http(s) URL as is; gs://B/PATH, CHANNEL/VERSION/FILE or a bare FILE (NAME+kube-VERSION.EXT)."""
    base = base_url.rstrip("/")
    if name_or_url.startswith(("http://", "https://")):
        return name_or_url
    if name_or_url.startswith("gs://"):
        return f"{base}/{name_or_url[5:]}"
    if _LAYOUT.match(name_or_url):
        return f"{base}/{bucket}/{urllib.parse.quote(name_or_url)}"
    m = _KUBE.search(name_or_url)
    if "/" in name_or_url or not m:
        raise InputError(
            f"{name_or_url}: not a URL, gs:// path, CHANNEL/VERSION/FILE or NAME+kube-VERSION.ova file name"
        )
    path = f"{channel_for(m['version'])}/{m['version']}/{name_or_url}"
    return f"{base}/{bucket}/{urllib.parse.quote(path)}"


@dataclass
class Download:
    url: str
    path: Path
    size: int
    sha256: str
    action: str  # downloaded | resumed | present
    bytes_received: int
    seconds: float


def download(
    url: str,
    out_dir: Path,
    *,
    session: requests.Session | None = None,
    retry: RetryPolicy | None = None,
    on_progress: Callable[[int, int | None], None] | None = None,
    timeout: float = 60.0,
) -> Download:
    """Download `url` into out_dir, verified against url + '.sha256'."""
    s = session or requests.Session()
    retry = retry or RetryPolicy()
    t0 = time.monotonic()
    filename = file_name_of(url)
    final = out_dir / filename
    part = out_dir / (filename + ".part")
    part_sum = out_dir / (filename + ".part.sha256")

    expected = _fetch_sha256(s, url + ".sha256", retry, timeout)
    made_dir = _ensure_out_dir(out_dir)
    try:
        return _download_into(s, url, expected, final, part, part_sum, retry, on_progress, timeout, t0)
    except BaseException:
        if made_dir:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only if nothing is in it (a kept .part keeps it)
        raise


def file_name_of(url: str) -> str:
    """The file name a download is saved under: the URL's last path segment, decoded, and checked to be a
    plain name (no '/', not '.' or '..', printable), so that nothing is ever written outside -o."""
    problem = url_problem(url, ("http", "https"))
    if problem:
        raise InputError(f"{clip(url)}: not a download URL: {problem}")
    raw = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
    try:
        name = urllib.parse.unquote(raw, errors="strict") if raw else ""
    except UnicodeDecodeError:
        raise InputError(f"{clip(url)}: the file name is not UTF-8 once decoded") from None
    if not name:
        raise InputError(f"{clip(url)}: no file name in the URL")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".") or unprintable(name):
        raise InputError(f"{clip(url)}: file name {clip(name)} is not a plain file name; refusing to save it")
    if len(name.encode()) > 200:
        raise InputError(f"{clip(url)}: file name is {len(name.encode())} bytes long (limit 200)")
    return name


def _ensure_out_dir(out_dir: Path) -> bool:
    """Make -o if needed; True when this call made it (so that a failure can take it away again)."""
    if out_dir.is_dir():
        return False
    if out_dir.exists() or out_dir.is_symlink():
        raise InputError(f"{out_dir}: -o exists and is not a directory")
    try:
        out_dir.mkdir(parents=True)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot create the download directory: {exc.strerror or exc}") from None
    return True


def _download_into(
    s: requests.Session,
    url: str,
    expected: str,
    final: Path,
    part: Path,
    part_sum: Path,
    retry: RetryPolicy,
    on_progress: Callable[[int, int | None], None] | None,
    timeout: float,
    t0: float,
) -> Download:
    if final.is_symlink() or (final.exists() and not final.is_file()):
        raise InputError(f"{final}: exists and is not a regular file; kiln will not replace it")
    if final.is_file() and sha256_file(final) == expected:
        return Download(url, final, final.stat().st_size, expected, "present", 0, time.monotonic() - t0)
    if final.is_file():
        raise InputError(
            f"{final}: exists with other contents than {url}; kiln will not replace it",
            hint="remove it or download into another directory (-o)",
        )
    if part.exists() and (not part_sum.is_file() or part_sum.read_text().strip() != expected):
        part.unlink()  # a .part of some other version of the object: start over
    part_sum.write_text(expected + "\n")
    resumed = part.exists() and part.stat().st_size > 0
    received = 0
    failures = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        problem = ""
        try:
            with s.get(url, headers=headers, stream=True, timeout=(net.CONNECT_TIMEOUT, timeout)) as r:
                if r.status_code == 416 and offset:
                    break  # we hold the whole object already
                if r.status_code == 404:
                    raise UploadError(f"{url}: not found (404)")
                if r.status_code in RETRYABLE_STATUS:
                    problem = f"HTTP {r.status_code}"
                elif r.status_code not in (200, 206):
                    raise UploadError(f"{url}: HTTP {r.status_code}")
                else:
                    total = _total(r, offset)
                    mode = "ab"
                    if r.status_code == 200 or not _starts_at(r, offset):
                        mode, offset = "wb", 0  # the server ignored our Range: take the whole body
                    with part.open(mode) as f:
                        for block in r.iter_content(BLOCK):
                            f.write(block)
                            offset += len(block)
                            received += len(block)
                            if on_progress:
                                on_progress(offset, total)
                    if total is None or offset >= total:
                        break
                    problem = f"short body ({offset} of {total} bytes)"
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            failure = net.describe(exc, url)
            if not failure.retryable:
                raise UploadError(
                    f"{url}: {failure.cause}; {part} is kept: run the same command again"
                ) from None
            problem = failure.cause
        failures += 1
        if failures >= retry.attempts:
            raise UploadError(
                f"{url}: giving up after {failures} attempts (last: {problem}); "
                f"{part} is kept: run the same command again to resume"
            )
        delay = retry.delay(failures - 1)
        log.info("%s: %s, resuming at byte %d in %.1fs", url, problem, part.stat().st_size, delay)
        time.sleep(delay)

    got = sha256_file(part)
    if got != expected:
        part.unlink()
        part_sum.unlink(missing_ok=True)
        raise UploadError(
            f"{url}: downloaded file hashes to {got}, but its .sha256 says {expected}; deleted it"
        )
    part.replace(final)
    part_sum.unlink(missing_ok=True)
    return Download(
        url,
        final,
        final.stat().st_size,
        expected,
        "resumed" if resumed else "downloaded",
        received,
        time.monotonic() - t0,
    )


def _fetch_sha256(s: requests.Session, url: str, retry: RetryPolicy, timeout: float) -> str:
    for attempt in range(retry.attempts):
        try:
            r = s.get(url, timeout=(net.CONNECT_TIMEOUT, timeout))
        except (requests.ConnectionError, requests.Timeout) as exc:
            failure = net.describe(exc, url)
            if not failure.retryable:
                raise UploadError(f"{url}: {failure.cause}") from None
            problem = failure.cause
        else:
            if r.status_code == 200:
                words = r.text.split()
                value = words[0].lower() if words else ""
                if not HEX64.match(value):
                    raise UploadError(f"{url}: not a SHA-256 checksum")
                return value
            if r.status_code == 404:
                raise UploadError(f"{url}: no published checksum; refusing an unverifiable download")
            if r.status_code not in RETRYABLE_STATUS:
                raise UploadError(f"{url}: HTTP {r.status_code}")
            problem = f"HTTP {r.status_code}"
        if attempt + 1 < retry.attempts:
            time.sleep(retry.delay(attempt))
    raise UploadError(f"{url}: giving up after {retry.attempts} attempts (last: {problem})")


def _total(r: requests.Response, offset: int) -> int | None:
    cr = r.headers.get("Content-Range", "")
    tail = cr.rsplit("/", 1)[-1]
    if r.status_code == 206 and "/" in cr and tail.isascii() and tail.isdigit():
        return int(tail)
    length = r.headers.get("Content-Length", "")
    return int(length) if length.isascii() and length.isdigit() and r.status_code == 200 else None


def _starts_at(r: requests.Response, offset: int) -> bool:
    m = re.match(r"bytes (\d+)-", r.headers.get("Content-Range", ""))
    return bool(m and int(m.group(1)) == offset)
