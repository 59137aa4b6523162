"""A guest's serial console read for a boot that stopped for good: no SSH login will ever come."""

from __future__ import annotations

import os
import re
from pathlib import Path

# a boot that stopped for good: no SSH login will ever come (systemd's emergency and rescue modes, a kernel
# panic, initramfs-tools' and dracut's shells), and the console lines that say why. Only the last boot in
# the log counts (a guest that panicked and rebooted may come up), and only lines that begin with a mark
# (after the kernel's timestamp): cloud-init echoes a user's commands to the console.
NO_ROOT = "its initramfs could not find the root file system"
UEFI_SHELL = "its firmware (OVMF) found nothing to boot and started the UEFI shell"
_STUCK = (
    ("You are in emergency mode", "its boot stopped in emergency mode"),
    ("You are in rescue mode", "its boot stopped in rescue mode"),
    ("Give root password for maintenance", "its boot stopped in emergency mode"),
    ("Kernel panic - not syncing", "its kernel panicked"),
    ("ALERT!  ", NO_ROOT),
    ("Entering emergency mode. Exit the shell to continue.", "its initramfs stopped in emergency mode"),
    # OVMF tried every boot option and fell back to its shell: no disk it can boot (no ESP, no boot loader,
    # or a disk controller it has no driver for)
    ("UEFI Interactive Shell", UEFI_SHELL),
)
_WHY = ("[FAILED]", "[DEPEND]", "Kernel panic", "ALERT!", "Gave up waiting", "Timed out waiting for device",
        "BdsDxe: failed to load")  # fmt: skip
_HOME = re.compile(r"\x1b\[(?:2J|[0-9;]*[Hf])")  # a cleared screen or the cursor sent home: a new line
_ANSI = re.compile(r"\x1b\[[0-9;?=>]*[A-Za-z]")  # OVMF also sets modes (ESC[=3h)
_STAMP = re.compile(r"^\[\s*\d+\.\d+\]\s*")
_READ = 1 << 20  # the end of the log that is read


def stuck_boot(serial_log: Path, limit: int = 8) -> str | None:
    """Why the guest whose console is `serial_log` will never come up (module _STUCK), with the first
    console lines that say what failed; None while its boot may still finish."""
    try:
        with open(serial_log, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - _READ, 0))
            text = _ANSI.sub("", _HOME.sub("\n", f.read().decode(errors="replace")))
    except OSError:
        return None
    boot = text.rfind("Linux version ")  # the last boot's banner
    lines = [_STAMP.sub("", ln.strip()) for ln in text[max(boot, 0) :].splitlines()]
    found = next((what for mark, what in _STUCK for ln in lines if ln.startswith(mark)), None)
    if found is None:
        return None
    why = list(dict.fromkeys(ln for ln in lines if ln.startswith(_WHY)))[:limit]  # in order, each once
    return found + ("; from its console:\n  " + "\n  ".join(why) if why else "")


def stuck_hint(stuck: str, hardware: str) -> str:
    """What to try for the stopped boot `stuck` (stuck_boot's reason) of a guest on `hardware`."""
    if stuck.startswith(UEFI_SHELL):
        if hardware == "vmware":
            return "OVMF here has no PVSCSI driver: boot the OVA's hardware with --firmware bios"
        return (
            "no boot loader on an ESP that OVMF can read: an image made for BIOS boots with --firmware bios"
        )
    if stuck.startswith(NO_ROOT) and hardware == "vmware":
        return (
            "the image's initramfs has no vmw_pvscsi driver for its root disk (MODULES=dep made elsewhere?)"
        )
    return (
        "a file system of the image's /etc/fstab that does not mount (its module blacklisted, such as "
        "vfat for the ESP, or no such device) stops the boot in emergency mode"
    )
