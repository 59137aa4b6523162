"""`kiln upload`, `kiln images ls|get` and `kiln release`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from kiln import config
from kiln.cli.base import (
    command,
    config_options,
    load_config,
    packer_flag_options,
    packer_flags,
    signing_key_path,
)
from kiln.core.builddir import BuildDir
from kiln.core.errors import (
    EXIT_FAILED,
    EXIT_OK,
    InputError,
)
from kiln.publish import gcs, images, upload

# --- publishing: upload, images ls|get (gcs.py, upload.py, images.py) ---------------------------------


def _gcs_options(p: argparse.ArgumentParser, key_file: bool = True) -> None:

    p.add_argument(
        "--bucket",
        help="GCS bucket (default: $KILN_GCS_BUCKET, else the build's gcs_bucket setting, else capv-images)",
    )
    if key_file:
        p.add_argument(
            "--key-file", type=Path, help="service-account JSON key (default: $KEY_FILE; else ADC)"
        )
        p.add_argument(
            "--endpoint",
            default=os.environ.get("KILN_GCS_ENDPOINT") or os.environ.get("STORAGE_EMULATOR_HOST"),
            help="GCS JSON API endpoint (default: $KILN_GCS_ENDPOINT, $STORAGE_EMULATOR_HOST, "
            "https://storage.googleapis.com); anonymous unless a key file is given",
        )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def _gcs_client(args: argparse.Namespace, read_only: bool = False) -> gcs.Client:
    """Writers need credentials; readers (images ls, --plan, --dry-run) fall back to anonymous access for
    public buckets, and their client refuses every write."""

    key = args.key_file or (Path(os.environ["KEY_FILE"]) if os.environ.get("KEY_FILE") else None)
    endpoint = args.endpoint or gcs.DEFAULT_ENDPOINT
    try:
        creds = gcs.credentials(key, args.endpoint)
    except gcs.NoCredentials:
        if not read_only:
            raise
        logging.getLogger(__name__).info("no GCS credentials: listing anonymously (public buckets only)")
        creds = gcs.credentials(None, None, anonymous=True)
    return gcs.Client(creds, endpoint, read_only=read_only)


def _bucket(args: argparse.Namespace, setting: object = None) -> str:
    """--bucket, else KILN_GCS_BUCKET, else the build's gcs_bucket, else the default; `gs://` is stripped and
    the name checked against GCS's rules before any request."""
    from kiln.config.validators import bucket_name, bucket_problem

    sources = [(args.bucket, "--bucket"), (os.environ.get("KILN_GCS_BUCKET"), "KILN_GCS_BUCKET")]
    given, where = next(
        ((g, w) for g, w in sources if g), (str(setting or upload.DEFAULT_BUCKET), "gcs_bucket")
    )
    name = bucket_name(str(given))
    problem = bucket_problem(name)
    if problem:
        raise InputError(f"{where}: {problem}")
    return name


