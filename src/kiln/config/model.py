"""`Config`: one target's resolved configuration, frozen. `values` maps every key to its value and `origins`
to the layer that set it; `settings` is the same values typed (kiln.config.typed.Settings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kiln.config.typed import Settings
from kiln.core import builddir, paths, redact
from kiln.core.errors import InputError


@dataclass(frozen=True)
class Config:
    """The resolved, validated config of one target: values (typed) and where each came from."""

    target: str
    values: Mapping[str, Any]
    origins: Mapping[str, str]
    repo_root: Path
    settings: Settings  # the typed view of `values` (one field per setting, typed as the table declares)
    var_files: tuple[str, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())  # one line per file that set keys kiln ignores

    def get(self, key: str) -> Any:
        if key not in self.values:
            raise KeyError(f"{key}: not a kiln setting")
        return self.values[key]

    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    @property
    def artifact_name(self) -> str:
        return builddir.artifact_name(self.values["build_name"], self.values["kubernetes_semver"])

    def plain(self) -> dict[str, Any]:
        """The values as plain JSON types (lists and dicts), for templates and Ansible extra vars."""
        return {k: _plain(v) for k, v in self.values.items()}

    def recorded(self) -> dict[str, Any]:
        """plain() with the credentials in URLs (`http://user:password@proxy:3128`, `https://TOKEN@host`)
        shown as `***@`: what kiln writes down (config.json, the build log, the provenance) or lists."""
        return {k: redact.credentials(v) for k, v in self.plain().items()}

    def to_json(self) -> dict[str, dict[str, Any]]:
        """`{"key": {"value": V, "origin": "file"}}`, as stored in build dirs as config.json (recorded())."""
        return {k: {"value": v, "origin": self.origins[k]} for k, v in self.recorded().items()}

    @property
    def work_root(self) -> Path:
        """Where relative locations and the user's relative paths point: the checkout, or for an installed
        wheel the current directory (kiln.core.paths.work_root)."""
        return paths.work_root(self.repo_root, Path.cwd())

    def check_root(self, root: Path) -> None:
        """The data root this config was loaded from is the run's (`runtime.root`): the one root, checked
        wherever both meet (rendering, building), so that the two can never disagree."""
        if self.repo_root.resolve() != Path(root).resolve():
            raise InputError(
                f"{self.target}: config was loaded from {self.repo_root}, but this run's data root is {root}",
                hint="load the config with repo_root=runtime.root",
            )

    def path(self, key: str) -> Path:
        """A location setting (output_dir, cache_dir) resolved against the checkout, or for an installed
        wheel against the current directory."""
        return (self.work_root / str(self.values[key])).resolve()


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(value)
    if isinstance(value, Mapping):
        return MappingProxyType(dict(value))
    return value
