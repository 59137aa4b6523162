"""`kiln list`, `config`, `render`, `validate`, `build` and `cache ls|prune`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from kiln import config
from kiln.cli.base import (
    command,
    config_options,
    load_config,
    packer_flag_options,
    packer_flags,
    signing_key_path,
)
from kiln.core.errors import (
    EXIT_FAILED,
    EXIT_OK,
    BuildError,
    ConfigError,
    InputError,
    Interrupted,
    KilnError,
)

# --- configs, templates, builds: list, config, render, validate, build (config.py, render.py, packer.py) --


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
    config_options(p)
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("render", help="render a target's Packer template and boot files")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("-o", "--output", type=Path, help="output directory (default: packer/.rendered/TARGET)")
    p.add_argument("--packer-version", help="render for this Packer version instead of the installed one")
    config_options(p)
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("validate", help="render, parse with python-hcl2 and run the real `packer validate`")
    p.add_argument("target", metavar="TARGET", nargs="?")
    p.add_argument("--all", action="store_true", help="every target in config/")
    p.add_argument("--syntax-only", action="store_true", help="packer validate -syntax-only")
    config_options(p)
    packer_flag_options(p, force=True)  # PACKER_FLAGS is shared with the build targets; validate needs none
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser(
        "stages", help="a target's stages from the stage table: IDs, how each runs, cache hits"
    )
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    config_options(p)
    p.set_defaults(func=_cmd_stages)

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
    p.add_argument(
        "--signing-key", type=Path, metavar="PEM",
        help="sign the build's provenance (NAME.intoto.jsonl) with this ed25519 or ECDSA P-256 private key "
        "(env KILN_SIGNING_KEY); unsigned without one",
    )  # fmt: skip
    config_options(p)
    packer_flag_options(p, force=True)
    p.set_defaults(func=_cmd_build)


def _cmd_stages(args: argparse.Namespace) -> int:
    """The stage table for one target: what the build would reuse and what it would run. Reads only."""
    import json

    from kiln.build import pipeline, stages

    cfg = load_config(args, args.target)
    ids = pipeline.plan_ids(cfg, args.runtime)
    cache_dir = cfg.path("cache_dir")
    rows: list[dict[str, Any]] = []
    for stage in stages.STAGES:
        sid = ids[stage.name]
        if not stage.cached:
            state = "always runs"
        elif stage.name == "base":
            state = (
                "no base (the OS installs in the os stage)"
                if not pipeline.has_base(cfg)
                else ("cached" if pipeline.base_cached(cfg) else "would build")
            )
        else:
            state = "cached" if stages.lookup(cache_dir, sid.id) else "would build"
        runner = stage.runner
        if stage.name == "base" and cfg.settings.install_method == "cloudimg":
            runner = "download"  # the cloud image, checked and cached (kiln.build.cloudimg)
        if runner == "packer" and cfg.settings.provisioner == "chroot":  # bootstrap, qemu (config checks it)
            runner = "chroot"
        row = {"stage": stage.name, "id": sid.id, "runner": runner, "cached": stage.cached}
        row.update(state=state, makes=stage.makes, settings=sorted(sid.inputs["settings"]))
        rows.append(row)
    if args.json:
        doc = {"target": cfg.target, "input_hash": ids["finalize"].id, "stages": rows}
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    print(f"{'STAGE':<11} {'ID':<14} {'RUNNER':<10} {'STATE':<12} MAKES")
    for r in rows:
        print(f"{r['stage']:<11} {r['id'][:12]:<14} {r['runner']:<10} {r['state']:<12} {r['makes']}")
    print(f"input hash: {ids['finalize'].id}")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    import json

    from kiln.build.render import sources_for

    rows = []
    problems: list[str] = []
    for target in config.targets(args.runtime.root):
        try:
            cfg = config.load(target, repo_root=args.runtime.root)
        except ConfigError as err:
            problems += err.problems
            continue
        rows.append(
            {
                "target": target,
                "os": f"{cfg.get('os_name')} {cfg.get('os_version')}",
                "builder": cfg.settings.builder,
                "builders": list(sources_for(cfg)),
                "install_method": cfg.settings.install_method,
                "firmware": cfg.settings.firmware,
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

    cfg = load_config(args, args.target)
    if args.get:
        if args.get not in cfg.values:
            raise InputError(f"{args.get}: not a kiln setting", hint="`kiln config TARGET` lists every key")
        print(_fmt_value(cfg.plain()[args.get]))
    elif args.json:
        print(json.dumps(cfg.to_json(), indent=2))
    else:
        width = max(len(o) for o in cfg.origins.values())
        for key, value in cfg.recorded().items():
            print(f"{cfg.origins[key]:<{width}}  {key}={_fmt_value(value)}")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    import shutil

    from kiln.build import packer, render
    from kiln.build.render import parse_version
    from kiln.core import inputs

    cfg = load_config(args, args.target)
    if args.output is not None and str(args.output) in ("", "."):
        raise InputError("render -o: an empty path or '.' is not an output directory")
    out = args.output or (cfg.work_root / "packer" / ".rendered" / args.target)
    inputs.check_replaceable(out, "render output directory")  # before anything is written
    if args.runtime.dry_run:
        print(f"would render {args.target} into {out} (with throwaway credentials beside it)")
        return EXIT_OK
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
    names = (
        config.targets(args.runtime.root)
        if args.all
        else [config.check_target(args.target, args.runtime.root)]
    )
    problems: list[str] = []
    failed: list[str] = []
    for name in names:
        try:
            cfg = load_config(args, name)
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
        except Interrupted:
            raise
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
        configs.append(load_config(args, args.target, more))
    monitor = progress.for_mode(args.progress)
    key_path = signing_key_path(args)
    failed: list[str] = []
    for cfg in configs:
        try:
            result = build_mod.run_build(
                cfg, only=cfg.settings.builder, monitor=monitor, runtime=args.runtime, force=args.force,
                verify=args.verify, packer_flags=packer_flags(args), signing_key=key_path,
            )  # fmt: skip
        except Interrupted:  # Ctrl-C or SIGTERM stops every build, not just this one
            raise
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


# --- the stage cache: cache ls|prune (stages.py) -------------------------------------------------------


@command
def _register_cache(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cache", help="list or prune the build stage cache (cache_dir/stages)")
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    ls = csub.add_parser("ls", help="cached stages: ID, stage, target, size, last used")
    ls.add_argument("--json", action="store_true", help="print machine-readable JSON")
    config_options(ls)
    ls.set_defaults(func=_cmd_cache_ls)
    prune = csub.add_parser("prune", help="delete least recently used stages (never one a build holds)")
    prune.add_argument("--max-size", metavar="SIZE", help="shrink the cache to this size (20G, 500M, ...)")
    prune.add_argument("--older-than", type=float, metavar="DAYS", help="delete stages unused for DAYS")
    config_options(prune)
    prune.set_defaults(func=_cmd_cache_prune)
    check = csub.add_parser(
        "check",
        help="check every entry's bytes against its record; remove the damaged (exit 1 under --dry-run)",
    )
    check.add_argument("--json", action="store_true", help="print machine-readable JSON")
    config_options(check)
    check.set_defaults(func=_cmd_cache_check)


def _cmd_cache_check(args: argparse.Namespace) -> int:
    """Every entry checked as a build checks one before reusing it; the damaged removed with the stages
    built on their disks. Exit 0 when the cache is whole afterwards, 1 when --dry-run found damage."""
    import json
    from dataclasses import asdict

    from kiln.build import cachecheck

    dry = args.runtime.dry_run
    cache_dir = _cache_dir(args)
    parts = [p for p in (cache_dir / "stages", cache_dir / "bootstrap") if p.exists()]
    if not dry and os.geteuid() != 0 and not all(os.access(p, os.W_OK) for p in parts):
        raise InputError(f"{cache_dir}: not writable by this user, so nothing damaged could be removed",
                         hint="run it as the user the builds run as (root), or with --dry-run")  # fmt: skip
    whole, bad, busy = cachecheck.check_cache(cache_dir, dry_run=dry)
    if args.json:
        found = {"whole": [asdict(f) for f in whole], "damaged": [asdict(f) for f in bad], "in_use": busy}
        print(json.dumps(found, indent=2))
    else:
        for f in bad:
            name = f.id if f.kind == "base" else f.id[:12]
            print(f"{name} ({f.kind}): {f.problem}: {'would be removed' if dry else f.removed}")
        tail = " (nothing removed: --dry-run)" if dry and bad else ""
        skipped = f", {len(busy)} not checked (a build is making them)" if busy else ""
        print(f"cache entries: {len(whole)} whole, {len(bad)} damaged{skipped}{tail}")
    return EXIT_FAILED if dry and bad else EXIT_OK


def _cache_dir(args: argparse.Namespace) -> Path:
    """cache_dir as config/common.json, PACKER_VAR_FILES, --var-file and --var set it (the stage cache is
    shared by every target, so any target's config says where it is)."""
    names = config.targets(args.runtime.root)
    if not names:
        raise InputError(f"{args.runtime.root / 'config'}: no target config, so no cache_dir")
    return load_config(args, names[0]).path("cache_dir")


def _cmd_cache_ls(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from kiln.build import stages
    from kiln.core import inputs

    records = stages.entries(_cache_dir(args))
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
    from kiln.core import inputs, tempdirs

    max_size = stages.parse_size(args.max_size) if args.max_size else None
    removed = stages.prune(
        _cache_dir(args), max_size=max_size, older_than_days=args.older_than, dry_run=args.runtime.dry_run
    )
    stale = stages.collect_stale(_cache_dir(args), dry_run=args.runtime.dry_run)  # after: never a live one
    if stale:
        print(("would have " if args.runtime.dry_run else "") + tempdirs.describe(stale))
    verb = "would remove" if args.runtime.dry_run else "removed"
    for r in removed:
        print(f"{verb} {r.id[:12]} ({r.stage}, {r.target}, {inputs.human(r.size)})")
    print(f"{len(removed)} cache entries {'would be ' if args.runtime.dry_run else ''}removed")
    return EXIT_OK
