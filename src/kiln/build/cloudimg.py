"""The base of a cloudimg target: the cloud image at `cloudimg_url`, checked against `cloudimg_checksum`
and kept in the cache by its digest, so that every build after the first boots it from disk.

    cloudimg_checksum   TYPE:HEX (sha256, sha512, sha1, md5), bare HEX (the type from its length), or
                        file:URL / a bare URL of a checksum file (SHA256SUMS, SHA512SUMS: `HEX  NAME`
                        lines or BSD `SHA512 (NAME) = HEX`), read for the image's file name

The digest is resolved when the build's stage IDs are computed (a checksum file is read then, once per
run), and names the base: the os stage's ID changes when the image does, whatever its URL. The download
is hashed as it streams into a temp dir in the cache; only a checked image of a known kind is kept:

    qcow2   without a backing file (a backing file would open a host file to the build VM)
    raw     a disk with an MBR or GPT partition table; converted to qcow2 for the stages' overlays

Anything else (an ISO, an HTML error page, a truncated file) is refused, exit 2; a digest that does not
match, or a URL that cannot be fetched, is exit 1. Either way nothing is left in the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kiln.build import cachecheck, stages
from kiln.core import digests, proc, tempdirs
from kiln.core.errors import BuildError, InputError, UploadError
from kiln.core.inputs import clip
from kiln.core.runtime import Runtime

ROOT = (
    "bootstrap"  # the base disks' cache (kiln.build.stages lists and prunes it): KEY/{base.qcow2,info.json}
)
DISK = "base.qcow2"
ALGORITHMS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_BSD = re.compile(r"^(?P<algo>[A-Z0-9-]+) \((?P<name>.+)\) = (?P<hex>[0-9a-fA-F]+)$")
QCOW2_MAGIC = b"QFI\xfb"
_resolved: dict[tuple[str, str], Digest] = {}


@dataclass(frozen=True)
class Digest:
    algorithm: str
    hex: str

    @property
    def key(self) -> str:
        """The cache entry's name: 'cloudimg-' and 24 hex digits of the digest."""
        return "cloudimg-" + hashlib.sha256(f"{self.algorithm}:{self.hex}".encode()).hexdigest()[:24]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def _algorithm_for(hexdigest: str, where: str) -> str:
    algo = ALGORITHMS.get(len(hexdigest))
    if algo is None or not _HEX.match(hexdigest):
        raise InputError(f"{where}: {clip(hexdigest)} is not an md5, sha1, sha256 or sha512 hex digest")
    return algo


def resolve(url: str, checksum: str) -> Digest:
    """The image's expected digest from `cloudimg_checksum` (a checksum file is fetched, once per run)."""
    where = "cloudimg_checksum"
    text = checksum.strip()
    if not url:
        raise InputError("cloudimg_url: empty; a cloudimg target needs the cloud image's URL")
    if text in ("", "none"):
        raise InputError(
            f"{where}: empty; kiln never boots an unchecked cloud image",
            hint="give TYPE:HEX, or file:URL of the image's SHA256SUMS/SHA512SUMS",
        )
    if (url, text) in _resolved:
        return _resolved[(url, text)]
    if text.startswith("file:") or "://" in text:
        digest = _from_file(url, text.removeprefix("file:"))
    else:
        algo, sep, hexdigest = text.partition(":")
        if not sep:
            algo, hexdigest = _algorithm_for(text, where), text
        algo = algo.lower()
        if algo not in ALGORITHMS.values() or _algorithm_for(hexdigest, where) != algo:
            raise InputError(f"{where}: {clip(text)} is not TYPE:HEX with TYPE md5, sha1, sha256 or sha512")
        digest = Digest(algo, hexdigest.lower())
    _resolved[(url, text)] = digest
    return digest


