"""The kiln command line. The only module (with config loading) that reads the environment.

Each subcommand is a small function that parses arguments into calls on the lower layers:
CLI -> load and validate config -> render -> run Packer -> post-process -> verify -> publish.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from . import __version__, gcs, images, proc, upload
from .builddir import BuildDir
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, KilnError

Handler = Callable[[argparse.Namespace], int]


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks on error")
    parser.add_argument("--dry-run", action="store_true", help="print external commands instead of running them")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description="Bake Kubernetes node VM images.")
    parser.add_argument("--version", action="version", version=f"kiln {__version__}")
    _add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in REGISTRY:
        register(sub)
    return parser


# Each entry adds one or more subcommands to the parser. Modules stay free of argparse.
REGISTRY: list[Callable[[argparse._SubParsersAction], None]] = []  # type: ignore[type-arg]


def command(func: Callable[[argparse._SubParsersAction], None]) -> Callable[..., None]:  # type: ignore[type-arg]
    REGISTRY.append(func)
    return func


# --- subcommands are registered below, one block per concern -----------------------------------------


# --- publishing: upload, images ls|get (gcs.py, upload.py, images.py) ---------------------------------


def _gcs_options(p: argparse.ArgumentParser, key_file: bool = True) -> None:
    import os

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


def _gcs_client(args: argparse.Namespace) -> gcs.Client:
    import os

    key = args.key_file or (Path(os.environ["KEY_FILE"]) if os.environ.get("KEY_FILE") else None)
    endpoint = args.endpoint or gcs.DEFAULT_ENDPOINT
    return gcs.Client(gcs.credentials(key, args.endpoint), endpoint)


def _bucket(args: argparse.Namespace, setting: object = None) -> str:
    import os

    return str(args.bucket or os.environ.get("KILN_GCS_BUCKET") or setting or upload.DEFAULT_BUCKET)


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
        "--artifacts", default="ova", help=f"comma list of {','.join(upload.ARTIFACTS)} (default: ova)"
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
        "--base-url", help="public download base URL (default: $KILN_DOWNLOAD_BASE_URL, https://storage.googleapis.com)"
    )
    _gcs_options(get, key_file=False)
    get.set_defaults(func=_cmd_images_get)


def _cmd_upload(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    bd = BuildDir.open(args.build_dir)
    if args.all:
        kinds = tuple(k for k, where in upload.ARTIFACTS.items() if where(bd)[0].is_file())
    else:
        kinds = tuple(k.strip() for k in args.artifacts.split(",") if k.strip())
    opts = upload.Options(
        bucket=_bucket(args, bd.setting("gcs_bucket")),
        channel=args.channel,
        artifacts=kinds,
        force=args.force,
        dry_run=bool(args.dry_run),
        parallel=max(1, args.parallel),
    )
    upload.plan(bd, opts)  # bad input (exit 2) before credentials are even looked at
    client = _gcs_client(args)
    with upload.ProgressReporter() as reporter:
        channel, results = upload.publish_build(bd, client, opts, reporter)
    if args.json:
        print(json.dumps(upload.results_json(bd, opts, channel, results, client), indent=2))
    else:
        Console().print(upload.summary_table(results))
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

    found = images.list_images(_gcs_client(args), _bucket(args), args.channel, args.version)
    if args.json:
        print(json.dumps([asdict(i) | {"path": i.path} for i in found], indent=2))
        return EXIT_OK
    table = Table(title=f"gs://{_bucket(args)}")
    for col in ("channel", "version", "file", "size", "updated", "sha256"):
        table.add_column(col)
    for i in found:
        table.add_row(i.channel, i.version, i.file, str(i.size), i.updated, (i.sha256 or "-")[:16])
    Console().print(table)
    return EXIT_OK


def _cmd_images_get(args: argparse.Namespace) -> int:
    import json
    import os

    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    base = args.base_url or os.environ.get("KILN_DOWNLOAD_BASE_URL") or images.DEFAULT_BASE_URL
    url = images.resolve_url(args.image, base, _bucket(args))
    with Progress(TextColumn("download"), BarColumn(), DownloadColumn(), TransferSpeedColumn()) as bar:
        task = bar.add_task("get", total=None)
        result = images.download(
            url, args.output_dir, on_progress=lambda n, total: bar.update(task, completed=n, total=total)
        )
    if args.json:
        print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in vars(result).items()}))
    else:
        print(f"{result.path}: {result.action}, sha256 {result.sha256} verified ({result.size} bytes)")
    return EXIT_OK


# --- verification: verify, goss-check (goss.py, verify.py) ---------------------------------------------


def _goss_binary(args: argparse.Namespace) -> Path | None:
    import os

    value = args.goss_binary or os.environ.get("KILN_GOSS_BINARY") or ""
    return Path(value) if value else None


@command
def _register_verify(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    goss_help = "run this goss binary in the guest instead of kiln's evaluator (env KILN_GOSS_BINARY)"
    p = sub.add_parser("verify", help="boot a finished image on a throwaway overlay and run the goss specs")
    p.add_argument("build_dir", metavar="BUILD_DIR", type=Path)
    p.add_argument("--accelerator", choices=("auto", "kvm", "tcg"), help="default: the build's setting")
    p.add_argument("--firmware", choices=("bios", "efi"), help="default: what the image declares")
    p.add_argument("--goss-binary", type=Path, help=goss_help)
    p.add_argument("--workdir", type=Path, help="keep the overlay, seed and serial log here (default: temp)")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser(
        "goss-check", help="run the goss specs on a running host over SSH (used inside builds)"
    )
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=22)
    p.add_argument("--user", required=True)
    p.add_argument("--key", required=True, type=Path, help="private key file for --user")
    p.add_argument("--config", required=True, type=Path, help="the resolved config (config.json form)")
    p.add_argument("--phase", choices=("build", "final"), default="build")
    p.add_argument("--report-dir", type=Path, help="write vars-PHASE.yaml, report.json and junit.xml here")
    p.add_argument("--goss-binary", type=Path, help=goss_help)
    p.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra goss var (the final phase needs verify_user, verify_key_marker, verify_instance_id)",
    )
    p.set_defaults(func=_cmd_goss_check)


def _cmd_verify(args: argparse.Namespace) -> int:
    from . import goss, verify

    results = verify.verify_build_dir(
        args.build_dir,
        workdir=args.workdir,
        accelerator=args.accelerator,
        firmware=args.firmware,
        goss_binary=_goss_binary(args),
    )
    s = goss.summary(results)
    print(
        f"{args.build_dir}: verified: {s['test-count']} checks passed ({s['skipped-count']} skipped); "
        f"reports in {args.build_dir / 'goss'}"
    )
    return EXIT_OK


def _cmd_goss_check(args: argparse.Namespace) -> int:
    from . import goss, verify
    from .errors import InputError

    extra: dict[str, str] = {}
    for item in args.var:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--var {item!r}: expected KEY=VALUE")
        extra[key] = value
    values = verify.load_config_json(args.config)
    results = verify.check_host(
        args.host,
        args.port,
        args.user,
        args.key,
        values,
        phase=args.phase,
        report_dir=args.report_dir,
        goss_binary=_goss_binary(args),
        extra_vars=extra,
    )
    verify.raise_on_failure(results, f"{args.user}@{args.host}:{args.port}", args.report_dir)
    s = goss.summary(results)
    print(f"goss {args.phase} phase: {s['test-count']} checks passed ({s['skipped-count']} skipped)")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s",
    )
    proc.DRY_RUN = bool(args.dry_run)
    proc.install_sigterm_handler()
    try:
        return int(args.func(args) or EXIT_OK)
    except KilnError as err:
        if args.debug:
            traceback.print_exc()
        print(f"kiln: error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"kiln: hint: {err.hint}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
