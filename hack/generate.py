#!/usr/bin/env python3
"""Regenerate what is generated from the settings table (run after changing a setting; `make generate`):
- docs/settings.md's table (every key) and docs/image-builder.md's (image-builder's keys and what kiln does);
- src/kiln/config/typed.py (the typed, frozen `Settings` dataclass).
Tests check that all three are current."""

import re
import sys
from pathlib import Path

from kiln.config.imagebuilder import image_builder_table
from kiln.config.settings import markdown_table, typed_source

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
ROWS = r"\n(?:\|.*\|\n)+"
SETTINGS_HEAD = r"\| key \| file \| (?:stage \| )?type \| default \| meaning \|"
IB_HEAD = r"\| image-builder key \| in kiln \|"
TABLES = (
    (DOCS / "settings.md", re.compile(SETTINGS_HEAD + ROWS), markdown_table),
    (DOCS / "image-builder.md", re.compile(IB_HEAD + ROWS), image_builder_table),
)

for path, pattern, table in TABLES:
    text = path.read_text()
    if not pattern.search(text):
        sys.exit(f"{path}: no generated table found")
    path.write_text(pattern.sub(lambda _m, t=table: t() + "\n", text, count=1))
    print(f"{path}: table regenerated")
typed = REPO / "src" / "kiln" / "config" / "typed.py"
typed.write_text(typed_source())
print(f"{typed}: regenerated")
