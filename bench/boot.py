#!/usr/bin/env python3
"""Time `kiln verify` boots under TCG with QEMU's `-cpu max` (the baseline) and with kiln's TCG CPU model
(kiln.vm.accel.TCG_CPU: max without ERMS and FSRM), one after the other, for each format asked for.

    .venv/bin/python bench/boot.py BUILD_DIR [--formats disk iso netboot] [--rounds N] [--json FILE]

BUILD_DIR is a finished build with the formats asked for (the suite's image has them all). The boots run
on a copy of it made of hard links (in a temp dir beside it, which the next build into that output dir
removes if the bench is killed), so its own goss/ reports stay as they are. For each boot it prints the
wall time of the verify and the guest's own boot profile (systemd-analyze: kernel + userspace); then, per
format, the means and kiln's model as a ratio to the baseline measured in the same run. Rounds alternate
which model boots first (the default, 2, gives each the first boot once: the first reads the build's files
into the host's page cache). A boot that fails is reported and left out of the means.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kiln import config  # noqa: E402
from kiln.core import tempdirs  # noqa: E402
from kiln.core.builddir import BuildDir  # noqa: E402
from kiln.core.errors import KilnError  # noqa: E402
from kiln.goss.bootprofile import BOOT_PROFILE  # noqa: E402
from kiln.goss.verify import report_dir, verify_build  # noqa: E402
from kiln.vm import accel  # noqa: E402

RUNTIME = config.default_runtime()  # the one runtime, as the CLI makes it
BASELINE = "max"
# systemd-analyze's "Startup finished in 8.5s (kernel) + 1min 2.3s (userspace) = ...": a span is one or more
# of NUMBER+UNIT ("1h 2min", "2min", "850ms")
UNITS = {"h": 3600.0, "min": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
SPAN = r"((?:[\d.]+(?:h|min|ms|us|s) ?)+)"
PROFILE = re.compile(SPAN + r"\(kernel\).*?\+ " + SPAN + r"\(userspace\)")


def seconds(span: str) -> float:
    """One of systemd-analyze's spans ("1h 2min 3.4s", "8.5s", "850ms") in seconds."""
    return sum(float(n) * UNITS[unit] for n, unit in re.findall(r"([\d.]+)(h|min|ms|us|s)\b", span))


def copy_build(build: Path, dest: Path) -> Path:
    """BUILD_DIR as hard links (the same file system) or copies, its goss/ reports as copies of their own."""
    copy = dest / build.name

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(build, copy, copy_function=link, ignore=shutil.ignore_patterns("goss", ".boot"))
    # the build's own goss/ (its tree-phase record) as copies; not its boot profile, which each boot writes
    if (build / "goss").is_dir():
        shutil.copytree(build / "goss", copy / "goss", ignore=shutil.ignore_patterns(BOOT_PROFILE))
    return copy


def boot_profile(report_dir: Path) -> tuple[float, float] | None:
    """(kernel, userspace) seconds from the guest's systemd-analyze, as verify saved it."""
    path = report_dir / BOOT_PROFILE
    found = PROFILE.search(path.read_text()) if path.is_file() else None
    return (seconds(found[1]), seconds(found[2])) if found else None


def one_boot(build: Path, fmt: str, model: str) -> dict[str, object]:
    # The one way to boot with another CPU model without a knob in kiln for it: cpu_model() reads this
    # module constant at each boot. Only this script sets it; it is put back in main().
    accel.TCG_CPU = model
    opened = BuildDir.open(build)
    reports = report_dir(opened, fmt)  # the build's own firmware, as verify boots it
    (reports / BOOT_PROFILE).unlink(missing_ok=True)  # a profile that fails must not show the last boot's
    started = time.monotonic()
    row: dict[str, object] = {"format": fmt, "cpu": model}
    try:
        row["checks"] = len(verify_build(opened, accelerator="tcg", runtime=RUNTIME, fmt=fmt))
    except KilnError as exc:
        row["error"] = str(exc)
    row["seconds"] = round(time.monotonic() - started, 1)
    row["kernel"], row["userspace"] = boot_profile(reports) or (None, None)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", type=Path, help="a finished build (packer/output/NAME)")
    parser.add_argument("--formats", nargs="+", default=["disk", "iso", "netboot"],
                        choices=["disk", "iso", "netboot"])  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2, help="boots per format and model (default 2)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    try:
        source = BuildDir.open(args.build_dir.resolve())
    except KilnError as exc:
        parser.error(str(exc))  # exit 2 with the reason: not a finished build dir
    wanted = {"disk": source.qcow2, "iso": source.path / f"{source.name}.iso",
              "netboot": source.path / "netboot" / "boot.ipxe"}  # fmt: skip
    for fmt in args.formats:
        if not wanted[fmt].is_file():
            parser.error(f"--formats {fmt}: {wanted[fmt]} is missing")

    kiln_model = accel.TCG_CPU
    rows: list[dict[str, object]] = []
    try:
        with tempdirs.scratch(source.path.parent, "kiln-bench-boot") as scratch:
            build = copy_build(source.path, scratch)
            for fmt in args.formats:
                for i in range(args.rounds):
                    for model in [BASELINE, kiln_model] if i % 2 == 0 else [kiln_model, BASELINE]:
                        row = one_boot(build, fmt, model)
                        rows.append(row)
                        outcome = f"FAILED: {row['error']}" if "error" in row else f"{row['checks']} checks"
                        print(f"{fmt:<8} -cpu {model:<18} {row['seconds']:>6}s  kernel {row['kernel']}s  "
                              f"userspace {row['userspace']}s  {outcome}", flush=True)  # fmt: skip
    finally:
        accel.TCG_CPU = kiln_model
    print(f"\n{'format':<8} {'max':>8} {'kiln':>8} {'kiln/max':>9}   (kiln: -cpu {kiln_model})")
    summary: dict[str, dict[str, float]] = {}
    for fmt in args.formats:
        ok = [r for r in rows if r["format"] == fmt and "error" not in r]
        base = [float(str(r["seconds"])) for r in ok if r["cpu"] == BASELINE]
        ours = [float(str(r["seconds"])) for r in ok if r["cpu"] == kiln_model]
        if not base or not ours:
            print(f"{fmt:<8} no ratio: every boot of one model failed")
            continue
        b, k = sum(base) / len(base), sum(ours) / len(ours)
        summary[fmt] = {"max": round(b, 1), "kiln": round(k, 1), "ratio": round(k / b, 3)}
        print(f"{fmt:<8} {b:>7.1f}s {k:>7.1f}s {k / b:>9.3f}")
    if args.json:
        args.json.write_text(json.dumps({"boots": rows, "summary": summary}, indent=2) + "\n")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
