#!/usr/bin/env python3
"""Regenerate the README's configuration table from kiln.settings (run after changing a setting)."""

import re
import sys
from pathlib import Path

from kiln.settings import markdown_table

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
pattern = re.compile(r"\| key \| file \| type \| default \| meaning \|\n(?:\|.*\|\n)+")
if not pattern.search(text):
    sys.exit(f"{readme}: no configuration table found")
readme.write_text(pattern.sub(lambda _m: markdown_table() + "\n", text, count=1))
print(f"{readme}: configuration table regenerated")
