"""cli: the kiln command line. With config loading, the only code that reads the environment.

One module per command group (build, verify, publish, boot), each registering its subcommands with
`@command`; `main()` makes the one `Runtime` and maps errors to exit codes.

Imports: every other wing; nothing imports this wing.

Each subcommand is a small function that parses arguments into calls on the lower layers:
CLI -> load and validate config -> render -> run Packer -> post-process -> verify -> publish.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from kiln import __version__, config
from kiln.cli import boot, build, publish, verify  # noqa: F401  (each registers its subcommands)
from kiln.cli.base import REGISTRY
from kiln.core import proc
from kiln.core.errors import EXIT_INTERRUPTED, EXIT_OK, KilnError


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s",
    )
    proc.install_sigterm_handler()
    try:
        args.runtime = config.default_runtime(dry_run=bool(args.dry_run), debug=bool(args.debug))
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