def _from_file(url: str, sums_url: str) -> Digest:
    from kiln.core import fetch

    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    local = _local_path(sums_url)
    if local is not None:
        try:
            raw: bytes | None = local.read_bytes()[: 4 << 20]
        except OSError as exc:
            raise InputError(f"cloudimg_checksum: {local}: {exc.strerror or exc}") from None
    else:
        try:
            raw = fetch.fetch(sums_url, max_bytes=4 << 20, timeout=30.0)
        except UploadError as err:
            raise UploadError(f"cloudimg_checksum: {err.message}") from None
    if raw is None:
        raise UploadError(f"cloudimg_checksum: {sums_url}: not found (HTTP 404)")
    for line in raw.decode("utf-8", "replace").splitlines():
        bsd = _BSD.match(line.strip())
        if bsd and bsd["name"] == name:
            return Digest(_algorithm_for(bsd["hex"], sums_url), bsd["hex"].lower())
        words = line.split()
        if len(words) == 2 and words[1].lstrip("*").removeprefix("./") == name and _HEX.match(words[0]):
            return Digest(_algorithm_for(words[0], sums_url), words[0].lower())
    raise InputError(
        f"cloudimg_checksum: {sums_url} has no line for {clip(name)} (the file cloudimg_url names)"
    )


@dataclass(frozen=True)
class CloudBase:
    """A checked cloud image in the cache, as the stages use a base disk (kiln.build.bootstrap.BaseImage)."""

    key: str
    dir: Path
    cached: bool
    info: Mapping[str, Any]

    @property
    def disk(self) -> Path:
        return self.dir / DISK


def ensure(
    values: Mapping[str, Any],
    cache_dir: Path,
    *,
    say: Callable[[str], None],
    progress: Callable[[int, int | None], None] | None = None,
    log_file: IO[str] | None = None,
    runtime: Runtime,
) -> CloudBase:
    """The cached, checked cloud image for `values` (cloudimg_url, cloudimg_checksum); downloaded first when
    the cache has none. Concurrent builds of one image serialise on a lock; the loser reuses the result."""
    url = str(values.get("cloudimg_url") or "")
    digest = resolve(url, str(values.get("cloudimg_checksum") or ""))
    root = proc.ensure_dir(cache_dir / ROOT)
    entry = root / digest.key
    info, problem = cachecheck.base_check(entry)
    if info is not None and problem is None and "digests" in info:
        say(f"base: reusing the cloud image {entry} ({digest.algorithm} {digest.hex[:16]}...)")
        return _used(CloudBase(digest.key, entry, True, info))
    with open(root / f"{digest.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info, problem = cachecheck.base_check(entry)
        if info is not None and problem is None:  # made by a concurrent run, or cached before digests
            say(f"base: reusing the cloud image {entry} ({digest.algorithm} {digest.hex[:16]}...)")
            return _used(CloudBase(digest.key, entry, True, cachecheck.keep_digests(entry, info)))
        if problem is not None:  # kiln made it: removed, with the stages built on its disk
            if runtime.dry_run:
                raise BuildError(
                    f"base: the cached cloud image is damaged ({problem})",
                    hint="a build, not a dry run, removes it and downloads it again",
                )
            gone = cachecheck.evict_base(cache_dir, digest.key)
            say(f"base: the cached cloud image is damaged ({problem}): {gone}; downloading it again")
        owned = tempdirs.create(root, digest.key)
        work = owned.path
        try:
            started = time.monotonic()
            say(f"base: downloading the cloud image {url}")
            download = work / "download"
            size = _download(url, download, digest, progress)
            kind = _kind(download, url, runtime)
            say(f"base: {size} bytes, {digest.algorithm} ok, {kind}; converting for the stages' overlays"
                if kind == "raw" else f"base: {size} bytes, {digest.algorithm} ok, qcow2")  # fmt: skip
            if kind == "raw":
                proc.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(download), str(work / DISK)],
                         log_file=log_file, runtime=runtime)  # fmt: skip
                download.unlink()
            else:
                os.rename(download, work / DISK)
            info = {
                "label": f"cloudimg {Path(urllib.parse.urlsplit(url).path).name}",
                "url": url,
                "digest": str(digest),
                "format": kind,
                "size": size,
                "seconds": round(time.monotonic() - started, 1),
                "digests": digests.file_digests(work, [DISK]),  # checked on every reuse
            }
            digests.save(work / stages.BASE_INFO, info)
            os.rename(work, root / digest.key)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        finally:
            owned.release()
    say(f"base: cached as {root / digest.key}")
    return CloudBase(digest.key, root / digest.key, False, info)


