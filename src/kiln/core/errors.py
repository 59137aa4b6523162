"""The error hierarchy. One handler in cli.main() maps these to exit codes.

Exit codes (documented in the README):
  0   success
  1   a build, verification, upload or external command failed
  2   bad input: config, arguments, missing files, credentials
  130 interrupted (Ctrl-C / SIGTERM)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class KilnError(Exception):
    """Base error. `message` starts with the file or object it is about; `hint` says what to do."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InputError(KilnError):
    """Bad input: malformed or contradictory config, wrong arguments, missing files, bad keys."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(InputError):
    """One or more config problems, each naming its file and key. All are reported at once."""

    def __init__(self, problems: list[str], hint: str | None = None) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} config error(s):\n{lines}", hint)


class ToolMissingError(InputError):
    """An external program is not installed; the message names the package that provides it."""


class CommandError(KilnError):
    """An external program failed. Carries argv, exit code and the tail of its output."""

    def __init__(self, argv: list[str], returncode: int, output_tail: str, hint: str | None = None) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output_tail = output_tail
        tail = ("\n" + output_tail.rstrip()) if output_tail.strip() else ""
        super().__init__(f"{argv[0]}: exited with code {returncode}: {' '.join(argv)}{tail}", hint)


class BuildError(KilnError):
    """A build stage failed."""


class DiskFullError(BuildError):
    """A filesystem kiln writes to ran out of space (or would: the pre-flight check); names the path, the
    free space and the space needed."""


class VerifyError(KilnError):
    """An image failed verification (goss)."""


class UploadError(KilnError):
    """An upload or download failed after retries, or the server refused it."""


class Interrupted(KilnError):
    """The user or the system asked us to stop."""

    exit_code = EXIT_INTERRUPTED