def _channel_flags(p: argparse.ArgumentParser, verb: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--ci", dest="channel", action="store_const", const="ci", help=f"{verb} ci/ only")
    g.add_argument(
        "--release", dest="channel", action="store_const", const="release", help=f"{verb} release/ only"
    )


@command
def _register_publish(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("upload", help="publish a build directory to GCS (checksum-aware)")
    p.add_argument("build_dir", metavar="BUILD_DIR", type=Path)
    _gcs_options(p)
    _channel_flags(p, "publish under")
    p.add_argument(
        "--artifacts",
        default="ova",
        help=f"comma list of {','.join(upload.KINDS)} (default: ova)",
    )
    p.add_argument("--all", action="store_true", help="every artifact the build directory has")
    p.add_argument("--force", action="store_true", help="replace a different image at a release path")
    p.add_argument("--parallel", type=int, default=4, help="artifacts uploaded at once (default: 4)")
    p.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS, help="show what would happen")
    p.set_defaults(func=_cmd_upload)

    images = sub.add_parser("images", help="list or download published images")
    isub = images.add_subparsers(dest="images_command", metavar="ACTION", required=True)
    ls = isub.add_parser("ls", help="list published images")
    _gcs_options(ls)
    _channel_flags(ls, "list")
    ls.add_argument("--version", help="only this Kubernetes version (e.g. v1.30.1)")
    ls.set_defaults(func=_cmd_images_ls)
    get = isub.add_parser("get", help="download an image over HTTP, verified against its .sha256, resumable")
    get.add_argument(
        "image", metavar="NAME|URL", help="NAME+kube-VERSION.ova, CHANNEL/VERSION/FILE, gs:// or http(s)"
    )
    get.add_argument("-o", "--output-dir", type=Path, default=Path("."), help="where to save (default: .)")
    get.add_argument(
        "--base-url",
        help="public download base URL (default: $KILN_DOWNLOAD_BASE_URL, https://storage.googleapis.com)",
    )
    _gcs_options(get, key_file=False)
    get.set_defaults(func=_cmd_images_get)


@command
def _register_release(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "release", help="build, verify and publish what is not published yet (CI release jobs)"
    )
    p.add_argument("targets", metavar="TARGET", nargs="*", help="targets (default with --all: every target)")
    p.add_argument("--all", action="store_true", help="every target kiln can build on this machine kind")
    p.add_argument(
        "--kubernetes-version", dest="kubernetes_versions", action="append", default=[], metavar="V",
        help="one entry per version (repeatable; default: kubernetes_semver)",
    )  # fmt: skip
    _gcs_options(p)
    _channel_flags(p, "publish under")
    p.add_argument("--plan", action="store_true", help="only print what would be built (nothing is built)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        default=argparse.SUPPRESS,
        help="say what would be built and published; build, upload and index nothing",
    )
    p.add_argument(
        "--qcow2", action="store_true",
        help="publish the qcow2 too (default: OVA and its sha256, with the SBOM, provenance, file "
        "manifest and package list)",
    )  # fmt: skip
    p.add_argument(
        "--signing-key", type=Path, metavar="PEM",
        help="sign the provenance of what this release builds (env KILN_SIGNING_KEY)",
    )  # fmt: skip
    p.add_argument(
        "--require-signature", action="store_true",
        help="publish an image only when its provenance is signed with the signing key and true of every "
        "artifact (a reused unsigned build fails, nothing of it uploaded)",
    )  # fmt: skip
    p.add_argument(
        "--base-url",
        default=None,
        help="public download base URL in the index (default: storage.googleapis.com)",
    )
    config_options(p)
    packer_flag_options(p)
    p.set_defaults(func=_cmd_release)


def _cmd_release(args: argparse.Namespace) -> int:
    import json

    from kiln.core import progress
    from kiln.publish import release

    names = args.targets or (config.targets(args.runtime.root) if args.all else [])
    if not names:
        raise InputError("release: give TARGET... or --all")
    configs = []
    for name in names:
        for version in args.kubernetes_versions or [None]:
            configs.append(load_config(args, name, {"kubernetes_semver": version} if version else None))
    bucket = _bucket(args)
    client = _gcs_client(args, read_only=args.plan or args.runtime.dry_run)
    if args.plan:
        entries = release.plan(configs, client, bucket, args.channel, runtime=args.runtime)
        if args.json:
            print(json.dumps(release.matrix_json(entries)))
        else:
            print(release.summary(entries))
        return EXIT_OK
    artifacts = (*release.DEFAULT_ARTIFACTS, "qcow2") if args.qcow2 else release.DEFAULT_ARTIFACTS
    entries = release.run(
        configs, client, bucket, channel=args.channel, artifacts=artifacts, runtime=args.runtime,
        monitor=progress.for_mode(args.progress, sys.stderr if args.json else None),
        base_url=args.base_url or images.DEFAULT_BASE_URL, packer_flags=packer_flags(args),
        signing_key=signing_key_path(args), require_signature=args.require_signature,
    )  # fmt: skip
    if args.json:
        print(json.dumps({"entries": release.as_json(entries), "requests": client.stats.requests,
                          "bytes_sent": client.stats.bytes_sent}, indent=2))  # fmt: skip
    else:
        print(release.summary(entries))
        print(f"{client.stats.requests} requests, {client.stats.bytes_sent} bytes sent")
    failed = [e for e in entries if e.status == "failed"]
    for e in failed:
        print(f"kiln: error: {e.name}: {e.detail}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_upload(args: argparse.Namespace) -> int:
    import json

    from kiln.core import progress

    bd = BuildDir.open(args.build_dir)
    if args.all:
        kinds = upload.available(bd)
    else:
        kinds = tuple(k.strip() for k in args.artifacts.split(",") if k.strip())
    opts = upload.Options(
        bucket=_bucket(args, bd.setting("gcs_bucket")),
        channel=args.channel,
        artifacts=kinds,
        force=args.force,
        parallel=max(1, args.parallel),
    )
    upload.plan(bd, opts)  # bad input (exit 2) before credentials are even looked at
    client = _gcs_client(args, read_only=args.runtime.dry_run)
    reporter = upload.MonitorReporter(progress.for_mode(args.progress, sys.stderr))
    channel, results = upload.publish_build(bd, client, opts, reporter, runtime=args.runtime)
    if args.json:
        print(json.dumps(upload.results_json(bd, opts, channel, results, client, args.runtime), indent=2))
    else:
        print(upload.summary(results))
        st = client.stats
        print(f"{st.requests} requests, {st.bytes_sent} bytes sent, {st.retries} retries")
    bad = [r for r in results if not r.ok]
    for r in bad:
        print(f"kiln: error: {r.url}: {r.action}: {r.detail}", file=sys.stderr)
    return EXIT_FAILED if bad else EXIT_OK


def _cmd_images_ls(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    from kiln.publish import release

    client = _gcs_client(args, read_only=True)
    index = release.read_index(client, _bucket(args))
    if index.generation:  # the published index: every image with its URLs, hashes and input hash
        shown = [
            img
            for img in index.images
            if (not args.channel or img.get("channel") == args.channel)
            and (not args.version or img.get("kubernetes_semver") == args.version)
        ]
        if args.json:
            print(json.dumps(shown, indent=2))
            return EXIT_OK
        for img in shown:
            ova_url = (img.get("urls") or {}).get("ova", "")
            cols = ("channel", "kubernetes_semver", "name", "size", "published", "sha256")
            print("\t".join(str(img.get(c, "")) for c in cols) + f"\t{ova_url}")
        return EXIT_OK
    found = images.list_images(client, _bucket(args), args.channel, args.version)
    if args.json:
        print(json.dumps([asdict(i) | {"path": i.path} for i in found], indent=2))
        return EXIT_OK
    console = Console()
    if not console.is_terminal:  # one object a line, tab-separated, for scripts
        for i in found:
            print(f"gs://{_bucket(args)}/{i.path}\t{i.size}\t{i.updated}\t{i.sha256 or '-'}")
        return EXIT_OK
    table = Table(title=f"gs://{_bucket(args)}")
    for col in ("channel", "version", "file", "size", "updated", "sha256"):
        table.add_column(col)
    for i in found:
        table.add_row(i.channel, i.version, i.file, str(i.size), i.updated, (i.sha256 or "-")[:16])
    console.print(table)
    return EXIT_OK


def _cmd_images_get(args: argparse.Namespace) -> int:
    import json
    import time

    from kiln.core import progress

    base = args.base_url or os.environ.get("KILN_DOWNLOAD_BASE_URL") or images.DEFAULT_BASE_URL
    url = images.resolve_url(args.image, base, _bucket(args))
    if args.runtime.dry_run:
        print(f"would download {url} into {args.output_dir} (checked against {url}.sha256)")
        return EXIT_OK
    monitor = progress.for_mode(args.progress, sys.stderr)
    started = time.monotonic()
    monitor.begin(url, "download")
    try:
        result = images.download(
            url, args.output_dir, on_progress=lambda n, t: monitor.progress(url, n, t, "bytes")
        )
    except BaseException:
        monitor.end(url, time.monotonic() - started, ok=False)
        raise
    monitor.end(url, time.monotonic() - started, ok=True, note=result.action)
    if args.json:
        print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in vars(result).items()}))
    else:
        print(f"{result.path}: {result.action}, sha256 {result.sha256} verified ({result.size} bytes)")
    return EXIT_OK