def _used(base: CloudBase) -> CloudBase:
    with contextlib.suppress(OSError):
        os.utime(base.dir / stages.BASE_INFO)
    return base


def _download(url: str, out: Path, digest: Digest, progress: Callable[[int, int | None], None] | None) -> int:
    """Stream `url` into `out`, hashing as it goes; BuildError (exit 1) when the digest differs."""
    from kiln.core import fetch

    local = _local_path(url)
    sha = hashlib.new(digest.algorithm)
    done = 0
    if local is not None:
        try:
            src = local.open("rb")
        except OSError as exc:
            raise InputError(f"cloudimg_url: {local}: {exc.strerror or exc}") from None
        try:
            with src, out.open("wb") as dst:
                while block := src.read(1 << 20):
                    sha.update(block)
                    dst.write(block)
                    done += len(block)
                    if progress:
                        progress(done, None)
        except OSError as exc:
            raise BuildError(
                f"{out}: copying {local} into the cache failed ({exc.strerror or exc})"
            ) from None
    else:
        try:
            done = fetch.save(url, out, sha, on_progress=progress)
        except UploadError as err:
            raise UploadError(f"cloudimg_url: {err.message}") from None
    if sha.hexdigest() != digest.hex:
        raise BuildError(
            f"cloudimg_url: {url}: {digest.algorithm} {sha.hexdigest()}, but cloudimg_checksum says "
            f"{digest.hex}",
            hint="the image changed or the download was corrupted; nothing was kept",
        )
    return done


def _local_path(url: str) -> Path | None:
    if url.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    if url.startswith("/"):
        return Path(url)
    return None


def _kind(path: Path, url: str, runtime: Runtime) -> str:
    """qcow2 (without a backing file) or raw (with a partition table); InputError (exit 2) otherwise."""
    with path.open("rb") as f:
        head = f.read(1024)
    if head[:4] == QCOW2_MAGIC:
        info = json.loads(proc.output(["qemu-img", "info", "--output=json", "-f", "qcow2", str(path)],
                                      runtime=runtime))  # fmt: skip
        if info.get("backing-filename"):
            raise InputError(
                f"cloudimg_url: {url}: a qcow2 with a backing file ({clip(info['backing-filename'])}); "
                "kiln takes standalone images only"
            )
        data_file = ((info.get("format-specific") or {}).get("data") or {}).get("data-file")
        if data_file:  # an external data file would open a host file to the build VM, as a backing file would
            raise InputError(f"cloudimg_url: {url}: a qcow2 with an external data file ({clip(data_file)}); "
                             "kiln takes standalone images only")  # fmt: skip
        return "qcow2"
    with path.open("rb") as f:
        f.seek(0x8001)
        iso9660 = f.read(5) == b"CD001"
    if iso9660:  # an installer ISO (isohybrid ones carry an MBR too) is not a cloud image
        raise InputError(f"cloudimg_url: {url}: an ISO 9660 image, not a cloud image's disk",
                         hint="install_method installer takes ISOs (iso_url)")  # fmt: skip
    if len(head) >= 1024 and (head[510:512] == b"\x55\xaa" or head[512:520] == b"EFI PART"):
        return "raw"
    shown = head[:16].decode("latin-1").encode("unicode_escape").decode()
    raise InputError(
        f"cloudimg_url: {url}: not a qcow2 or raw disk image (it starts with {shown!r})",
        hint="a cloud image is a qcow2 (QFI magic) or a raw disk with an MBR/GPT partition table",
    )
