"""`kiln diff` and `kiln provenance verify`: what a build is, compared and checked."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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

    p = sub.add_parser("provenance", help="check a build's signed provenance")
    psub = p.add_subparsers(dest="provenance_cmd", required=True)
    v = psub.add_parser(
        "verify",
        help="check NAME.intoto.jsonl's signature and every subject's sha256; exit 1 names the failed "
        "check, 2 a malformed input",
    )
    v.add_argument("build_dir", metavar="BUILD_DIR", help="a build directory")
    v.add_argument("--key", required=True, type=Path, metavar="PUB", help="the signer's public key (PEM)")
    v.set_defaults(func=_cmd_provenance_verify)


def _cmd_diff(args: argparse.Namespace) -> int:
    from kiln.artifacts import compare

    a, b = compare.open_build(args.a), compare.open_build(args.b)
    result = compare.diff(a, b)
    if args.json:
        print(json.dumps({**result, "equal": compare.equal(result)}, indent=2, sort_keys=True))
    else:
        print(compare.render(result))
    return EXIT_OK if compare.equal(result) else EXIT_FAILED


def _cmd_provenance_verify(args: argparse.Namespace) -> int:
    from kiln.artifacts import provenance
    from kiln.core.errors import InputError

    if "://" in args.build_dir:
        raise InputError(
            f"{args.build_dir}: kiln provenance verify checks a build directory",
            hint="download the published directory (image, sidecars, NAME.intoto.jsonl) first",
        )
    for line in provenance.verify(Path(args.build_dir), args.key):
        print(line)
    print("provenance: ok")
    return EXIT_OK
