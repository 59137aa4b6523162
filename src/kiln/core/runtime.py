"""What varies per run and is not configuration: dry-run, debug, the data root and the child environment.

One frozen `Runtime` is made by the CLI (from the environment it was started with, via
`config.default_runtime()`) and passed down, as a required argument, to everything that runs a program,
writes output or finds kiln's data. Nothing below the CLI and config loading reads the process environment
or makes a Runtime of its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType


@dataclass(frozen=True)
class Runtime:
    root: (
        Path  # kiln's data root: config/, packer/, goss/, ansible/, cloudinit/, bootstrap/ (kiln.core.paths)
    )
    dry_run: bool = False  # print what would run or be written; run nothing, write nothing, upload nothing
    debug: bool = False  # debug logging, tracebacks, Packer's own log
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # the child environment
    # names of the caller's environment variables left out of `env` (config.default_runtime says which)
    withheld: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        """The tool PATH children get (kiln's virtualenv first)."""
        return self.env.get("PATH", "")

    @property
    def roles_path(self) -> tuple[Path, ...]:
        """Where Ansible finds a role by name besides kiln's ansible/roles: ANSIBLE_ROLES_PATH, which passes
        on to Ansible (config.environ made its entries absolute), in Ansible's order."""
        return tuple(Path(p) for p in self.env.get("ANSIBLE_ROLES_PATH", "").split(os.pathsep) if p)

    def live(self) -> Runtime:
        """The same runtime with dry-run off: for read-only queries (packer version) that must run."""
        return replace(self, dry_run=False)

    def child_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        out = dict(self.env)
        out.update(extra or {})
        return out
