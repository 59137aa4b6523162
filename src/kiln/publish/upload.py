"""Checksum-aware publishing of a build directory to GCS.

Layout (image-builder compatible): gs://BUCKET/{ci|release}/KUBERNETES_SEMVER/NAME.EXT plus NAME.EXT.sha256
(bare hex). `release` when the version is a release semver (vX.Y.Z or vX.Y.Z-N), `ci` otherwise.

Per artifact:
1. one read pass computes SHA-256 and CRC32C together (and the local NAME.EXT.sha256, if any, must agree);
2. the remote object's size, CRC32C and recorded sha256 (metadata.sha256, or the .sha256 sidecar for
   objects published by other tools) are compared: equal -> skipped, no payload bytes sent;
3. otherwise: a stale sidecar is deleted first, then a resumable upload carries CRC32C (verified by the
   server before the object is created) and sha256 in the object's metadata, with a generation
   precondition (0 = create-only for new objects; the current generation when replacing a ci object or a
   release object with --force); the finished object's size and CRC32C are checked again;
4. the .sha256 sidecar is written last, create-only, only after the object is verified.

What a reader sees if kiln dies at any point: either no sidecar, or a sidecar that matches the object;
an object is never visible with a sha256 it does not have.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import google_crc32c

from kiln.artifacts.layout import (  # noqa: F401
    BASES,
    KINDS,
    RECORDS,
    SHARED_BASE,
    files_of,
    layout,
    local_file,
    object_file,
    shared_base_object,
)
from kiln.config.settings import BY_NAME
from kiln.core.builddir import BuildDir
from kiln.core.errors import InputError, Interrupted, UploadError
from kiln.core.inputs import human
from kiln.core.progress import Monitor
from kiln.core.runtime import Runtime
from kiln.publish.bucket import channel_for, object_name
from kiln.publish.gcs import Client, ObjectInfo, PreconditionFailed, Stats

log = logging.getLogger(__name__)

DEFAULT_BUCKET = str(BY_NAME["gcs_bucket"].default)  # the settings table holds the default
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HASH_BUFFER = 8 * 1024 * 1024
DEFAULT_ARTIFACTS = ("ova",)


def available(bd: BuildDir) -> tuple[str, ...]:
    """Every artifact kind the build dir has."""
    return tuple(k for k in KINDS if all(p.is_file() for p, _ in files_of(bd, k)))


@dataclass(frozen=True)
class Hashes:
    size: int
    sha256: str
    crc32c: int

    @property
    def crc32c_b64(self) -> str:
        """GCS's representation: base64 of the big-endian 4-byte value."""
        return base64.b64encode(self.crc32c.to_bytes(4, "big")).decode()


def hash_file(path: Path, on_progress: Callable[[int], None] | None = None) -> Hashes:
    """SHA-256 and CRC32C in one read pass. hashlib releases the GIL, so SHA-256 of one buffer runs in a
    second thread while CRC32C of the same buffer runs here, and the next read overlaps nothing slower."""
    sha = hashlib.sha256()
    crc = 0
    done = 0
    with path.open("rb", buffering=0) as f, ThreadPoolExecutor(1) as pool:
        while True:
            buf = f.read(HASH_BUFFER)  # bytes: google_crc32c wants bytes, not memoryview
            if not buf:
                break
            fut = pool.submit(sha.update, buf)
            crc = google_crc32c.extend(crc, buf)
            fut.result()
            done += len(buf)
            if on_progress:
                on_progress(done)
    return Hashes(done, sha.hexdigest(), crc)


@dataclass(frozen=True)
class Options:
    bucket: str = DEFAULT_BUCKET
    channel: str | None = None  # None: from the version
    artifacts: tuple[str, ...] = DEFAULT_ARTIFACTS
    force: bool = False
    parallel: int = 4
    metadata: Mapping[str, str] = field(default_factory=dict)  # added to every object (release: input_hash)


@dataclass(frozen=True)
class Item:
    kind: str
    path: Path
    object_name: str  # CHANNEL/VERSION/FILE


