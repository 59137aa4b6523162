"""The boot profile of a verify: where the guest's boot went (`systemd-analyze`), written beside the
verify's reports. It runs beside the checks, in a session of its own, and never fails a verify."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

log = logging.getLogger(__name__)

BOOT_PROFILE = "boot-profile.txt"


def boot_profile(
    host: str, port: int, user: str, key_file: Path, report_dir: Path | None, *, stopped: threading.Event
) -> str:
    """Where the guest's boot went: `systemd-analyze time` and the slowest units of `blame`, written to
    report_dir/boot-profile.txt. Returns the "Startup finished" line, or "" when the guest has no
    systemd-analyze (or it cannot tell yet); it never fails a verify. Once `stopped` is set (the boot is
    over) it stops trying to log in."""
    from kiln.vm.ssh import Session

    script = "systemd-analyze time; echo; systemd-analyze blame --no-pager | head -n 15"

    def alive() -> str | None:
        return "the boot is over" if stopped.is_set() else None

    try:
        with Session(host, port, user, key_file, timeout=30, alive=alive) as session:
            rc, out, _ = session.run(["sudo", "sh", "-c", script], check=False, timeout=60)
    except Exception as exc:  # a profile is a nicety: no SSH, no profile
        log.info("boot profile: not available (%s)", exc)
        return ""
    if rc != 0 or "Startup finished" not in out:
        return ""
    if report_dir is not None:
        try:
            report_dir.mkdir(parents=True, exist_ok=True)
            (report_dir / BOOT_PROFILE).write_text(out)
        except OSError as exc:
            log.info("boot profile: not written (%s)", exc)
    first = out.splitlines()[0]
    return first.removeprefix("Startup finished in ").strip()
