"""`kiln verify`, `kiln goss render|check` and `kiln goss-check`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kiln.cli.base import command, config_options, load_config
from kiln.core.errors import (
    EXIT_OK,
    InputError,
)
from kiln.goss import reports

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
    p.add_argument(
        "--hardware", choices=("virtio", "vmware"),
        help="the guest's disk controller and NIC: virtio (default), or vmware: the OVA's PVSCSI and VMXNET3",
    )  # fmt: skip
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
    p.add_argument(
        "--running-only",
        action="store_true",
        help="build phase: check only what needs a running system (services, kernel parameters, files "
        "under /proc /sys /run /dev, `kiln_phase: boot`); the VM runner's build VM, whose disk is checked "
        "at rest after shutdown",
    )
    p.set_defaults(func=_cmd_goss_check)


@command
def _register_goss(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("goss", help="goss spec tools")
    gsub = p.add_subparsers(dest="goss_command", metavar="ACTION", required=True)
    r = gsub.add_parser(
        "render", help="print a spec rendered and merged as goss does (gossfile includes followed)"
    )
    r.add_argument(
        "gossfile",
        metavar="GOSSFILE",
        type=Path,
        nargs="?",
        help="a gossfile (default: kiln's own, with --target)",
    )
    r.add_argument(
        "--vars", action="append", default=[], type=Path, metavar="FILE", help="YAML/JSON vars file"
    )
    r.add_argument("--vars-inline", default=None, metavar="JSON", help="vars as JSON, over --vars")
    r.add_argument(
        "--target",
        help="render kiln's own spec with the vars of this target's config (layered as for a build)",
    )
    r.add_argument(
        "--phase", choices=("build", "final"), default="build", help="with --target (default: build)"
    )
    config_options(r)
    r.set_defaults(func=_cmd_goss_render)


def _cmd_goss_render(args: argparse.Namespace) -> int:
    import json

    import yaml

    from kiln.core import inputs
    from kiln.goss import specs as goss
    from kiln.goss import userspecs, verify

    variables: dict[str, object] = {}
    gossfile = args.gossfile
    if args.target:  # kiln's vars for the target (and the user's goss_vars_file / goss_vars_inline)
        cfg = load_config(args, args.target)
        spec_dir = goss.spec_dir(args.runtime.root)
        extra = {"phase": args.phase, **verify.PLACEHOLDER_VARS}
        kiln_vars = goss.render_vars(cfg.values, extra, spec_dir=spec_dir)
        variables.update(userspecs.user_vars(cfg.values, args.runtime.root, kiln_vars, say=True))
        gossfile = gossfile or spec_dir / goss.ENTRY[args.phase]
    if gossfile is None:
        raise InputError("goss render: give GOSSFILE, or --target TARGET for kiln's own spec")
    for path in args.vars:
        variables.update(goss.read_vars_file(path))
    if args.vars_inline:
        inline = inputs.loads_json(args.vars_inline, "--vars-inline", "JSON")
        if not isinstance(inline, dict):
            raise InputError("--vars-inline: must be a JSON object")
        variables.update(inline)
    inputs.check_regular(gossfile, "gossfile")
    try:
        spec = goss.load_spec(gossfile, variables, env=dict(os.environ))
    except InputError as err:
        own = goss.spec_dir(args.runtime.root).resolve()
        if (
            not args.target
            and Path(gossfile).resolve().is_relative_to(own)
            and "is not defined" in err.message
        ):
            err.hint = (
                f"kiln's own specs render with a target's vars: kiln goss render {gossfile} --target TARGET"
            )
        raise
    merged: dict[str, dict[str, object]] = {}
    for resource in spec.resources:
        merged.setdefault(resource.type, {})[resource.id] = resource.attrs
    print(yaml.safe_dump(json.loads(json.dumps(merged, default=str)), sort_keys=True), end="")
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from kiln.core import progress
    from kiln.core.builddir import BuildDir
    from kiln.goss import verify

    build = BuildDir.open(args.build_dir)  # read once: the boot and the "reports in" line
    results = verify.verify_build(
        build,
        workdir=args.workdir,
        accelerator=args.accelerator,
        firmware=args.firmware,
        goss_binary=_goss_binary(args),
        runtime=args.runtime,
        fmt=args.fmt,
        hardware=args.hardware,
        monitor=progress.for_mode(args.progress),
    )
    if args.runtime.dry_run:
        return EXIT_OK
    s = reports.summary(results)
    where = verify.report_dir(build, args.fmt, args.firmware, args.hardware)
    print(
        f"{args.build_dir}: verified ({args.fmt}): {s['test-count']} checks passed "
        f"({s['skipped-count']} skipped); reports in {where}"
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
        spec_dir=goss.spec_dir(args.runtime.root),
        root=args.runtime.root,
        running_only=args.running_only,
    )
    verify.raise_on_failure(results, f"{args.user}@{args.host}:{args.port}", args.report_dir)
    s = reports.summary(results)
    print(f"goss {args.phase} phase: {s['test-count']} checks passed ({s['skipped-count']} skipped)")
    return EXIT_OK
