"""`kiln release`: make sure every (target, Kubernetes version) image is built, verified and published,
doing only what is missing.

The plan, per entry: compute the input hash (the finalize stage's ID), look for an image published with
that hash (the bucket's index.json, else the OVA object's metadata), and mark the entry `published`
(nothing to do) or `build`. `--plan --json` prints {"include": [...]} for a CI matrix (`fromJSON`).

The run, per `build` entry: a local build dir with the same input hash is used as it is, otherwise the
image is built through the stage cache (verify included); then the uploader publishes it (OVA, .sha256,
SBOM, and the qcow2 when asked), and the entry is added to gs://BUCKET/index.json. One failed entry does
not stop the others; the run then exits 1 and the summary names it.

index.json is updated read-modify-write with a generation precondition (ifGenerationMatch) and retried on
412, so two release jobs finishing together lose no entry.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kiln import __version__
from kiln.build import pipeline as build
from kiln.build.packer import PackerFlags
from kiln.config import Config
from kiln.core.builddir import BuildDir, sha256_file
from kiln.core.errors import InputError, Interrupted, KilnError, UploadError
from kiln.core.inputs import loads_json
from kiln.core.progress import Monitor, Null
from kiln.core.runtime import Runtime
from kiln.publish import upload
from kiln.publish.bucket import INDEX, channel_for, object_name
from kiln.publish.gcs import Client, PreconditionFailed

DEFAULT_ARTIFACTS = ("ova", *upload.RECORDS)  # each record only when the build has it
INDEX_ATTEMPTS = 12


@dataclass
class Entry:
    target: str
    kubernetes_semver: str
    input_hash: str
    channel: str
    status: str  # published | build | (after a run) built | reused | failed | would-build | would-publish
    name: str
    detail: str = ""
    seconds: float = 0.0
    bytes_sent: int = 0

    def matrix(self) -> dict[str, str]:
        return {
            k: getattr(self, k) for k in ("target", "kubernetes_semver", "input_hash", "channel", "status")
        }


@dataclass
class Index:
    images: list[dict[str, Any]] = field(default_factory=list)
    generation: int = 0  # 0: the object does not exist yet

    def find(self, name: str, channel: str) -> dict[str, Any] | None:
        return next((i for i in self.images if i.get("name") == name and i.get("channel") == channel), None)


def read_index(client: Client, bucket: str) -> Index:
    """The bucket's index and its generation (generation first, then content: a newer content than the
    generation makes the conditional write fail and retry, never lose an entry)."""
    info = client.get_object(bucket, INDEX)
    if info is None:
        client.check_bucket(bucket)  # no index yet, or no bucket at all: "build everything" needs the first
        return Index()
    got = client.read_object(bucket, INDEX, max_bytes=64 << 20)
    if got is None:
        return Index()
    data = loads_json(got[0].decode("utf-8", "replace"), f"gs://{bucket}/{INDEX}", "index")
    images = data.get("images", []) if isinstance(data, dict) else []
    return Index([i for i in images if isinstance(i, dict)], info.generation)


def update_index(client: Client, bucket: str, entry: Mapping[str, Any]) -> int:
    """Add or replace `entry` (by name and channel) in index.json; returns the attempts it took."""
    for attempt in range(1, INDEX_ATTEMPTS + 1):
        index = read_index(client, bucket)
        images = [
            i
            for i in index.images
            if not (i.get("name") == entry["name"] and i.get("channel") == entry["channel"])
        ]
        images.append(dict(entry))
        images.sort(
            key=lambda i: (str(i.get("channel")), str(i.get("kubernetes_semver")), str(i.get("name")))
        )
        body = json.dumps({"kiln_version": __version__, "images": images}, indent=1).encode() + b"\n"
        try:
            client.put_small(
                bucket, INDEX, body, content_type="application/json", if_generation_match=index.generation
            )
            return attempt
        except PreconditionFailed:
            time.sleep(random.uniform(0.05, 0.3) * attempt)  # another job wrote it first: read again
    raise UploadError(f"gs://{bucket}/{INDEX}: still changing after {INDEX_ATTEMPTS} attempts; run again")


def _published(
    client: Client, bucket: str, index: Index, name: str, channel: str, semver: str, digest: str
) -> bool:
    found = index.find(name, channel)
    if found is not None:
        return found.get("input_hash") == digest
    info = client.get_object(bucket, object_name(channel, semver, f"{name}.ova"))
    return info is not None and info.metadata.get("input_hash") == digest


def plan(
    configs: Sequence[Config], client: Client, bucket: str, channel: str | None = None, *, runtime: Runtime
) -> list[Entry]:
    index = read_index(client, bucket)
    entries = []
    for cfg in configs:
        semver = cfg.settings.kubernetes_semver
        ch = channel_for(semver, channel)
        name = cfg.artifact_name
        try:  # a cloudimg target reads its checksum file here: one unreachable source fails its entry only
            digest = build.input_hash(cfg, runtime)
        except Interrupted:
            raise
        except KilnError as err:
            entries.append(Entry(cfg.target, semver, "", ch, "failed", name, err.message.splitlines()[0]))
            continue
        done = _published(client, bucket, index, name, ch, semver, digest)
        entries.append(Entry(cfg.target, semver, digest, ch, "published" if done else "build", name))
    return entries


def index_entry(
    bd: BuildDir, channel: str, bucket: str, base_url: str, artifacts: Sequence[str]
) -> dict[str, Any]:
    semver = bd.kubernetes_semver

    def url(filename: str) -> str:
        return f"{base_url.rstrip('/')}/{bucket}/{object_name(channel, semver, filename)}"

    urls = {"ova": url(bd.ova.name), "sha256": url(bd.ova.name + ".sha256")}
    for kind in ("qcow2", *upload.RECORDS, "iso", "platform"):
        local, obj = upload.files_of(bd, kind)[0]
        if kind in artifacts and local.is_file():
            urls[kind] = url(obj)
    for kind in ("squashfs", "netboot", "overlay"):
        if kind in artifacts:
            urls[kind] = url(f"{kind}/{bd.name}/")
    sidecar = bd.path / f"{bd.ova.name}.sha256"
    digest = sidecar.read_text().strip() if sidecar.is_file() else sha256_file(bd.ova)
    extra: dict[str, Any] = {}
    envelope = upload.files_of(bd, "provenance")[0][0]
    if "provenance" in urls:
        from kiln.artifacts import provenance

        env, _, _ = provenance.read(envelope)
        keyids = [str(s.get("keyid", "")) for s in env["signatures"] if isinstance(s, dict)]
        extra["provenance"] = {"url": urls["provenance"], "sha256": sha256_file(envelope),
                               "signed": bool(keyids), "keyids": keyids}  # fmt: skip
    if "overlay" in artifacts:  # which overlay goes on which base
        info = json.loads((bd.path / "overlay" / "overlay.json").read_text())
        base_obj = upload.shared_base_object(bd)
        extra["overlay"] = {
            "url": url(f"overlay/{bd.name}/overlay.squashfs"),
            "sha256": info["overlay"]["sha256"],
            "size": info["overlay"]["size"],
            "module": url(f"overlay/{bd.name}/filesystem.module"),
            "base": {
                "url": f"{base_url.rstrip('/')}/{bucket}/{base_obj}",
                "sha256": info["base"]["sha256"],
                "size": info["base"]["size"],
            },  # fmt: skip
        }
    return {
        "name": bd.name,
        "target": bd.build_name,
        "os": f"{bd.custom_data.get('os_name', '')} {bd.custom_data.get('os_version', '')}".strip(),
        "kubernetes_semver": semver,
        "channel": channel,
        "urls": urls,
        "sha256": digest,
        "size": bd.ova.stat().st_size,
        "input_hash": bd.custom_data.get("input_hash", ""),
        "kiln_version": bd.custom_data.get("kiln_version", __version__),
        "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }


def run(
    configs: Sequence[Config],
    client: Client,
    bucket: str,
    *,
    channel: str | None = None,
    artifacts: Sequence[str] = DEFAULT_ARTIFACTS,
    runtime: Runtime,
    monitor: Monitor | None = None,
    base_url: str = "https://storage.googleapis.com",
    packer_flags: PackerFlags | None = None,
    signing_key: Path | None = None,
    require_signature: bool = False,
) -> list[Entry]:
    """Plan, then build (or reuse) and publish every entry that is not published yet. `packer_flags` are
    PACKER_FLAGS' Packer flags for the builds; builds sign their provenance with `signing_key`.

    With `require_signature`, an entry is published only when its provenance is signed with that key and
    true of every artifact: an unsigned or foreign-signed local build fails before anything is uploaded."""
    from kiln.artifacts import provenance

    mon = monitor or Null()
    key = provenance.load_private_key(signing_key) if signing_key is not None else None  # exit 2 up front
    if require_signature and key is None:
        raise InputError(
            "--require-signature: no signing key",
            hint="give --signing-key PEM or KILN_SIGNING_KEY: builds are signed with it, reused ones checked",
        )
    entries = plan(configs, client, bucket, channel, runtime=runtime)
    by_name = {cfg.artifact_name: cfg for cfg in configs}
    for entry in entries:
        if entry.status == "failed":  # planning it failed (kiln.publish.release.plan said why)
            mon.log("release", f"{entry.name}: FAILED: {entry.detail}")
            continue
        if entry.status == "published":
            mon.log(
                "release", f"{entry.name}: published with input hash {entry.input_hash[:12]}; nothing to do"
            )
            continue
        started = time.monotonic()
        sent_before = client.stats.bytes_sent
        try:
            cfg = by_name[entry.name]
            final = cfg.path("output_dir") / entry.name
            local = build.up_to_date(final, entry.input_hash)
            if runtime.dry_run:
                if require_signature and local and key is not None:
                    mon.log("release", f"{entry.name}: {provenance.signing_status(final, key.public_key())}")
                _dry_run_entry(entry, cfg, final, local, client, bucket, artifacts, runtime, mon)
                continue
            if local:
                mon.log("release", f"{entry.name}: using the local build {final} (same input hash)")
                entry.status = "reused"
            else:
                mon.log("release", f"{entry.name}: building (input hash {entry.input_hash[:12]})")
                build.run_build(
                    cfg, monitor=mon, runtime=runtime, packer_flags=packer_flags, signing_key=signing_key
                )
                entry.status = "built"
            bd = BuildDir.open(final)
            if require_signature and key is not None:
                mon.log("release", f"{entry.name}: {provenance.signing_status(bd.path, key.public_key())}")
            opts = _options(bd, entry, bucket, artifacts)
            _, results = upload.publish_build(bd, client, opts, upload.MonitorReporter(mon), runtime=runtime)
            bad = [r for r in results if not r.ok]
            if bad:
                raise UploadError("; ".join(f"{r.url}: {r.action}: {r.detail}" for r in bad))
            update_index(client, bucket, index_entry(bd, entry.channel, bucket, base_url, opts.artifacts))
        except Interrupted:  # Ctrl-C or SIGTERM ends the release here, not just this entry
            entry.status, entry.detail = "failed", "interrupted"
            raise
        except KilnError as err:
            entry.status = "failed"
            entry.detail = err.message.splitlines()[0]
            mon.log("release", f"{entry.name}: FAILED: {entry.detail}")
        finally:
            entry.seconds = round(time.monotonic() - started, 1)
            entry.bytes_sent = client.stats.bytes_sent - sent_before
    return entries


def _options(bd: BuildDir, entry: Entry, bucket: str, artifacts: Sequence[str]) -> upload.Options:
    have = upload.available(bd)
    formats = tuple(k for k in ("iso", "squashfs", "netboot", "platform", "overlay") if k in have)
    return upload.Options(
        bucket=bucket,
        channel=entry.channel,
        artifacts=tuple(a for a in artifacts if a not in upload.RECORDS or a in have) + formats,
        metadata={"input_hash": entry.input_hash, "kiln_version": __version__},
    )


def _dry_run_entry(
    entry: Entry,
    cfg: Config,
    final: Path,
    local: bool,
    client: Client,
    bucket: str,
    artifacts: Sequence[str],
    runtime: Runtime,
    mon: Monitor,
) -> None:
    """What a release would do for `entry`, said and not done: nothing is built, uploaded or indexed.

    Only a local build with the entry's own input hash is ever looked at; any other build dir there (a stale
    one) is not what the release would publish, so it is neither opened nor uploaded."""
    prefix = f"gs://{bucket}/{object_name(entry.channel, entry.kubernetes_semver, '')}"
    if local:
        bd = BuildDir.open(final)
        opts = _options(bd, entry, bucket, artifacts)
        _, results = upload.publish_build(bd, client, opts, upload.MonitorReporter(mon), runtime=runtime)
        for r in results:
            mon.log("release", f"{entry.name}: {r.action}: {r.url}")
        entry.status = "would-publish"
        entry.detail = f"local build {final}; {len(results)} objects under {prefix}; index.json entry"
    else:
        if final.exists():
            mon.log("release", f"{entry.name}: {final} holds another input hash; a release would rebuild it")
        build.run_build(cfg, monitor=mon, runtime=runtime)  # prints the stages and commands, runs nothing
        entry.status = "would-build"
        entry.detail = f"build, verify, then publish {', '.join(artifacts)} under {prefix}; index.json entry"
    mon.log("release", f"{entry.name}: dry run: {entry.detail}")


def matrix_json(entries: Sequence[Entry]) -> dict[str, Any]:
    return {"include": [e.matrix() for e in entries]}


def summary(entries: Sequence[Entry]) -> str:
    rows = [f"{'NAME':<34} {'CHANNEL':<8} {'STATUS':<10} {'SECONDS':>8} {'BYTES SENT':>12}  DETAIL"]
    for e in entries:
        rows.append(
            f"{e.name:<34} {e.channel:<8} {e.status:<10} {e.seconds:>8.1f} {e.bytes_sent:>12}  {e.detail}"
        )
    return "\n".join(rows)


def as_json(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    return [asdict(e) for e in entries]
