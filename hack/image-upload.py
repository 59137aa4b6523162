#!/usr/bin/env python3
"""image-builder's entry point, kept for release jobs: hack/image-upload.py --key-file KEY_FILE BUILD_DIR.

A thin wrapper around `kiln upload BUILD_DIR` (checksum-aware, create-only releases). KEY_FILE may come from
the environment instead of the flag; every other `kiln upload` flag (--bucket, --all, --dry-run, ...)
passes through.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from kiln.cli import main
except ImportError:  # run from a checkout without the virtualenv active
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from kiln.cli import main

if __name__ == "__main__":
    sys.exit(main(["upload", *sys.argv[1:]]))
