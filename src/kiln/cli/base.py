"""The CLI's command registry: each command module registers its subcommands with `@command`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiln import config
from kiln.core.errors import InputError

Handler = Callable[[argparse.Namespace], int]

# Each entry adds one or more subcommands to the parser. Library modules stay free of argparse.
REGISTRY: list[Callable[[argparse._SubParsersAction], None]] = []  # type: ignore[type-arg]


def command(func: Callable[[argparse._SubParsersAction], None]) -> Callable[..., None]:  # type: ignore[type-arg]
    REGISTRY.append(func)
    return func


def config_options(p: argparse.ArgumentParser) -> None:
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


def packer_flag_options(p: argparse.ArgumentParser, force: bool = False) -> None:
    """Packer's own build flags, as image-builder users put them in PACKER_FLAGS next to -var."""
    from kiln.build.packer import ON_ERROR

    p.add_argument(
        "-on-error", "--on-error", dest="on_error", choices=ON_ERROR, default="cleanup",
        help="Packer's -on-error: cleanup (default); abort or ask keep a failed build's work for inspection",
    )  # fmt: skip
    p.add_argument(
        "-debug", dest="packer_debug", action="store_true",
        help="Packer's -debug: pause before each step (needs a terminal; not kiln's --debug)",
    )  # fmt: skip
    p.add_argument("-timestamp-ui", dest="timestamp_ui", action="store_true", help="Packer's -timestamp-ui")
    if force:
        p.add_argument(
            "-force", dest="force", action="store_true", help="Packer's -force: the same as --force"
        )


def packer_flags(args: argparse.Namespace) -> Any:
    from kiln.build.packer import PackerFlags

    flags = PackerFlags(
        on_error=getattr(args, "on_error", "cleanup"),
        debug=bool(getattr(args, "packer_debug", False)),
        timestamp_ui=bool(getattr(args, "timestamp_ui", False)),
    )
    flags.check_terminal(args.runtime.dry_run)  # said before anything is built, not when Packer first runs
    return flags


def load_config(args: argparse.Namespace, target: str, extra: dict[str, str] | None = None) -> config.Config:
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
    cfg = config.load(target, var_files=var_files, overrides=overrides, repo_root=args.runtime.root)
    # once per command: a build of three Kubernetes versions loads the same warnings three times
    shown: set[str] = vars(args).setdefault("warnings_shown", set())
    for line in cfg.warnings:
        if line not in shown:
            shown.add(line)
            print(f"kiln: warning: {line}", file=sys.stderr)
    return cfg


def signing_key_path(args: argparse.Namespace) -> Path | None:
    """--signing-key, else KILN_SIGNING_KEY: the provenance signing key's PEM file (loaded, and checked,
    by whoever signs: a bad key is exit 2 before anything runs)."""
    import os

    from_env = os.environ.get("KILN_SIGNING_KEY")
    given = getattr(args, "signing_key", None)
    return Path(given) if given else (Path(from_env) if from_env else None)
