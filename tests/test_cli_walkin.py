"""The command line as a new user meets it: global flags anywhere, JSON-only stdout, --version, shell
completion, Packer's own flags in PACKER_FLAGS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiln import cli

REPO = Path(__file__).resolve().parents[1]


def kiln(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args], capture_output=True, text=True, cwd=REPO,
        env={**os.environ, **(env or {})}, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [
        ["build", "debian-12", "--dry-run"],
        ["--dry-run", "build", "debian-12"],
        ["build", "--dry-run", "debian-12"],
    ],
)
def test_global_flags_work_anywhere_on_the_line(argv: list[str]) -> None:
    args = cli.build_parser().parse_args(argv)
    assert args.dry_run is True and args.target == "debian-12"


def test_a_global_flag_after_a_nested_subcommand() -> None:
    args = cli.build_parser().parse_args(["cache", "ls", "--progress=json", "--debug"])
    assert args.progress == "json" and args.debug is True
    # before the subcommand, a subparser does not reset it
    args = cli.build_parser().parse_args(["--progress", "json", "cache", "ls"])
    assert args.progress == "json"


def test_progress_json_puts_only_json_on_stdout() -> None:
    run = kiln("validate", "--all", "--progress=json", "--dry-run")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any(e.get("line", "").startswith("would run: ") for e in events)


def test_progress_json_passes_a_line_that_only_looks_like_json_as_output() -> None:
    """A shell line `[ -e "$f" ] || continue` in a `would run:` started a JSON document that never ended, and
    every event after it was held back until exit, as output."""
    import io

    from kiln.cli import _JsonStdout

    real = io.StringIO()
    out = _JsonStdout(real)
    out.write('would run: sh -c \'\n  [ -e "$f" ] || continue\n\'\n{"event": "begin", "stage": "os"}\n')
    out.write('{\n  "indented": [1,\n  2]\n}\n[\n')
    assert [json.loads(line) for line in real.getvalue().splitlines()] == [
        {"event": "output", "line": "would run: sh -c '"},
        {"event": "output", "line": '  [ -e "$f" ] || continue'},
        {"event": "output", "line": "'"},
        {"event": "begin", "stage": "os"},
        {"indented": [1, 2]},
    ], "a document not whole yet ([) is held"
    # a lone `[` line, then events: held while it could still be a document, then the events stay events
    out.write('{"event": "end", "stage": "os"}\n{"event": "begin", "stage": "kubernetes"}\n')
    out.close_out()
    assert [json.loads(line) for line in real.getvalue().splitlines()][5:] == [
        {"event": "output", "line": "["},
        {"event": "end", "stage": "os"},
        {"event": "begin", "stage": "kubernetes"},
    ]


def test_version_names_the_commit() -> None:
    run = kiln("--version")
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert run.returncode == 0
    assert f"(commit {head}" in run.stdout


def _complete(script: str, *words: str) -> list[str]:
    probe = (
        f"{script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        '_kiln_complete; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    run = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


def test_bash_completion_completes_commands_targets_options_and_choices() -> None:
    script = kiln("completion", "bash").stdout
    assert "complete -o filenames -F _kiln_complete kiln" in script
    assert _complete(script, "kiln", "bu") == ["build"]
    assert _complete(script, "kiln", "build", "debian-") == ["debian-12", "debian-12-cloudimg", "debian-13"]
    assert "--dry-run" in _complete(script, "kiln", "build", "debian-12", "--dr")
    assert _complete(script, "kiln", "cache", "pr") == ["prune"]
    assert _complete(script, "kiln", "build", "x", "--progress", "j") == ["json"]
    assert _complete(script, "kiln", "completion", "z") == ["zsh"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_loads() -> None:
    script = kiln("completion", "zsh").stdout
    probe = script + (
        "\n(( $+_comps[kiln] )) && echo loaded\n"
        'COMP_WORDS=(kiln build debian-); COMP_CWORD=2; _kiln_complete; echo "${COMPREPLY[@]}"\n'
    )
    run = subprocess.run(
        ["zsh", "-fc", probe], capture_output=True, text=True, timeout=30, env={"HOME": "/tmp"}
    )
    words = run.stdout.split()
    # zsh's compgen emulation leaves the prefix filtering to compadd: the words are the targets
    assert words[0] == "loaded" and "debian-12" in words and "build" not in words, run.stderr


def test_packer_flags_reach_packer() -> None:
    run = kiln(
        "build",
        "debian-12",
        "--dry-run",
        "-on-error=abort",
        "-timestamp-ui",
        "-force",
        "-var",
        "provisioner=vm",
    )
    assert run.returncode == 0, run.stderr
    builds = [line for line in run.stdout.splitlines() if "packer build" in line]
    assert builds and all("-on-error=abort -timestamp-ui" in line for line in builds)


def test_make_passes_packer_flags_to_kiln() -> None:
    run = subprocess.run(
        ["make", "-n", "build-qemu-debian-12", "PACKER_FLAGS=-on-error=ask -force -var memory=4096"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert "-on-error=ask -force -var memory=4096" in run.stdout
    args = cli.build_parser().parse_args(
        ["build", "debian-12", "-on-error=ask", "-force", "-var", "memory=4096"]
    )
    assert (args.on_error, args.force, args.vars) == ("ask", True, ["memory=4096"])


def test_on_error_ask_without_a_terminal_is_a_clear_error() -> None:
    from kiln.build import packer
    from kiln.core.errors import InputError
    from kiln_runtime import RUNTIME

    with pytest.raises(InputError, match="-on-error=ask and -debug ask questions at a terminal"):
        packer.build(REPO, REPO / "nothing.log", flags=packer.PackerFlags(on_error="ask"), runtime=RUNTIME)
