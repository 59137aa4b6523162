"""The settings table: every config key declared once.

Each `Setting` carries the key's type, default, help text, the file it normally lives in, its validation,
the stage whose ID it feeds (`stage`) and whether it is a location (`location`: where bytes come from or go,
or how the build VM runs, never in a stage ID). Config loading, the typed `Settings` value, the stage IDs,
docs/settings.md (`hack/generate.py`) and the rendered templates all read this table; nothing else
declares keys. image-builder's names for them live in `imagebuilder.py`.
"""

from __future__ import annotations

from typing import Any

from kiln.config.keys_common import COMMON
from kiln.config.keys_node import NODE
from kiln.config.keys_target import TARGET
from kiln.config.setting import STAGE_NAMES, Setting

__all__ = [
    "BY_NAME", "LAYER_ORDER", "SETTINGS", "SHARED_FILES", "STAGE_NAMES", "Setting", "markdown_table",
    "typed_source",
]  # fmt: skip

SETTINGS: tuple[Setting, ...] = TARGET + COMMON + NODE

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}

# The layer files every target reads, in layering order (the OS file goes between common and kubernetes).
SHARED_FILES = ("common", "kubernetes", "containerd", "cni")
LAYER_ORDER = ("common", "os", "kubernetes", "containerd", "cni")


def markdown_table() -> str:
    """docs/settings.md's table, generated from SETTINGS."""
    rows = [
        "| key | file | stage | type | default | meaning |",
        "|-----|------|-------|------|---------|---------|",
    ]
    for s in SETTINGS:
        file = "config/BUILD_NAME.json" if s.file == "os" else f"config/{s.file}.json"
        if s.derived:
            default = "derived"
        elif s.default in ("", [], {}):
            default = "(empty)"
        else:
            default = f"`{_fmt(s.default)}`"
        stage = ", ".join(s.stages) + (" (location)" if s.location else "")
        rows.append(
            f"| `{s.name}` | {file} | {stage} | {s.type_name} | {default} | {s.help.replace('|', '/')} |"
        )
    return "\n".join(rows)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_PY_TYPES = {str: "str", int: "int", bool: "bool", list: "tuple[str, ...]", dict: "Mapping[str, str]"}


def typed_source() -> str:
    """The source of kiln/config/typed.py: a frozen dataclass with one typed field per setting, in table
    order. hack/generate.py writes it; a test checks that it is current."""
    fields = "\n".join(f"    {s.name}: {_PY_TYPES[s.type]}" for s in SETTINGS)
    return f'''"""GENERATED from the settings table (kiln/config/keys_*.py) by hack/generate.py: do not edit.

`Settings` is the typed, frozen view of a resolved config: one field per setting, with the type the table
declares (lists are tuples, maps read-only). `Config.settings` carries it; build directories give one with
`Settings.from_values(build.values())`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from kiln.config.settings import SETTINGS


@dataclass(frozen=True)
class Settings:
{fields}

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Settings:
        """From resolved values (a Config's, or a build dir's config.json or manifest). A key that an older
        build dir lacks takes the table's default; numbers and booleans recorded as strings are read back; a
        value of the wrong type is a TypeError."""
        out: dict[str, Any] = {{}}
        for s in SETTINGS:
            value: Any = values.get(s.name)
            value = s.default if value is None else value
            if isinstance(value, str) and s.type is int and value.strip().lstrip("-").isdigit():
                value = int(value)  # custom_data records every value as a string
            elif isinstance(value, str) and s.type is bool and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            if s.type is list:
                items = value.split() if isinstance(value, str) else value
                value = tuple(str(v) for v in (items or ()))
            elif s.type is dict:
                if not isinstance(value, Mapping):
                    raise TypeError(f"{{s.name}}: {{value!r}} is not a map")
                value = MappingProxyType({{str(k): str(v) for k, v in value.items()}})
            elif not isinstance(value, s.type) or (s.type is int and isinstance(value, bool)):
                raise TypeError(f"{{s.name}}: {{value!r}} is not a {{s.type_name}}")
            out[s.name] = value
        return cls(**out)

    def mapping(self) -> dict[str, Any]:
        \"\"\"name -> value, for what takes plain mappings (custom_data, templates).\"\"\"
        return {{s.name: getattr(self, s.name) for s in SETTINGS}}
'''