@dataclass
class Result:
    artifact: str
    path: str
    url: str
    action: str  # uploaded | skipped | sidecar-written | would-upload | would-skip | refused | failed
    size: int = 0
    sha256: str = ""
    bytes_sent: int = 0
    seconds: float = 0.0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.action not in ("refused", "failed", "would-refuse")


class Reporter:
    """What the uploader tells the user while it works; the CLI passes a rich progress implementation."""

    def start(self, item: Item, total: int) -> None: ...
    def stage(self, item: Item, stage: str, total: int | None = None) -> None: ...
    def advance(self, item: Item, completed: int) -> None: ...
    def finish(self, item: Item, result: Result) -> None: ...


def plan(bd: BuildDir, opts: Options) -> tuple[str, list[Item]]:
    """The channel and the artifacts to publish; InputError (exit 2) for unknown kinds or missing files."""
    channel = channel_for(bd.kubernetes_semver, opts.channel)
    problems = []
    items: list[Item] = []
    for kind in opts.artifacts:
        if kind not in KINDS:
            known = ", ".join(KINDS)
            problems.append(f"--artifacts: unknown artifact {kind!r} (known: {known})")
            continue
        for path, filename in files_of(bd, kind):
            if not path.is_file():
                problems.append(f"{path}: missing ({kind} artifact of {bd.name})")
                continue
            if filename == SHARED_BASE:  # the overlay's and the netboot set's base: one object, sent once
                obj = shared_base_object(bd)
                if all(i.object_name != obj for i in items):
                    items.append(Item(kind, path, obj))
                continue
            items.append(Item(kind, path, object_name(channel, bd.kubernetes_semver, filename)))
    if problems:
        raise InputError("; ".join(problems))
    return channel, items


def _local_sidecar(path: Path, hashes: Hashes) -> None:
    """A NAME.EXT.sha256 next to the artifact must describe it: an artifact changed after the build
    (or a truncated copy) is refused before anything is sent."""
    side = path.with_name(path.name + ".sha256")
    if not side.is_file():
        return
    words = side.read_text().split()
    claimed = words[0].lower() if words else ""
    if claimed != hashes.sha256:
        raise InputError(
            f"{side}: says {claimed or '(empty)'} but {path.name} hashes to {hashes.sha256}",
            hint="the artifact changed after the build; rebuild or fix the checksum file",
        )


@dataclass
class _Remote:
    obj: ObjectInfo | None
    sidecar_generation: int | None  # None: no sidecar
    sidecar_text: str | None

    def recorded_sha256(self) -> str | None:
        if self.obj is None:
            return None
        return self.obj.sha256 or self.sidecar_text

    def matches(self, h: Hashes) -> bool:
        o = self.obj
        return (
            o is not None
            and o.size == h.size
            and self.recorded_sha256() == h.sha256
            and (o.crc32c is None or o.crc32c == h.crc32c_b64)
        )


def _remote(client: Client, bucket: str, name: str) -> _Remote:
    """Two requests: the object's resource and the sidecar's bytes (with its generation, when sent)."""
    obj = client.get_object(bucket, name)
    got = client.read_object(bucket, name + ".sha256")
    if got is None:
        return _Remote(obj, None, None)
    raw, gen = got
    if gen is None:  # a server that does not send X-Goog-Generation with media
        side = client.get_object(bucket, name + ".sha256")
        gen = side.generation if side is not None else 0
    words = raw.decode("ascii", "replace").split()
    return _Remote(obj, gen, words[0].lower() if words else "")


