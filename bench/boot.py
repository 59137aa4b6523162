#!/usr/bin/env python3
"""Time `kiln verify` boots under TCG with QEMU's `-cpu max` (the baseline) and with kiln's TCG CPU model
(kiln.vm.accel.TCG_CPU: max without ERMS and FSRM), one after the other, for each format asked for.

    .venv/bin/python bench/boot.py BUILD_DIR [--formats disk iso netboot] [--rounds N] [--json FILE]

BUILD_DIR is a finished build with the formats asked for (the suite's image has them all). The boots run
on a copy of it made of hard links, so its own goss/ reports stay as they are. For each boot it prints the
wall time of the verify, the guest's own boot profile (systemd-analyze: kernel + userspace) and, per
format, kiln's model as a ratio to the baseline measured in the same run. Rounds alternate the two models
so that a machine getting slower or faster during the run does not favour one of them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kiln import config  # noqa: E402
from kiln.core.builddir import BuildDir  # noqa: E402
from kiln.goss.verify import verify_build_dir  # noqa: E402
from kiln.vm import accel  # noqa: E402

RUNTIME = config.default_runtime()  # the one runtime, as the CLI makes it
BASELINE = "max"
PROFILE = re.compile(r"([\d.]+)s \(kernel\).*?\+ (?:(\d+)min )?([\d.]+)s \(userspace\)")


def copy_build(build: Path, dest: Path) -> Path:
    """BUILD_DIR as hard links (the same file system) or copies, its goss/ reports as copies of their own."""
    copy = dest / build.name

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(build, copy, copy_function=link, ignore=shutil.ignore_patterns("goss", ".boot"))
    if (build / "goss").is_dir():
        shutil.copytree(build / "goss", copy / "goss")
    return copy


def boot_profile(report_dir: Path) -> tuple[float, float] | None:
    """(kernel, userspace) seconds from the guest's systemd-analyze, as verify saved it."""
    path = report_dir / "boot-profile.txt"
    found = PROFILE.search(path.read_text()) if path.is_file() else None
    if found is None:
        return None
    return float(found[1]), 60 * float(found[2] or 0) + float(found[3])


def one_boot(build: Path, fmt: str, model: str) -> dict[str, object]:
    accel.TCG_CPU = model  # what kiln.vm.accel.cpu_model gives a TCG guest, for this boot
    firmware = BuildDir.open(build).firmware
    started = time.monotonic()
    results = verify_build_dir(build, accelerator="tcg", runtime=RUNTIME, fmt=fmt)
    took = time.monotonic() - started
    reports = build / "goss" if fmt == "disk" else build / "goss" / f"{fmt}-{firmware}"
    kernel, userspace = boot_profile(reports) or (None, None)
    return {"format": fmt, "cpu": model, "seconds": round(took, 1), "checks": len(results),
            "kernel": kernel, "userspace": userspace}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", type=Path, help="a finished build (packer/output/NAME)")
    parser.add_argument("--formats", nargs="+", default=["disk", "iso", "netboot"],
                        choices=["disk", "iso", "netboot"])  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="boots per format and model (default 1)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    kiln_model = accel.TCG_CPU
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-boot-", dir=args.build_dir.resolve().parent) as tmp:
        build = copy_build(args.build_dir.resolve(), Path(tmp))
        for fmt in args.formats:
            for i in range(args.rounds):
                order = [BASELINE, kiln_model] if i % 2 == 0 else [kiln_model, BASELINE]
                for model in order:
                    row = one_boot(build, fmt, model)
                    rows.append(row)
                    print(f"{fmt:<8} -cpu {model:<18} {row['seconds']:>6}s  kernel {row['kernel']}s  "
                          f"userspace {row['userspace']}s", flush=True)  # fmt: skip
    print(f"\n{'format':<8} {'max':>8} {'kiln':>8} {'kiln/max':>9}   (kiln: -cpu {kiln_model})")
    summary = {}
    for fmt in args.formats:
        base = [float(str(r["seconds"])) for r in rows if r["format"] == fmt and r["cpu"] == BASELINE]
        ours = [float(str(r["seconds"])) for r in rows if r["format"] == fmt and r["cpu"] == kiln_model]
        b, k = sum(base) / len(base), sum(ours) / len(ours)
        summary[fmt] = {"max": round(b, 1), "kiln": round(k, 1), "ratio": round(k / b, 3)}
        print(f"{fmt:<8} {b:>7.1f}s {k:>7.1f}s {k / b:>9.3f}")
    if args.json:
        args.json.write_text(json.dumps({"boots": rows, "summary": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
