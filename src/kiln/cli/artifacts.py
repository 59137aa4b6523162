"""`kiln diff` and `kiln provenance verify`: what a build is, compared and checked."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from kiln.cli.base import command
from kiln.core.errors import EXIT_FAILED, EXIT_OK


@command
def _register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "diff",
        help="compare two builds: packages, root files, config (with origins), artifact digests; "
        "exit 0 equal, 1 different, 2 bad input",
    )
    p.add_argument("a", metavar="A", help="a build directory, or a published image (see B)")
    p.add_argument(
        "b", metavar="B",
        help="another build directory, or a published image: the URL of any of its files, gs://BUCKET/PATH, "
        "CHANNEL/VERSION/FILE or NAME+kube-VERSION.ova (read through --base-url)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="the whole comparison as JSON")
    _published_options(p)
    p.set_defaults(func=_cmd_diff)

    p = sub.add_parser("provenance", help="check a build's signed provenance")
    psub = p.add_subparsers(dest="provenance_cmd", required=True)
    v = psub.add_parser(
        "verify",
        help="check NAME.intoto.jsonl's signature and every subject's sha256; exit 1 names the failed "
        "check, 2 a malformed input",
    )
    v.add_argument(
        "build_dir", metavar="BUILD_DIR|URL",
        help="a build directory, or a published image (the URL of any of its files, gs://BUCKET/PATH, "
        "CHANNEL/VERSION/FILE or NAME+kube-VERSION.ova): its published files are hashed as they stream",
    )  # fmt: skip
    v.add_argument("--key", required=True, type=Path, metavar="PUB", help="the signer's public key (PEM)")
    _published_options(v)
    v.set_defaults(func=_cmd_provenance_verify)


def _published_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base-url",
        default=os.environ.get("KILN_DOWNLOAD_BASE_URL") or "https://storage.googleapis.com",
        help="where published images are read "
        "(default: $KILN_DOWNLOAD_BASE_URL, else storage.googleapis.com)",
    )
    p.add_argument("--bucket", help="the bucket for CHANNEL/VERSION/FILE and NAME forms "
                   "(default: $KILN_GCS_BUCKET, else capv-images)")  # fmt: skip


def _side(text: str, args: argparse.Namespace) -> Any:
    """A build directory, or a published image: a URL, gs://BUCKET/PATH, CHANNEL/VERSION/FILE or
    NAME+kube-VERSION.ova (kiln.publish.images.resolve_url) naming any of its files."""
    from kiln.artifacts import compare, layout
    from kiln.core.builddir import BuildDir
    from kiln.publish import images

    if not layout.names_published(text):
        return compare.local(BuildDir.open(Path(text)))
    return compare.published(images.resolve_url(text, args.base_url, _bucket(args)))


def _bucket(args: argparse.Namespace) -> str:
    from kiln.cli.publish import _bucket as bucket

    return bucket(args)


def _cmd_diff(args: argparse.Namespace) -> int:
    from kiln.artifacts import compare

    a, b = (_side(x, args) for x in (args.a, args.b))
    result = compare.diff(a, b)
    if args.json:
        print(json.dumps({**result, "equal": compare.equal(result)}, indent=2, sort_keys=True))
    else:
        print(compare.render(result))
    return EXIT_OK if compare.equal(result) else EXIT_FAILED


def _cmd_provenance_verify(args: argparse.Namespace) -> int:
    from kiln.artifacts import layout, provenance
    from kiln.publish import images

    where = args.build_dir
    if not layout.names_published(where):
        lines = provenance.verify(Path(where), args.key)
    else:
        url = images.resolve_url(where, args.base_url, _bucket(args))
        lines = provenance.verify_published(url, args.key, say=lambda t: print(t, file=sys.stderr))
    for line in lines:
        print(line)
    print("provenance: ok")
    return EXIT_OK
