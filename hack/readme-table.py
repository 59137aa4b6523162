#!/usr/bin/env python3
"""Regenerate the README's configuration table from kiln.settings (run after changing a setting)."""

import re
import sys
from pathlib import Path

from kiln.config.settings import image_builder_table, markdown_table

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
pattern = re.compile(r"\| key \| file \| type \| default \| meaning \|\n(?:\|.*\|\n)+")
if not pattern.search(text):
    sys.exit(f"{readme}: no configuration table found")
text = pattern.sub(lambda _m: markdown_table() + "\n", text, count=1)
ib = re.compile(r"\| image-builder key \| in kiln \|\n(?:\|.*\|\n)+")
if not ib.search(text):
    sys.exit(f"{readme}: no image-builder table found")
readme.write_text(ib.sub(lambda _m: image_builder_table() + "\n", text, count=1))
print(f"{readme}: configuration table regenerated")
