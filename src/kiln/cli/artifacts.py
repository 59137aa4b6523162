"""`kiln diff` and `kiln provenance verify`: what a build is, compared and checked."""

from __future__ import annotations

import argparse
import json

from kiln.cli.base import command
from kiln.core.errors import EXIT_FAILED, EXIT_OK


@command
def _register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "diff",
        help="compare two builds: packages, root files, config (with origins), artifact digests; "
        "exit 0 equal, 1 different, 2 bad input",
    )
    p.add_argument("a", metavar="A", help="a build directory")
    p.add_argument("b", metavar="B", help="another build directory")
    p.add_argument("--json", action="store_true", help="the whole comparison as JSON")
    p.set_defaults(func=_cmd_diff)


def _cmd_diff(args: argparse.Namespace) -> int:
    from kiln.artifacts import compare

    a, b = compare.open_build(args.a), compare.open_build(args.b)
    result = compare.diff(a, b)
    if args.json:
        print(json.dumps({**result, "equal": compare.equal(result)}, indent=2, sort_keys=True))
    else:
        print(compare.render(result))
    return EXIT_OK if compare.equal(result) else EXIT_FAILED
