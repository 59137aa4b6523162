"""The accelerator: `pick_accelerator("auto"|"kvm"|"tcg", runtime)`, and the guest CPU for it: `cpu_model`.

`auto` uses KVM only when a probe proves it works: a 512-byte boot sector must print a marker on the serial
port and leave through isa-debug-exit within a few seconds, no slower than TCG by much. The result is cached
per process.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from kiln.core import proc, tempdirs
from kiln.core.errors import InputError
from kiln.core.runtime import Runtime

log = logging.getLogger(__name__)

ACCELERATORS = ("auto", "kvm", "tcg")


# The accelerator probe: a BIOS boot sector (16-bit real mode, loaded at 0x7c00) that writes PROBE_MARKER
# to COM1 (0x3f8) and then writes 0x10 to isa-debug-exit (port 0xf4), which makes QEMU exit with
# (0x10 << 1) | 1 = 33. Assembled by hand:
#   cli; xor ax,ax; mov ds,ax; mov dx,0x3f8; mov si,msg; cld
#   l: lodsb; test al,al; jz d; out dx,al; jmp l
#   d: mov dx,0xf4; mov al,0x10; out dx,al; h: hlt; jmp h
#   msg: db "KILN-PROBE-OK", 10, 0
PROBE_MARKER = b"KILN-PROBE-OK"
_PROBE_CODE = bytes.fromhex("fa31c08ed8baf803be1d7cfcac84c07403eeebf8baf400b010eef4ebfd")
PROBE_EXIT_CODE = 33
PROBE_TIMEOUT = 8.0  # seconds; TCG needs well under one

_ACCEL_CACHE: dict[str, str] = {}

# The CPU a guest sees. Under KVM, `max` is the host's CPU. Under TCG it is every feature QEMU emulates, less
# the ones that say `rep movsb`/`rep stosb` are the fast way to copy and clear memory: ERMS, and FSRM, which
# QEMU's TCG offers from 8.0 on (7.2's has none to take away). TCG runs those instructions one byte per step.
# Debian's kernel clears every page it allocates (init_on_alloc), with `rep stosb` when the CPU says ERMS, and
# glibc copies with them. Without them a live ISO's kernel phase (until systemd starts) fell from 55 s to
# 31 s, a netboot's userspace from 74 s to 42 s, a disk boot changed little (bench/boot.py,
# docs/benchmarks.md).
TCG_CPU = "max,-erms,-fsrm"


def cpu_model(accelerator: str) -> str:
    """QEMU's -cpu for a guest under the resolved `accelerator`, "kvm" or "tcg" (not "auto")."""
    if accelerator not in ("kvm", "tcg"):
        raise ValueError(f"cpu_model: a resolved accelerator (kvm or tcg), not {accelerator!r}")
    return TCG_CPU if accelerator == "tcg" else "max"


def _escape(path: str | os.PathLike[str]) -> str:
    """QEMU option values separate with commas; a literal comma is written twice."""
    return os.fspath(path).replace(",", ",,")


def probe_boot_sector() -> bytes:
    """The 512-byte probe disk image (code, message, zero padding, 0x55AA signature)."""
    body = _PROBE_CODE + PROBE_MARKER + b"\n\0"
    assert len(_PROBE_CODE) == 0x1D, "message offset baked into `mov si` must match the code length"
    return body.ljust(510, b"\0") + b"\x55\xaa"


def probe_accelerator(accel: str, runtime: Runtime, timeout: float = PROBE_TIMEOUT) -> tuple[bool, float]:
    """Boot the probe sector under `accel`; (reached the marker and exit port in time, seconds taken)."""
    qemu = proc.which("qemu-system-x86_64", runtime)
    # /tmp/.kiln-accel.tmp-PID-*: collected by the next build when kiln dies (kill -9) while the probe runs
    with tempdirs.scratch(Path(tempfile.gettempdir()), "kiln-accel") as tmp:
        return _probe(qemu, accel, tmp, timeout, runtime)


def _probe(qemu: str, accel: str, tmp: Path, timeout: float, runtime: Runtime) -> tuple[bool, float]:
    disk = tmp / "probe.img"
    disk.write_bytes(probe_boot_sector())
    serial = tmp / "serial.log"
    argv = [
        qemu, "-nodefaults", "-display", "none", "-no-reboot", "-m", "16",
        "-accel", accel if accel != "tcg" else "tcg,thread=multi",
        "-drive", f"file={_escape(disk)},format=raw,if=ide,index=0",
        "-chardev", f"file,id=ser0,path={_escape(serial)}", "-serial", "chardev:ser0",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ]  # fmt: skip
    start = time.monotonic()
    result = proc.run(argv, check=False, timeout=timeout, tail_lines=10, runtime=runtime.live())
    took = time.monotonic() - start
    marker = serial.is_file() and PROBE_MARKER in serial.read_bytes()
    ok = result.returncode == PROBE_EXIT_CODE and marker
    log.debug("accelerator probe %s: rc=%s marker=%s %.2fs", accel, result.returncode, marker, took)
    return ok, took


def kvm_available() -> bool:
    return os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)


def pick_accelerator(setting: str, runtime: Runtime) -> str:
    """Resolve the `accelerator` setting to "kvm" or "tcg".

    "tcg" is always honoured. "kvm" requires a usable /dev/kvm (InputError naming the setting otherwise).
    "auto" picks kvm only when /dev/kvm is there AND the probe boots under kvm within PROBE_TIMEOUT, and
    no slower than 3x tcg (on machines where /dev/kvm exists but firmware crawls, the probe times out).
    The probe runs once per process.
    """
    if setting not in ACCELERATORS:
        raise InputError(f"accelerator: must be one of {', '.join(ACCELERATORS)}, not {setting!r}")
    if setting == "tcg":
        return "tcg"
    if setting == "kvm":
        if not kvm_available():
            raise InputError(
                "accelerator: 'kvm' requested but /dev/kvm is missing or not accessible",
                hint="set accelerator to 'auto' or 'tcg' (slower, works everywhere)",
            )
        return "kvm"
    if "auto" not in _ACCEL_CACHE:
        _ACCEL_CACHE["auto"] = _probe_auto(runtime)
    return _ACCEL_CACHE["auto"]


def _probe_auto(runtime: Runtime) -> str:
    if not kvm_available():
        log.info("accelerator auto: /dev/kvm not usable, using tcg")
        return "tcg"
    tcg_ok, tcg_time = probe_accelerator("tcg", runtime)
    limit = max(PROBE_TIMEOUT, 3 * tcg_time) if tcg_ok else PROBE_TIMEOUT
    kvm_ok, kvm_time = probe_accelerator("kvm", runtime, timeout=limit)
    if kvm_ok and (not tcg_ok or kvm_time <= 3 * tcg_time + 1.0):
        log.info("accelerator auto: kvm works (probe %.2fs, tcg %.2fs), using kvm", kvm_time, tcg_time)
        return "kvm"
    outcome = f"took {kvm_time:.2f}s" if kvm_ok else f"did not finish in {limit:.0f}s"
    log.info(
        "accelerator auto: /dev/kvm exists but the kvm probe %s (tcg: %.2fs), using tcg", outcome, tcg_time
    )
    return "tcg"
