#!/usr/bin/env python3
"""Regenerate the manual's generated tables from the settings table (run after changing a setting):
docs/settings.md (every key) and docs/image-builder.md (image-builder's keys and what kiln does with them).
`make docs-tables` runs it; tests/test_config.py checks that both are current."""

import re
import sys
from pathlib import Path

from kiln.config.imagebuilder import image_builder_table
from kiln.config.settings import markdown_table

DOCS = Path(__file__).resolve().parents[1] / "docs"
TABLES = (
    (
        DOCS / "settings.md",
        re.compile(r"\| key \| file \| type \| default \| meaning \|\n(?:\|.*\|\n)+"),
        markdown_table,
    ),
    (
        DOCS / "image-builder.md",
        re.compile(r"\| image-builder key \| in kiln \|\n(?:\|.*\|\n)+"),
        image_builder_table,
    ),
)

for path, pattern, table in TABLES:
    text = path.read_text()
    if not pattern.search(text):
        sys.exit(f"{path}: no generated table found")
    path.write_text(pattern.sub(lambda _m, t=table: t() + "\n", text, count=1))
    print(f"{path}: table regenerated")
