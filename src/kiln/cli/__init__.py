"""The kiln command line. The only module (with config loading) that reads the environment.

Each subcommand is a small function that parses arguments into calls on the lower layers:
CLI -> load and validate config -> render -> run Packer -> post-process -> verify -> publish.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from kiln import __version__, config
from kiln.core import proc
from kiln.core.builddir import BuildDir
from kiln.core.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    BuildError,
    ConfigError,
    InputError,
    KilnError,
)
from kiln.publish import gcs, images, upload

Handler = Callable[[argparse.Namespace], int]


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks on error")
    parser.add_argument(
        "--dry-run", action="store_true", help="print external commands instead of running them"
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "plain", "json"),
        default="auto",
        help="how builds report progress: plain lines (auto) or JSON lines for CI systems (json)",
    )


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


def _gcs_client(args: argparse.Namespace, read_only: bool = False) -> gcs.Client:
    """Writers need credentials; readers (images ls) fall back to anonymous access for public buckets."""
    import os

    key = args.key_file or (Path(os.environ["KEY_FILE"]) if os.environ.get("KEY_FILE") else None)
    endpoint = args.endpoint or gcs.DEFAULT_ENDPOINT
    try:
        creds = gcs.credentials(key, args.endpoint)
    except gcs.NoCredentials:
        if not read_only:
            raise
        logging.getLogger(__name__).info("no GCS credentials: listing anonymously (public buckets only)")
        creds = gcs.credentials(None, None, anonymous=True)
    return gcs.Client(creds, endpoint)


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
        "--artifacts",
        default="ova",
        help=f"comma list of {','.join([*upload.ARTIFACTS, *upload.GROUPS])} (default: ova)",
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
    p.add_argument("--qcow2", action="store_true", help="publish the qcow2 too (default: OVA, sha256, SBOM)")
    p.add_argument(
        "--base-url",
        default=None,
        help="public download base URL in the index (default: storage.googleapis.com)",
    )
    _config_options(p)
    p.set_defaults(func=_cmd_release)


def _cmd_release(args: argparse.Namespace) -> int:
    import json

    from kiln.core import progress
    from kiln.publish import release

    names = args.targets or ([t for t in config.targets()] if args.all else [])
    if not names:
        raise InputError("release: give TARGET... or --all")
    configs = []
    for name in names:
        for version in args.kubernetes_versions or [None]:
            configs.append(_load_config(args, name, {"kubernetes_semver": version} if version else None))
    bucket = _bucket(args)
    client = _gcs_client(args, read_only=args.plan)
    if args.plan:
        entries = release.plan(configs, client, bucket, args.channel)
        if args.json:
            print(json.dumps(release.matrix_json(entries)))
        else:
            print(release.summary(entries))
        return EXIT_OK
    artifacts = (*release.DEFAULT_ARTIFACTS, "qcow2") if args.qcow2 else release.DEFAULT_ARTIFACTS
    entries = release.run(
        configs, client, bucket, channel=args.channel, artifacts=artifacts, runtime=args.runtime,
        monitor=progress.for_mode(args.progress, sys.stderr if args.json else None),
        base_url=args.base_url or images.DEFAULT_BASE_URL,
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
        dry_run=bool(args.dry_run),
        parallel=max(1, args.parallel),
    )
    upload.plan(bd, opts)  # bad input (exit 2) before credentials are even looked at
    client = _gcs_client(args)
    reporter = upload.MonitorReporter(progress.for_mode(args.progress, sys.stderr))
    channel, results = upload.publish_build(bd, client, opts, reporter)
    if args.json:
        print(json.dumps(upload.results_json(bd, opts, channel, results, client), indent=2))
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
    import os
    import time

    from kiln.core import progress

    base = args.base_url or os.environ.get("KILN_DOWNLOAD_BASE_URL") or images.DEFAULT_BASE_URL
    url = images.resolve_url(args.image, base, _bucket(args))
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
    p.add_argument(
        "--format", dest="fmt", choices=("disk", "iso", "netboot"), default="disk",
        help="what to boot: the qcow2 (disk), the live ISO, or the netboot set through iPXE from kiln serve",
    )  # fmt: skip
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


@command
def _register_goss(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("goss", help="goss spec tools")
    gsub = p.add_subparsers(dest="goss_command", metavar="ACTION", required=True)
    r = gsub.add_parser(
        "render", help="print a spec rendered and merged as goss does (gossfile includes followed)"
    )
    r.add_argument("gossfile", metavar="GOSSFILE", type=Path)
    r.add_argument(
        "--vars", action="append", default=[], type=Path, metavar="FILE", help="YAML/JSON vars file"
    )
    r.add_argument("--vars-inline", default=None, metavar="JSON", help="vars as JSON, over --vars")
    r.set_defaults(func=_cmd_goss_render)


def _cmd_goss_render(args: argparse.Namespace) -> int:
    import json

    import yaml

    from kiln.core import inputs
    from kiln.goss import specs as goss

    variables: dict[str, object] = {}
    for path in args.vars:
        variables.update(goss.read_vars_file(path))
    if args.vars_inline:
        inline = inputs.loads_json(args.vars_inline, "--vars-inline", "JSON")
        if not isinstance(inline, dict):
            raise InputError("--vars-inline: must be a JSON object")
        variables.update(inline)
    inputs.check_regular(args.gossfile, "gossfile")
    spec = goss.load_spec(args.gossfile, variables, env=dict(os.environ))
    merged: dict[str, dict[str, object]] = {}
    for resource in spec.resources:
        merged.setdefault(resource.type, {})[resource.id] = resource.attrs
    print(yaml.safe_dump(json.loads(json.dumps(merged, default=str)), sort_keys=True), end="")
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from kiln.core import progress
    from kiln.goss import specs as goss
    from kiln.goss import verify

    results = verify.verify_build_dir(
        args.build_dir,
        workdir=args.workdir,
        accelerator=args.accelerator,
        firmware=args.firmware,
        goss_binary=_goss_binary(args),
        runtime=args.runtime,
        fmt=args.fmt,
        monitor=progress.for_mode(args.progress),
    )
    s = goss.summary(results)
    print(
        f"{args.build_dir}: verified ({args.fmt}): {s['test-count']} checks passed "
        f"({s['skipped-count']} skipped); reports in {args.build_dir / 'goss'}"
    )
    return EXIT_OK


def _cmd_goss_check(args: argparse.Namespace) -> int:
    from kiln.core.errors import InputError
    from kiln.goss import specs as goss
    from kiln.goss import verify

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


# --- configs, templates, builds: list, config, render, validate, build (config.py, render.py, packer.py) --


def _config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--var-file",
        "-var-file",
        dest="var_files",
        action="append",
        default=[],
        metavar="FILE",
        help="a JSON or .pkrvars.hcl file layered over the config files (repeatable; after PACKER_VAR_FILES)",
    )
    p.add_argument(
        "--var",
        "-var",
        dest="vars",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting (repeatable; highest precedence, like packer -var)",
    )


def _load_config(args: argparse.Namespace, target: str, extra: dict[str, str] | None = None) -> config.Config:
    """config.load with PACKER_VAR_FILES (space-separated, as image-builder users pass it) and -var pairs."""
    import os

    var_files = os.environ.get("PACKER_VAR_FILES", "").split() + list(args.var_files)
    overrides: dict[str, str] = {}
    for pair in args.vars:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"-var {pair!r}: want KEY=VALUE")
        overrides[key.strip()] = value
    overrides.update(extra or {})
    cfg = config.load(target, var_files=var_files, overrides=overrides)
    for line in cfg.warnings:
        print(f"kiln: warning: {line}", file=sys.stderr)
    return cfg


def _fmt_value(value: object) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


@command
def _register_config(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("list", help="list the targets (config/*.json) with OS, builder and install method")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("config", help="show a target's resolved config and where each value came from")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--json", action="store_true", help='print {"key": {"value": V, "origin": FILE}}')
    p.add_argument("--get", metavar="KEY", help="print only this key's value")
    _config_options(p)
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("render", help="render a target's Packer template and boot files")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("-o", "--output", type=Path, help="output directory (default: packer/.rendered/TARGET)")
    p.add_argument("--packer-version", help="render for this Packer version instead of the installed one")
    _config_options(p)
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("validate", help="render, parse with python-hcl2 and run the real `packer validate`")
    p.add_argument("target", metavar="TARGET", nargs="?")
    p.add_argument("--all", action="store_true", help="every target in config/")
    p.add_argument("--syntax-only", action="store_true", help="packer validate -syntax-only")
    _config_options(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("build", help="build a target's image with Packer")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--only", choices=("qemu", "vmware-iso"), help="builder (default: the target's `builder`)")
    p.add_argument("--foreground", action="store_true", help="show the VM console (headless=false)")
    p.add_argument("--force", action="store_true", help="rebuild even when the build dir is up to date")
    p.add_argument(
        "--no-verify", dest="verify", action="store_false",
        help="skip booting the finished image for verification (the build dir is then never 'up to date')",
    )  # fmt: skip
    p.add_argument(
        "--kubernetes-version",
        dest="kubernetes_versions",
        action="append",
        default=[],
        metavar="V",
        help="build one image per version (repeatable), sharing the os stage (default: kubernetes_semver)",
    )
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="Packer's own log too")
    _config_options(p)
    p.set_defaults(func=_cmd_build)


def _cmd_list(args: argparse.Namespace) -> int:
    import json

    from kiln.build.render import sources_for

    rows = []
    problems: list[str] = []
    for target in config.targets():
        try:
            cfg = config.load(target)
        except ConfigError as err:
            problems += err.problems
            continue
        rows.append(
            {
                "target": target,
                "os": f"{cfg.get('os_name')} {cfg.get('os_version')}",
                "builder": cfg.get("builder"),
                "builders": list(sources_for(cfg)),
                "install_method": cfg.get("install_method"),
                "firmware": cfg.get("firmware"),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'TARGET':<22} {'OS':<16} {'BUILDER':<11} {'INSTALL':<10} {'FIRMWARE':<8} BUILDERS")
        for r in rows:
            print(
                f"{r['target']:<22} {r['os']:<16} {r['builder']:<11} {r['install_method']:<10} "
                f"{r['firmware']:<8} {','.join(r['builders'])}"
            )
    if problems:
        raise ConfigError(problems)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    import json

    cfg = _load_config(args, args.target)
    if args.get:
        if args.get not in cfg.values:
            raise InputError(f"{args.get}: not a kiln setting", hint="`kiln config TARGET` lists every key")
        print(_fmt_value(cfg.plain()[args.get]))
    elif args.json:
        print(json.dumps(cfg.to_json(), indent=2))
    else:
        width = max(len(o) for o in cfg.origins.values())
        for key, value in cfg.plain().items():
            print(f"{cfg.origins[key]:<{width}}  {key}={_fmt_value(value)}")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    import shutil

    from kiln.build import packer, render
    from kiln.build.render import parse_version
    from kiln.core import inputs

    cfg = _load_config(args, args.target)
    if args.output is not None and str(args.output) in ("", "."):
        raise InputError("render -o: an empty path or '.' is not an output directory")
    out = args.output or (cfg.repo_root / "packer" / ".rendered" / args.target)
    inputs.check_replaceable(out, "render output directory")  # before anything is written
    try:
        out = out.resolve()
    except (OSError, RuntimeError) as exc:
        raise InputError(f"{out}: render output directory cannot be used ({exc})") from None
    version = parse_version(args.packer_version) if args.packer_version else packer.version(args.runtime)
    context_dir = out.parent / f".{out.name}.context"
    inputs.check_replaceable(context_dir, "placeholder credentials directory")
    made = not context_dir.exists()
    try:
        context = render.placeholder_context(cfg, context_dir, runtime=args.runtime)
        inputs.mark(context_dir, "kiln render (placeholder credentials)")
        result = render.render(cfg, context, out, version, args.runtime)
    except OSError as exc:
        if made:
            shutil.rmtree(context_dir, ignore_errors=True)
        raise InputError(f"{context_dir}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        if made:
            shutil.rmtree(context_dir, ignore_errors=True)
        raise
    print(
        f"{result.template} (Packer {'.'.join(map(str, result.packer_version))}, sources: "
        f"{', '.join(result.sources)})"
    )
    print(f"placeholder build credentials: {context.ssh_private_key_file} (a build makes its own)")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    import tempfile

    from kiln.build import validate

    if bool(args.all) == bool(args.target):
        raise InputError("validate: give a TARGET or --all")
    names = config.targets() if args.all else [config.check_target(args.target)]
    problems: list[str] = []
    failed: list[str] = []
    for name in names:
        try:
            cfg = _load_config(args, name)
            with tempfile.TemporaryDirectory(prefix=f"kiln-validate-{name}-") as tmp:
                result = validate.validate_target(
                    cfg, Path(tmp), syntax_only=args.syntax_only, runtime=args.runtime
                )
            print(
                f"ok    {name:<22} kiln {result.kiln_seconds:5.2f} s   "
                f"packer validate {result.packer_seconds:5.2f} s"
            )
        except ConfigError as err:
            problems += err.problems
            print(f"FAIL  {name:<22} {len(err.problems)} config error(s)")
        except KilnError as err:
            failed.append(f"{name}: {err.message}")
            print(f"FAIL  {name:<22} {err.message.splitlines()[0]}")
    if problems:
        raise ConfigError(problems)
    if failed:
        raise BuildError("packer validate failed for:\n" + "\n".join(failed))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from kiln.build import (
        pipeline as build_mod,  # the build pipeline: stages, cache, finalize, verify, publish
    )
    from kiln.core import progress

    extra = {"headless": "false"} if args.foreground else {}
    if args.only:
        extra["builder"] = args.only
    versions = args.kubernetes_versions or [None]
    configs = []
    for version in versions:  # every config is validated before anything builds
        more = {**extra, "kubernetes_semver": version} if version else extra
        configs.append(_load_config(args, args.target, more))
    monitor = progress.for_mode(args.progress)
    failed: list[str] = []
    for cfg in configs:
        try:
            result = build_mod.run_build(
                cfg, only=str(cfg.get("builder")), monitor=monitor, runtime=args.runtime, force=args.force,
                verify=args.verify,
            )  # fmt: skip
        except KilnError as err:
            if len(configs) == 1:
                raise
            failed.append(f"{cfg.artifact_name}: {err.message.splitlines()[0]}")
            print(f"kiln: error: {cfg.artifact_name}: {err.message}", file=sys.stderr)
            continue
        if args.runtime.dry_run:
            continue
        if args.progress == "json":  # stdout stays JSON lines
            import json

            print(json.dumps({"event": "result", "path": str(result.path), "up_to_date": result.up_to_date,
                              "input_hash": result.input_hash, "stages": result.stages}))  # fmt: skip
        else:
            print(f"up to date: {result.path}" if result.up_to_date else f"built: {result.path}")
    if failed:
        raise BuildError(f"{len(failed)} of {len(configs)} builds failed:\n" + "\n".join(failed))
    return 0


# --- kiln serve: the netboot set over HTTP (serve.py) --------------------------------------------------


@command
def _register_serve(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="serve a build's netboot set over HTTP (labs and tests)")
    p.add_argument("build_dir", metavar="BUILD_DIR", type=Path)
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0: any)")
    p.add_argument("--address", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--advertise", help="the URL clients reach this server at (default: http://10.0.2.2:PORT)")
    p.add_argument("--cidata", type=Path, metavar="ISO|DIR", help="also serve this NoCloud seed at /seed/")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    import time

    from kiln.vm import serve

    build = BuildDir.open(args.build_dir)
    seed = serve.seed_files(args.cidata) if args.cidata else None
    server = serve.Server(build, address=args.address, port=args.port, advertise=args.advertise, seed=seed)
    with server:
        print(f"serving {server.dir} on {args.address}:{server.port} as {server.base}", flush=True)
        print(f"  iPXE: chain {server.base}/boot.ipxe", flush=True)
        print(
            f"  QEMU: qemu-system-x86_64 -m 2048 -boot n -netdev user,id=n0,bootfile={server.base}/boot.ipxe "
            "-device virtio-net-pci,netdev=n0",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopped")
    return EXIT_OK


# --- the stage cache: cache ls|prune (stages.py) -------------------------------------------------------


@command
def _register_cache(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cache", help="list or prune the build stage cache (cache_dir/stages)")
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    ls = csub.add_parser("ls", help="cached stages: ID, stage, target, size, last used")
    ls.add_argument("--json", action="store_true", help="print machine-readable JSON")
    ls.set_defaults(func=_cmd_cache_ls)
    prune = csub.add_parser("prune", help="delete least recently used stages (never one a build holds)")
    prune.add_argument("--max-size", metavar="SIZE", help="shrink the cache to this size (20G, 500M, ...)")
    prune.add_argument("--older-than", type=float, metavar="DAYS", help="delete stages unused for DAYS")
    prune.set_defaults(func=_cmd_cache_prune)


def _cache_dir() -> Path:
    """cache_dir as common.json and the user's var files set it (the stage cache is shared by targets)."""
    return config.load(config.targets()[0], var_files=os.environ.get("PACKER_VAR_FILES", "").split()).path(
        "cache_dir"
    )


