"""The settings table: every config key declared once.

Each `Setting` carries the key's type, default, help text, the file it normally lives in, its validation,
the stage whose ID it feeds (`stage`) and whether it is a location (`location`: where bytes come from or go,
or how the build VM runs, never in a stage ID). Config loading, the typed `Settings` value, the stage IDs,
docs/settings.md (`hack/docs-tables.py`) and the rendered templates all read this table; nothing else
declares keys. image-builder's names for them live in `imagebuilder.py`.
"""

from __future__ import annotations

from typing import Any

from kiln.config.keys_common import COMMON
from kiln.config.keys_node import NODE
from kiln.config.keys_target import TARGET
from kiln.config.setting import STAGE_NAMES, Setting

__all__ = ["BY_NAME", "LAYER_ORDER", "SETTINGS", "SHARED_FILES", "STAGE_NAMES", "Setting", "markdown_table"]

SETTINGS: tuple[Setting, ...] = TARGET + COMMON + NODE

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}

# The layer files every target reads, in layering order (the OS file goes between common and kubernetes).
SHARED_FILES = ("common", "kubernetes", "containerd", "cni")
LAYER_ORDER = ("common", "os", "kubernetes", "containerd", "cni")


def markdown_table() -> str:
    """docs/settings.md's table, generated from SETTINGS."""
    rows = ["| key | file | type | default | meaning |", "|-----|------|------|---------|---------|"]
    for s in SETTINGS:
        file = "config/BUILD_NAME.json" if s.file == "os" else f"config/{s.file}.json"
        if s.derived:
            default = "derived"
        elif s.default in ("", [], {}):
            default = "(empty)"
        else:
            default = f"`{_fmt(s.default)}`"
        rows.append(f"| `{s.name}` | {file} | {s.type_name} | {default} | {s.help.replace('|', '/')} |")
    return "\n".join(rows)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