@dataclass
class Publisher:
    client: Client
    opts: Options
    channel: str
    reporter: Reporter
    runtime: Runtime  # dry-run: read the bucket, plan every object, write nothing

    def publish(self, items: list[Item]) -> list[Result]:
        """Hash everything first (bad local checksums stop the run before any write), then publish."""
        workers = max(1, min(self.opts.parallel, len(items) or 1))
        pool = ThreadPoolExecutor(workers)
        try:
            hashes = list(pool.map(self._hash, items))
            for item, h in zip(items, hashes, strict=True):
                _local_sidecar(item.path, h)
            return list(pool.map(self._publish_one, items, hashes))
        except KeyboardInterrupt:
            # Workers stop at their next block: an unfinished resumable upload never becomes an object,
            # and a sidecar is only ever written after its object is complete and verified.
            self.client.cancel.set()
            raise Interrupted("upload interrupted; nothing unverified was published, run it again") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _hash(self, item: Item) -> Hashes:
        size = item.path.stat().st_size
        self.reporter.start(item, size)
        self.reporter.stage(item, "hashing", size)

        def progress(done: int) -> None:
            if self.client.cancel.is_set():
                raise Interrupted("interrupted")
            self.reporter.advance(item, done)

        h = hash_file(item.path, progress)
        log.debug("%s: sha256 %s crc32c %s", item.path, h.sha256, h.crc32c_b64)
        return h

    def _publish_one(self, item: Item, h: Hashes) -> Result:
        bucket = self.opts.bucket
        res = Result(item.kind, str(item.path), f"gs://{bucket}/{item.object_name}", "", h.size, h.sha256)
        t0 = time.monotonic()
        try:
            self.reporter.stage(item, "checking")
            self._decide_and_act(item, h, res)
        except UploadError as err:
            res.action, res.detail = "failed", err.message
        res.seconds = round(time.monotonic() - t0, 3)
        self.reporter.finish(item, res)
        return res

    def _decide_and_act(self, item: Item, h: Hashes, res: Result) -> None:
        bucket, name, c = self.opts.bucket, item.object_name, self.client
        remote = _remote(c, bucket, name)
        if remote.matches(h):
            if remote.sidecar_text == h.sha256:
                res.action = "would-skip" if self.runtime.dry_run else "skipped"
                res.detail = "identical object already published"
                return
            res.action = "would-write-sidecar" if self.runtime.dry_run else "sidecar-written"
            res.detail = "object identical; its .sha256 was missing or wrong"
            if not self.runtime.dry_run:
                self._write_sidecar(name, h, remote.sidecar_generation, item.path)
            return
        shared = name.startswith(f"{BASES}/")  # a base squashfs named by its content: never replaced
        if shared and not name.startswith(f"{BASES}/{h.sha256}/"):
            raise InputError(f"{item.path}: sha256 {h.sha256}, but its overlay.json names it {name}",
                             hint="the build dir changed after the build; rebuild it")  # fmt: skip
        if remote.obj is not None and (shared or (self.channel == "release" and not self.opts.force)):
            res.action = "would-refuse" if self.runtime.dry_run else "refused"
            res.detail = (
                f"a different image is published there (sha256 {remote.recorded_sha256() or 'unknown'}); "
                "release objects are create-only: pass --force to replace it"
            )
            return
        if self.runtime.dry_run:
            res.action = "would-upload"
            res.detail = "replace" if remote.obj else "new"
            return
        # Stale sidecar first: until the new one is written, readers see no checksum rather than a wrong one.
        if remote.sidecar_generation is not None:
            c.delete(bucket, name + ".sha256", if_generation_match=remote.sidecar_generation)
        gen = remote.obj.generation if remote.obj is not None else 0
        self.reporter.stage(item, "uploading", h.size)
        tally = Stats()

        def progress(done: int) -> None:
            self.reporter.advance(item, done)

        try:
            with item.path.open("rb") as src:
                obj = c.upload_resumable(
                    bucket,
                    name,
                    src,
                    h.size,
                    crc32c=h.crc32c_b64,
                    metadata={**self.opts.metadata, "sha256": h.sha256, **_mtime(item.path)},
                    content_type=_content_type(name),
                    if_generation_match=gen,
                    on_progress=progress,
                    tally=tally,
                )
        except PreconditionFailed:
            # Someone else published this path since we looked: never overwrite what they wrote.
            now = _remote(c, bucket, name)
            if now.matches(h):
                res.action, res.detail = "skipped", "an identical image was published concurrently"
                return
            raise UploadError(
                f"{res.url}: another upload published a different object concurrently"
            ) from None
        finally:
            res.bytes_sent = tally.bytes_sent
        if (
            obj.size != h.size
            or (obj.crc32c is not None and obj.crc32c != h.crc32c_b64)
            or obj.sha256 != h.sha256
        ):
            # A server that does not verify CRC32C stored something else: take it down, never leave it.
            c.delete(bucket, name, if_generation_match=obj.generation)
            raise UploadError(
                f"{res.url}: the stored object does not match the local file "
                f"(size {obj.size} vs {h.size}, crc32c {obj.crc32c} vs {h.crc32c_b64}); removed it"
            )
        self.reporter.stage(item, "sidecar")
        self._write_sidecar(name, h, None, item.path)
        res.action = "uploaded"
        res.detail = "replaced" if gen else "new"

    def _write_sidecar(self, name: str, h: Hashes, generation: int | None, path: Path) -> None:
        """Create-only (generation 0), or replace exactly the sidecar generation we read."""
        data = h.sha256.encode()
        local = path.with_name(path.name + ".sha256")
        mtime = _mtime(local if local.is_file() and local.read_bytes().strip() == data else path)
        crc = base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()
        self.client.put_small(
            self.opts.bucket,
            name + ".sha256",
            data,
            content_type="text/plain",
            if_generation_match=generation or 0,
            crc32c=crc,
            metadata=mtime,
        )


