"""cli: the kiln command line. With config loading, the only code that reads the environment.

One module per command group (build, verify, publish, boot), each registering its subcommands with
`@command`; `main()` makes the one `Runtime` and maps errors to exit codes.

Imports: every other wing; nothing imports this wing.

Each subcommand is a small function that parses arguments into calls on the lower layers:
CLI -> load and validate config -> render -> run Packer -> post-process -> verify -> publish.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import traceback
from typing import IO, Any

from kiln import __version__, config
from kiln.cli import artifacts, boot, build, completion, publish, verify  # noqa: F401  (each registers its subcommands)
from kiln.cli.base import REGISTRY
from kiln.core import proc, redact
from kiln.core.errors import EXIT_INTERRUPTED, EXIT_OK, KilnError


def _add_global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """The global flags, on the top parser and on every subcommand's, so that they work anywhere on the
    line (`kiln build debian-12 --dry-run`). Below the top they default to SUPPRESS: a subparser never
    resets what was given before the subcommand. A subcommand that has its own flag of that name keeps it."""
    taken = {s for a in parser._actions for s in a.option_strings}
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    if "--debug" not in taken:
        parser.add_argument(
            "--debug", action="store_true", help="debug logging and tracebacks on error", **default
        )
    if "--dry-run" not in taken:
        parser.add_argument(
            "--dry-run", action="store_true", help="print what would run or be written; do nothing", **default
        )
    if "--progress" in taken:
        return
    parser.add_argument(
        "--progress",
        choices=("auto", "plain", "json"),
        help="plain lines (auto), or JSON lines on stdout for CI systems (json: nothing else on stdout)",
        **(default or {"default": "auto"}),
    )


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found += [child, *_subparsers(child)]
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description="Bake Kubernetes node VM images.")
    parser.add_argument("--version", action=_Version, nargs=0, help="show kiln's version and commit and exit")
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in REGISTRY:
        register(sub)
    for child in _subparsers(parser):
        _add_global_options(child, top=False)
    return parser


class _Version(argparse.Action):
    """--version, computed only when asked for (it runs git)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(f"kiln {version_text()}")
        parser.exit()


def version_text() -> str:
    """kiln's version and the commit it was built from: the checkout's HEAD (with "+dirty" for local
    changes), else the commit the wheel recorded at build time, else "unknown commit"."""
    from kiln.core import paths

    return f"{__version__} (commit {paths.commit() or 'unknown'})"


class _JsonStdout:
    """`--progress json`: stdout carries JSON lines only. A JSON document a command prints (`--json`, even
    indented over many lines) goes out as one line; a line that is already one JSON object (the progress
    sink's events) passes unchanged; any other line (`would run: ...`, a table, a line that starts with `[`
    or `{` but is no JSON) becomes {"event": "output", "line": ...}."""

    def __init__(self, real: IO[str]) -> None:
        self.real = real
        self.pending = ""
        self.document: list[str] = []  # lines of a JSON document being printed

    def write(self, text: str) -> int:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        queue = collections.deque([line])
        while queue:
            line = queue.popleft()
            if not self.document and line.strip()[:1] not in ("{", "["):
                self._plain(line)
                continue
            self.document.append(line)
            text = "\n".join(self.document)
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                # a document not whole yet fails at its end; one that fails before it is no JSON at all
                if err.pos >= len(text.rstrip()) and len(self.document) < 100_000:
                    continue
                queue.extendleft(reversed(self._not_a_document()))
                continue
            self.document = []
            self.real.write(json.dumps(data, separators=(",", ":")) + "\n")

    def _not_a_document(self) -> list[str]:
        """The held lines were no document: the first (a shell line `[ -e "$f" ]` in a `would run:`) goes out
        as output; the lines after it are read again (a progress event among them stays an event)."""
        held, self.document = self.document, []
        self._plain(held[0])
        return held[1:]

    def _plain(self, line: str) -> None:
        self.real.write(json.dumps({"event": "output", "line": line}) + "\n")

    def flush(self) -> None:
        if self.pending:
            line, self.pending = self.pending, ""
            self._line(line)
        self.real.flush()

    def close_out(self) -> None:
        """At exit: what never became a whole document goes out as output lines."""
        self.flush()
        while self.document:
            for line in self._not_a_document():
                self._line(line)
        self.real.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.real.fileno()

    @property
    def encoding(self) -> str:
        return str(getattr(self.real, "encoding", "utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # the top parser gives every global option its default
    if args.progress == "json" and not isinstance(sys.stdout, _JsonStdout):
        sys.stdout = _JsonStdout(sys.stdout)  # type: ignore[assignment]
        try:
            return _main(args)
        finally:
            sys.stdout.close_out()  # type: ignore[attr-defined]
            sys.stdout = sys.stdout.real  # type: ignore[attr-defined]
    return _main(args)


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s",
    )
    proc.install_sigterm_handler()
    # One umask whatever the caller's: the chroot runner's Ansible, dpkg's scripts, mmdebstrap and kiln
    # itself create files in the image's tree, and a hardened shell's 027 or 077 made them 0640 or 0600 (an
    # image that differs by the shell it was built from, and apt keyrings its _apt user cannot read). Files
    # that must stay private (keys, seeds) are created with their own modes.
    os.umask(0o022)
    try:
        args.runtime = config.default_runtime(dry_run=bool(args.dry_run), debug=bool(args.debug))
        return int(args.func(args) or EXIT_OK)
    except KilnError as err:
        if args.debug:
            traceback.print_exc()
        print(f"kiln: error: {redact.line(err.message)}", file=sys.stderr)
        if err.hint:
            print(f"kiln: hint: {redact.line(err.hint)}", file=sys.stderr)
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