def _cmd_cache_ls(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from kiln.build import stages
    from kiln.core import inputs

    records = stages.entries(_cache_dir())
    if args.json:
        print(json.dumps([asdict(r) for r in records], indent=2))
        return EXIT_OK
    import time

    print(f"{'ID':<14} {'STAGE':<11} {'TARGET':<22} {'SIZE':>8}  LAST USED")
    for r in sorted(records, key=lambda r: r.last_used, reverse=True):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.last_used))
        print(f"{r.id[:12]:<14} {r.stage:<11} {r.target:<22} {inputs.human(r.size):>8}  {when}")
    return EXIT_OK


def _cmd_cache_prune(args: argparse.Namespace) -> int:
    from kiln.build import stages
    from kiln.core import inputs

    max_size = stages.parse_size(args.max_size) if args.max_size else None
    removed = stages.prune(_cache_dir(), max_size=max_size, older_than_days=args.older_than)
    for r in removed:
        print(f"removed {r.id[:12]} ({r.stage}, {r.target}, {inputs.human(r.size)})")
    print(f"{len(removed)} stage(s) removed")
    return EXIT_OK


# --- booting, SSH and conformance: cidata, boot, ssh, conformance (cidata.py, vm.py, boot.py, ...) -----


def _public_keys(args: argparse.Namespace) -> tuple[list[str], str]:
    """--ssh-public-key, else SSH_PUBLIC_KEY, else ~/.ssh/*.pub (the CLI is where the environment is read)."""
    import os

    from kiln.vm import cidata

    return cidata.discover_public_keys(args.ssh_public_key, os.environ.get("SSH_PUBLIC_KEY"), Path.home())