def _mtime(path: Path) -> dict[str, str]:
    """gsutil's convention for a file's mtime; with it `gsutil rsync -c` finds nothing to do after kiln."""
    return {"goog-reserved-file-mtime": str(int(path.stat().st_mtime))}


def _content_type(name: str) -> str:
    if name.endswith(".json"):
        return "application/json"
    if name.endswith(".jsonl"):
        return "application/jsonl"
    if name.endswith(".packages"):
        return "text/plain"
    return "application/octet-stream"


def publish_build(
    bd: BuildDir, client: Client, opts: Options, reporter: Reporter | None = None, *, runtime: Runtime
) -> tuple[str, list[Result]]:
    """Publish `bd`'s artifacts per `opts`. Under a dry-run runtime every object is planned against what the
    bucket holds (would-upload, would-skip, ...) and nothing is written, in the bucket or beside the build."""
    channel, items = plan(bd, opts)
    pub = Publisher(client, opts, channel, reporter or Reporter(), runtime)
    return channel, pub.publish(items)


def results_json(
    bd: BuildDir, opts: Options, channel: str, results: list[Result], client: Client, runtime: Runtime
) -> dict:
    return {
        "build": str(bd.path),
        "name": bd.name,
        "bucket": opts.bucket,
        "channel": channel,
        "version": bd.kubernetes_semver,
        "dry_run": runtime.dry_run,
        "requests": client.stats.requests,
        "bytes_sent": client.stats.bytes_sent,
        "retries": client.stats.retries,
        "results": [asdict(r) for r in results],
    }


class MonitorReporter(Reporter):
    """The uploader's events as kiln.progress events: one stage per object, progress per byte range. The
    sink decides how they look (progress bars on a terminal, a line per quarter in CI logs, JSON lines)."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.current: dict[Item, str] = {}
        self.started: dict[Item, float] = {}

    def start(self, item: Item, total: int) -> None:
        self.started[item] = time.monotonic()
        self.monitor.begin(item.object_name, f"{item.kind}, {total} bytes")

    def stage(self, item: Item, stage: str, total: int | None = None) -> None:
        self.current[item] = stage
        self.monitor.log(item.object_name, f"{item.object_name}: {stage}")

    def advance(self, item: Item, completed: int) -> None:
        size = item.path.stat().st_size if item.path.is_file() else None
        self.monitor.progress(f"{item.object_name}: {self.current.get(item, '')}", completed, size, "bytes")

    def finish(self, item: Item, result: Result) -> None:
        took = time.monotonic() - self.started.get(item, time.monotonic())
        self.monitor.end(item.object_name, took, result.ok, f"{result.action} {result.detail}".strip())


def summary(results: list[Result]) -> str:
    """The upload summary as plain text columns."""
    rows = [f"{'ARTIFACT':<9} {'ACTION':<16} {'SIZE':>10} {'SENT':>10} {'TIME':>7}  {'SHA256':<16}  OBJECT"]
    for r in results:
        rows.append(
            f"{r.artifact:<9} {r.action:<16} {human(r.size):>10} {human(r.bytes_sent):>10} "
            f"{r.seconds:>6.1f}s  {r.sha256[:16]:<16}  {r.url}"
        )
    return "\n".join(rows)
