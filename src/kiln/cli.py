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

from . import __version__, proc
from .errors import EXIT_INTERRUPTED, EXIT_OK, KilnError

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
