#!/usr/bin/env python3
"""Time rendering and validating every target: kiln's own work (config load + validation, render with fresh
placeholder credentials, python-hcl2 parse) and Packer's (`packer validate`) separately.

    .venv/bin/python bench/render.py [--rounds N] [--no-packer]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kiln import config  # noqa: E402
from kiln.build import packer, render, validate

RUNTIME = config.default_runtime()  # the one runtime, as the CLI makes it


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="repeat the kiln-only part N times (default 1)")
    parser.add_argument("--no-packer", action="store_true", help="skip packer validate")
    args = parser.parse_args()

    targets = config.targets(ROOT)
    version = packer.version(runtime=RUNTIME)
    print(f"{len(targets)} targets, Packer {'.'.join(map(str, version))}, {args.rounds} round(s)")
    print(f"{'target':<22} {'load':>8} {'render':>8} {'parse':>8} {'kiln':>8} {'packer':>8}")
    total_kiln = total_packer = 0.0
    for target in targets:
        loads, renders, parses = [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.rounds):
                t0 = time.perf_counter()
                cfg = config.load(target, repo_root=ROOT)
                t1 = time.perf_counter()
                ctx = render.placeholder_context(cfg, Path(tmp) / f"ctx{i}", runtime=RUNTIME)
                result = render.render(cfg, ctx, Path(tmp) / "rendered", version, runtime=RUNTIME)
                t2 = time.perf_counter()
                validate.parse_rendered(result.template)
                t3 = time.perf_counter()
                loads.append(t1 - t0)
                renders.append(t2 - t1)
                parses.append(t3 - t2)
            load, rend, parse = (statistics.median(x) for x in (loads, renders, parses))
            kiln = load + rend + parse
            packer_s = 0.0
            if not args.no_packer:
                t0 = time.perf_counter()
                packer.validate(Path(tmp) / "rendered", runtime=RUNTIME)
                packer_s = time.perf_counter() - t0
        total_kiln += kiln
        total_packer += packer_s
        print(f"{target:<22} {load:8.3f} {rend:8.3f} {parse:8.3f} {kiln:8.3f} {packer_s:8.3f}")
    print(f"{'total':<22} {'':>8} {'':>8} {'':>8} {total_kiln:8.3f} {total_packer:8.3f}  (seconds)")
    if total_packer:
        print(
            f"kiln's share: {100 * total_kiln / (total_kiln + total_packer):.1f}% "
            f"(packer validate takes {total_packer / total_kiln:.1f}x kiln's own work)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