def _build_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("build_dir", metavar="BUILD_DIR", type=Path, help="a finished build (packer/output/NAME)")


@command
def _register_boot(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cidata", help="write a cloud-init NoCloud seed ISO (what `make -C cloudinit` runs)")
    p.add_argument("-o", "--output", type=Path, help="ISO to write (default: cloudinit/cidata.iso)")
    p.add_argument(
        "--ssh-public-key", action="append", default=[], metavar="FILE",
        help="public key for ssh_authorized_keys (repeatable; default: SSH_PUBLIC_KEY, else ~/.ssh/*.pub)",
    )  # fmt: skip
    p.add_argument("--user", default=None, help="login user the seed creates (default: kiln)")
    p.add_argument("--hostname", help="local-hostname in meta-data (default: from build_name)")
    p.add_argument("--instance-id", help="instance-id in meta-data (default: new on every run)")
    p.add_argument("--network-config", action="store_true", help="add network-config (DHCP on every NIC)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--target", help="template values from this target's resolved config (e.g. debian-12)")
    src.add_argument("--build-dir", type=Path, help="template values from a finished build's config.json")
    _config_options(p)
    p.set_defaults(func=_cmd_cidata)

    p = sub.add_parser("boot", help="boot a build on a throwaway overlay, SSH forwarded (Ctrl-C stops it)")
    _build_dir_arg(p)
    p.add_argument("--stop", action="store_true", help="stop a `kiln boot --detach` of BUILD_DIR")
    p.add_argument("--detach", action="store_true", help="return once the guest is up; stop with --stop")
    p.add_argument("--cidata", type=Path, metavar="ISO", help="your own seed (default: kiln makes one)")
    p.add_argument(
        "-i", "--identity", type=Path, metavar="KEY",
        help="private key for the --cidata seed (without it kiln only waits for sshd)",
    )  # fmt: skip
    p.add_argument("--user", help="login user (default: kiln, or the first user of the --cidata seed)")
    p.add_argument("--hostname", help="guest host name for kiln's seed (default: from build_name)")
    p.add_argument("--firmware", choices=("bios", "efi"), help="default: what the image declares")
    p.add_argument("--accelerator", choices=("auto", "kvm", "tcg"), help="default: the build's setting")
    p.add_argument("--memory", type=int, default=2048, help="guest memory in MiB (default 2048)")
    p.add_argument("--cpus", type=int, default=2, help="guest vCPUs (default 2)")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for SSH and cloud-init")
    p.set_defaults(func=_cmd_boot)

    p = sub.add_parser("ssh", help="log into the booted BUILD_DIR (paramiko), or run CMD there")
    _build_dir_arg(p)
    p.add_argument(
        "cmd", nargs=argparse.REMAINDER, metavar="-- CMD", help="command to run (default: a login shell)"
    )
    p.set_defaults(func=_cmd_ssh)

    p = sub.add_parser("conformance", help="CNI + Kubernetes node e2e conformance run on BUILD_DIR")
    _build_dir_arg(p)
    p.add_argument("--tests", type=Path, required=True, metavar="TARBALL", help="kubernetes-test.tar.gz")
    p.add_argument("--nodes", type=int, help="ginkgo --nodes (default 8)")
    p.add_argument("--focus", help="ginkgo --focus (default \\[Conformance\\])")
    p.add_argument("--skip", help="ginkgo --skip (default: Flaky, Serial, sig-network, Lifecycle Hook)")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds the ginkgo run may take")
    p.add_argument("--results", type=Path, help="where JUnit files go (default: BUILD_DIR/conformance)")
    p.set_defaults(func=_cmd_conformance)


def _cmd_cidata(args: argparse.Namespace) -> int:
    from kiln.vm import cidata

    keys, source = _public_keys(args)
    if args.build_dir is not None:
        build = BuildDir.open(args.build_dir)
        values = build.values()
    elif args.target:
        values = dict(_load_config(args, args.target).plain())
    else:
        from kiln.config.settings import SETTINGS

        values = {s.name: s.default for s in SETTINGS}
    out = args.output or config.repo_root() / "cloudinit" / "cidata.iso"
    cidata.write_seed(
        out, keys, user=args.user or cidata.DEFAULT_USER, hostname=args.hostname,
        instance_id=args.instance_id, values=values, network_config=args.network_config,
    )  # fmt: skip
    user = args.user or cidata.DEFAULT_USER
    print(f"wrote {out} (volume cidata; {len(keys)} key(s) from {source}; user {user})")
    return EXIT_OK


def _cmd_boot(args: argparse.Namespace) -> int:
    import time

    from kiln.vm import boot

    build = BuildDir.open(args.build_dir)
    if args.stop:
        state = boot.stop(build)
        print(f"stopped QEMU pid {state.pid}" if state else f"{build.path}: was not booted")
        return EXIT_OK
    vm, state = boot.start(
        build, cidata_iso=args.cidata, key=args.identity, user=args.user, firmware=args.firmware,
        accelerator=args.accelerator, memory=args.memory, cpus=args.cpus, hostname=args.hostname,
        detach=args.detach, timeout=args.timeout, runtime=args.runtime,
    )  # fmt: skip
    if args.runtime.dry_run:
        return EXIT_OK
    print(f"{build.name} is up ({state.accelerator}, {state.firmware}), QEMU pid {state.pid}")
    print(f"  kiln ssh {build.path}")
    print(f"  hack/image-ssh.sh {build.path}")
    print(f"  {state.connect_hint()}")
    print(f"  serial log: {state.serial_log}")
    if args.detach:
        print(f"  stop with: kiln boot --stop {build.path}")
        return EXIT_OK
    print("Ctrl-C stops the VM.")
    try:
        while vm.running():
            time.sleep(1)
        print(f"the guest powered off ({vm.died()})")
    except KeyboardInterrupt:
        print("stopping the VM...")
    finally:
        vm.stop()
        boot.cleanup(build)
    return EXIT_OK


def _cmd_ssh(args: argparse.Namespace) -> int:
    from kiln.vm import boot

    build = BuildDir.open(args.build_dir)
    state = boot.require_state(build)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    with boot.session(state) as session:
        if not cmd:
            return session.interactive(term=os.environ.get("TERM", "xterm"))
        command = cmd if len(cmd) > 1 else cmd[0]  # one word: a shell string, as with ssh
        rc, _, err = session.run(command, check=False, timeout=None, on_line=lambda ln: print(ln, flush=True))
        sys.stderr.write(err)
        return rc


def _cmd_conformance(args: argparse.Namespace) -> int:
    import tempfile

    from kiln.vm import boot, conformance

    build = BuildDir.open(args.build_dir)
    flags = conformance.Flags().with_overrides(nodes=args.nodes, focus=args.focus, skip=args.skip)
    results = args.results or build.path / "conformance"
    with tempfile.TemporaryDirectory(prefix="kiln-e2e-") as tmp:
        binaries = conformance.extract_binaries(args.tests, Path(tmp))  # bad tarball: exit 2, nothing booted
        with boot.booted(build) as state, boot.session(state) as session:
            result = conformance.run(
                session, binaries, results, flags=flags,
                cni_bin_dirs=list(dict.fromkeys([str(build.setting("cni_bin_dir", "/opt/cni/bin")),
                                                 *conformance.CNI_BIN_DIRS])),
                timeout=args.timeout, on_line=lambda ln: print(ln, flush=True),
            )  # fmt: skip
    print(f"conformance: ginkgo exited {result.returncode}; CNI {result.cni_version}, {result.cni_bin_dir}")
    for path in result.junit_files:
        print(f"  {path}")
    print(f"  log: {result.log_file}")
    if not result.junit_files:
        raise conformance.ConformanceFailed(
            f"{results}: ginkgo wrote no JUnit results", hint=f"see {result.log_file}"
        )
    if result.returncode != 0:
        raise conformance.ConformanceFailed(f"conformance run failed (ginkgo exit {result.returncode})")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s",
    )
    args.runtime = config.default_runtime(dry_run=bool(args.dry_run), debug=bool(args.debug))
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
    except BrokenPipeError:
        # `kiln config X | head`: the reader went away; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
