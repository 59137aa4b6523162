"""The VM runner: boots an image in QEMU on a throwaway overlay and gives SSH access to it.

Used by `kiln boot`, `kiln ssh`, `kiln conformance`, `kiln verify` and the VM tests.

    with VM(build.qcow2, workdir=tmp, firmware=build.firmware, cidata=seed_iso, memory=4096, cpus=2,
            runtime=runtime) as vm:
        vm.wait_for_ssh("kiln", key)
        vm.wait_for_cloud_init("kiln", key)
        with vm.ssh("kiln", key) as s:
            s.run("uname -a")

- The artifact is never written: `start()` creates `workdir/overlay.qcow2` backed by the absolute path of
  the disk (with its format recorded), and QEMU writes only to the overlay.
- Accelerator: `pick_accelerator("auto"|"kvm"|"tcg")`. `auto` uses KVM only when a probe proves it
  works (a 512-byte boot sector must print a marker on the serial port and leave through isa-debug-exit
  within a few seconds); the result is cached per process.
- Firmware: "bios" (SeaBIOS) or "efi" (OVMF; the VARS file is copied into workdir).
- SSH: user networking with `hostfwd=tcp:127.0.0.1:PORT-:22` on a free port (`vm.ssh_port`).
- Files in workdir: serial.log (guest console), qemu.log (QEMU's own output), qemu.pid, overlay.qcow2,
  OVMF_VARS.fd (efi). The QMP socket lives in workdir, or in a short private temp dir when the workdir
  path is too long for a unix socket.
- Stopping: ACPI powerdown over QMP with a timeout, then QMP quit, then SIGTERM/SIGKILL on QEMU's process
  group. `__exit__` always stops (also on exceptions and Ctrl-C), an atexit hook stops VMs left running,
  and QEMU is started with PR_SET_PDEATHSIG so it dies if kiln is killed outright (except for `detach`).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from kiln.core import proc, tempdirs
from kiln.core.errors import InputError
from kiln.core.runtime import Runtime
from kiln.vm.accel import ACCELERATORS, cpu_model, pick_accelerator
from kiln.vm.console import stuck_boot, stuck_hint
from kiln.vm.control import VMError, qmp, stop_process
from kiln.vm.ssh import Session, SSHError

log = logging.getLogger(__name__)

FIRMWARES = ("bios", "efi")
# The guest's disk controller and NIC: virtio (KVM clouds, kiln's default), or vmware, what the OVA declares
# to vSphere (ova.py: a VirtualSCSI controller, a VmxNet3 adapter), so the OVA's disk is booted on them.
HARDWARE = ("virtio", "vmware")

# OVMF builds in the order we prefer them: (code, vars). Debian's `ovmf` package ships the first pair.
OVMF_PAIRS = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    ("/usr/share/edk2/x64/OVMF_CODE.fd", "/usr/share/edk2/x64/OVMF_VARS.fd"),
)

_LIVE: set[VM] = set()


def _escape(path: str | os.PathLike[str]) -> str:
    """QEMU option values separate with commas; a literal comma is written twice."""
    return os.fspath(path).replace(",", ",,")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (QEMU may still race for it; start() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def detect_format(disk: str | os.PathLike[str], runtime: Runtime) -> str:
    """The image format qemu-img reports ("qcow2", "raw", "vmdk", ...): a query, run even under --dry-run."""
    out = proc.output(["qemu-img", "info", "--output=json", os.fspath(disk)], runtime=runtime.live())
    try:
        return str(json.loads(out[out.index("{") :])["format"])
    except (ValueError, KeyError) as exc:
        raise VMError(f"{disk}: cannot read the image format from qemu-img ({exc})") from exc


def find_ovmf() -> tuple[Path, Path]:
    for code, vars_ in OVMF_PAIRS:
        if os.path.isfile(code) and os.path.isfile(vars_):
            return Path(code), Path(vars_)
    raise proc.ToolMissingError(
        "OVMF firmware not found (looked for " + ", ".join(c for c, _ in OVMF_PAIRS) + ")",
        hint="install the Debian package 'ovmf' (make deps)",
    )


# --- the VM ----------------------------------------------------------------------------------------


class VM:
    """One QEMU guest on a throwaway overlay. Use as a context manager, or start() / stop()."""

    def __init__(
        self,
        disk: str | os.PathLike[str],
        *,
        workdir: str | os.PathLike[str],
        firmware: str = "bios",
        accelerator: str = "auto",
        cidata: str | os.PathLike[str] | None = None,
        memory: int,
        cpus: int,
        disk_format: str | None = None,
        kernel: str | os.PathLike[str] | None = None,
        initrd: str | os.PathLike[str] | None = None,
        append: str | None = None,
        extra_args: Sequence[str] = (),
        overlay: bool = True,
        detach: bool = False,
        stop_timeout: float = 10.0,
        runtime: Runtime,
        boot: str = "disk",
        live_iso: str | os.PathLike[str] | None = None,
        bootfile: str | None = None,
        mac: str | None = None,
        guest_address: str = "",
        hardware: str = "virtio",
    ) -> None:
        """`disk`: the image (qcow2, raw, vmdk...; format detected unless `disk_format`). With overlay=False
        QEMU writes to `disk` itself (for reusing an overlay made earlier). `detach`: QEMU survives this
        process (for `kiln boot --detach`); then only stop()/stop_process() end it. `stop_timeout`: how
        long stop() and leaving the `with` block wait for an ACPI powerdown before killing QEMU.
        `boot`: disk (the default), cdrom (boot `live_iso` from an El Torito CD; `disk` is then an empty
        local disk), net (QEMU's iPXE ROM chain-loads `bootfile`, an http:// URL, over user networking).
        `mac`: the NIC's MAC address; `guest_address`: the address in QEMU's user network (10.0.2.0/24) that
        the SSH port forwards to, for a guest with a static address (default: the one DHCP hands out).
        `hardware`: virtio (a virtio disk, NIC and RNG) or vmware (the disk on a PVSCSI controller, a
        VMXNET3 NIC, no RNG: the OVA's virtual hardware)."""
        if boot not in ("disk", "cdrom", "net"):
            raise InputError(f"boot: must be disk, cdrom or net, not {boot!r}")
        if boot == "cdrom" and (live_iso is None or not Path(live_iso).is_file()):
            raise InputError(f"{live_iso}: live ISO not found")
        if boot == "net" and not (bootfile or "").startswith(("http://", "https://", "tftp://")):
            raise InputError(f"bootfile {bootfile!r}: netboot needs an http:// URL of an iPXE script")
        if firmware not in FIRMWARES:
            raise InputError(f"firmware: must be one of {', '.join(FIRMWARES)}, not {firmware!r}")
        if hardware not in HARDWARE:
            raise InputError(f"hardware: must be one of {', '.join(HARDWARE)}, not {hardware!r}")
        if accelerator not in ACCELERATORS:
            raise InputError(f"accelerator: must be one of {', '.join(ACCELERATORS)}, not {accelerator!r}")
        self.disk = Path(disk).resolve()
        if not self.disk.is_file():
            raise InputError(f"{self.disk}: disk image not found")
        if cidata is not None and not Path(cidata).is_file():
            raise InputError(f"{cidata}: cidata ISO not found")
        for label, path in (("kernel", kernel), ("initrd", initrd)):
            if path is not None and not Path(path).is_file():
                raise InputError(f"{path}: {label} not found")
        self.workdir = Path(workdir).resolve()
        self.firmware = firmware
        self.accelerator_setting = accelerator
        self.cidata = Path(cidata).resolve() if cidata is not None else None
        self.memory = int(memory)
        self.cpus = int(cpus)
        self.disk_format = disk_format
        self.kernel = Path(kernel).resolve() if kernel is not None else None
        self.initrd = Path(initrd).resolve() if initrd is not None else None
        self.append = append
        self.extra_args = list(extra_args)
        self.use_overlay = overlay
        self.detach = detach
        self.runtime = runtime
        self.boot = boot
        self.live_iso = Path(live_iso).resolve() if live_iso is not None else None
        self.bootfile = bootfile
        self.mac = mac
        self.guest_address = guest_address
        self.hardware = hardware
        self.stop_timeout = stop_timeout
        self.serial_log = self.workdir / "serial.log"
        self.qemu_log = self.workdir / "qemu.log"
        self.pidfile = self.workdir / "qemu.pid"
        self.overlay_path = self.workdir / "overlay.qcow2"
        self.accelerator: str | None = None
        self.ssh_port: int = 0
        self.qmp_socket: str = ""
        self._qmp_dir: str | None = None
        self._qmp_owned: tempdirs.TempDir | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._overlay_made = False
        self._login: tuple[str, Path] | None = None  # last user and key that logged in: poweroff fallback
        self.started_at = 0.0

    # -- lifecycle --

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> VM:
        """Create the overlay (first start only), start QEMU and return once its monitor answers."""
        if self.running():
            raise VMError(f"{self.disk}: VM already running (pid {self.pid})")
        dry_run = self.runtime.dry_run  # print the command lines; start, create or delete nothing
        if dry_run:
            self.accelerator = "tcg" if self.accelerator_setting == "auto" else self.accelerator_setting
            fmt = self.disk_format or ("qcow2" if self.disk.suffix == ".qcow2" else "raw")
        else:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.accelerator = pick_accelerator(self.accelerator_setting, self.runtime)
            fmt = self.disk_format or detect_format(self.disk, self.runtime)
        if self.use_overlay and not self._overlay_made:
            if not dry_run:
                self.overlay_path.unlink(missing_ok=True)
            backing = ["-F", fmt, "-b", str(self.disk)]  # absolute path + format: no probing, no surprises
            proc.run(  # under dry-run proc.run prints it
                ["qemu-img", "create", "-q", "-f", "qcow2", *backing, str(self.overlay_path)],
                runtime=self.runtime,
            )
            self._overlay_made = not dry_run
        if dry_run:
            self.qmp_socket = str(self.workdir / "qmp.sock")
            self.ssh_port = 2222
            print(f"would run: {proc.quote(self.qemu_argv(fmt))}")
            return self
        self._setup_qmp_path()
        last_error = ""
        for attempt in range(3):
            self.ssh_port = free_port()
            argv = self.qemu_argv(fmt)
            self.serial_log.unlink(missing_ok=True)
            self.pidfile.unlink(missing_ok=True)
            with open(self.qemu_log, "a") as fh:
                fh.write(f"# {proc.quote(argv)}\n")
            self._popen = proc.spawn(
                argv, log_path=self.qemu_log, die_with_parent=not self.detach, runtime=self.runtime
            )
            self.started_at = time.monotonic()
            _LIVE.add(self)
            try:
                error = self._wait_for_monitor()
            except BaseException:  # Ctrl-C while QEMU comes up: never leave it behind
                self._kill()
                raise
            if error is None:
                log.info(
                    "VM started (pid %s, %s, %s, ssh on 127.0.0.1:%d, serial log %s)",
                    self.pid, self.accelerator, self.firmware, self.ssh_port, self.serial_log,
                )  # fmt: skip
                return self
            _LIVE.discard(self)
            last_error = error
            if "hostfwd" not in error and "host forwarding" not in error:
                break
            log.debug("port %d taken, retrying (attempt %d)", self.ssh_port, attempt + 1)
        raise VMError(f"{self.disk}: QEMU did not start: {last_error}", hint=f"see {self.qemu_log}")

    def _disk_args(self, drive: str) -> list[str]:
        """The disk: a virtio block device, or a SCSI disk on a PVSCSI controller (first to boot when the
        disk is what boots: SeaBIOS and OVMF both boot from PVSCSI)."""
        if self.hardware == "virtio":
            return ["-drive", f"{drive},if=virtio,discard=unmap"]
        first = ",bootindex=0" if self.boot == "disk" else ""
        return ["-device", "pvscsi,id=pvscsi0", "-drive", f"{drive},if=none,id=disk0,discard=unmap",
                "-device", f"scsi-hd,drive=disk0,bus=pvscsi0.0{first}"]  # fmt: skip

    def qemu_argv(self, fmt: str) -> list[str]:
        """The full QEMU command line (also shown in qemu.log)."""
        assert self.accelerator is not None
        accel = "tcg,thread=multi" if self.accelerator == "tcg" else "kvm"
        drive_file, drive_fmt = (self.overlay_path, "qcow2") if self.use_overlay else (self.disk, fmt)
        argv = [
            "qemu-system-x86_64",
            "-name", "kiln-" + self.disk.stem,
            "-machine", "q35" if self.firmware == "efi" else "pc",
            "-accel", accel, "-cpu", cpu_model(self.accelerator),
            "-smp", str(self.cpus), "-m", str(self.memory),
            "-display", "none", "-nodefaults", "-vga", "none",
            "-chardev", f"file,id=serial0,path={_escape(self.serial_log)}", "-serial", "chardev:serial0",
            "-qmp", f"unix:{_escape(self.qmp_socket)},server=on,wait=off",
            "-pidfile", str(self.pidfile),
            *self._disk_args(f"file={_escape(drive_file)},format={drive_fmt}"),
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.ssh_port}-{self.guest_address}:22"
            + (f",bootfile={self.bootfile}" if self.boot == "net" else ""),
            "-device", ("vmxnet3" if self.hardware == "vmware" else "virtio-net-pci") + ",netdev=net0"
            + {"disk": "", "net": ",bootindex=0", "cdrom": ",romfile="}[self.boot]
            + (f",mac={self.mac}" if self.mac else ""),
            *(["-device", "virtio-rng-pci"] if self.hardware == "virtio" else []),
        ]  # fmt: skip
        if self.boot == "cdrom" and self.live_iso is not None:
            argv += [
                "-drive", f"file={_escape(self.live_iso)},format=raw,if=none,id=live,media=cdrom,readonly=on",
                "-device", "ide-cd,drive=live,bootindex=0",
            ]  # fmt: skip
        if self.firmware == "efi":
            code, vars_template = find_ovmf()
            vars_file = self.workdir / "OVMF_VARS.fd"
            if not vars_file.exists() and not self.runtime.dry_run:
                shutil.copyfile(vars_template, vars_file)
            argv += [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_escape(code)}",
                "-drive", f"if=pflash,format=raw,unit=1,file={_escape(vars_file)}",
            ]  # fmt: skip
        if self.cidata is not None:
            argv += ["-drive", f"file={_escape(self.cidata)},format=raw,media=cdrom,readonly=on"]
        if self.kernel is not None:
            argv += ["-kernel", str(self.kernel)]
            if self.initrd is not None:
                argv += ["-initrd", str(self.initrd)]
            if self.append:
                argv += ["-append", self.append]
        return argv + self.extra_args

    def _setup_qmp_path(self) -> None:
        candidate = self.workdir / "qmp.sock"
        if len(os.fsencode(candidate)) < 100:  # sun_path is 108 bytes
            self.qmp_socket = str(candidate)
        else:
            self._qmp_owned = tempdirs.create(Path(tempfile.gettempdir()), "kiln-qmp")
            self._qmp_dir = str(self._qmp_owned.path)
            self.qmp_socket = os.path.join(self._qmp_dir, "qmp.sock")
        Path(self.qmp_socket).unlink(missing_ok=True)

    def _wait_for_monitor(self, timeout: float = 60.0) -> str | None:
        """None once QMP answers query-status; else the reason QEMU is not running."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self._popen is not None
            if self._popen.poll() is not None:
                return f"exited with code {self._popen.returncode}: {self.qemu_log_tail()}"
            if os.path.exists(self.qmp_socket):
                try:
                    qmp(self.qmp_socket, "query-status", timeout=5)
                    return None
                except VMError:
                    pass
            time.sleep(0.1)
        self._kill()
        return f"no answer on the QMP socket within {timeout:.0f}s: {self.qemu_log_tail()}"

    def died(self) -> str | None:
        """None while QEMU runs, else why it stopped (exit code and log tails)."""
        if self._popen is None:
            return "QEMU was never started"
        if self._popen.poll() is None:
            return None
        return (
            f"QEMU exited with code {self._popen.returncode}; qemu.log: {self.qemu_log_tail()}; "
            f"serial.log: {self.serial_tail(5)}"
        )

    def qemu_log_tail(self, lines: int = 5) -> str:
        return _tail(self.qemu_log, lines)

    def serial_tail(self, lines: int = 20) -> str:
        return _tail(self.serial_log, lines)

    def stop(self, timeout: float | None = None) -> bool:
        """Power the guest off (ACPI, `timeout` seconds), else kill QEMU. Never leaves QEMU behind.
        Removes the throwaway overlay; keeps serial.log and qemu.log. True if the guest shut down cleanly.
        (The overlay is thrown away, so a polite shutdown is a courtesy: keep the timeout short.)"""
        clean = self._stop(self.stop_timeout if timeout is None else timeout)
        if self.use_overlay and self._overlay_made:
            self.overlay_path.unlink(missing_ok=True)
            self._overlay_made = False
        return clean

    def shutdown_cleanly(self, timeout: float = 300.0) -> None:
        """Power the guest off and wait for it to finish; the overlay is kept so that a later start() boots
        the modified disk. First ACPI powerdown (QMP); if the guest ignores it and someone logged in over
        SSH before, `sudo systemctl poweroff` through that login. VMError (after killing QEMU) if the guest
        did not power off within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        if self.running() and self._login is not None:
            acpi = stop_process(
                self._popen.pid if self._popen else 0, self.qmp_socket, timeout=min(30.0, timeout / 3),
                popen=self._popen, kill=False,
            )  # fmt: skip
            if not acpi and self.running():
                user, key = self._login
                log.info("guest ignored ACPI powerdown; powering off over SSH")
                try:
                    with Session("127.0.0.1", self.ssh_port, user, key, timeout=30) as session:
                        session.run("sudo -n systemctl poweroff", check=False, timeout=30)
                except (SSHError, OSError, EOFError) as exc:
                    log.debug("poweroff over SSH: %s", exc)
        remaining = max(1.0, deadline - time.monotonic())
        if not self._stop(remaining):
            raise VMError(
                f"{self.disk}: guest did not power off within {timeout:.0f}s (killed)",
                hint=f"see {self.serial_log}",
            )

    def _stop(self, timeout: float) -> bool:
        clean = True
        if self._popen is not None:
            pid = self._popen.pid
            if self._popen.poll() is None:
                log.debug("stopping VM pid %d", pid)
            clean = stop_process(pid, self.qmp_socket, timeout=timeout, popen=self._popen)
        _LIVE.discard(self)
        self._cleanup_qmp()
        return clean

    def _kill(self) -> None:
        if self._popen is not None:
            proc.terminate(self._popen, grace=5)
        _LIVE.discard(self)

    def _cleanup_qmp(self) -> None:
        if self.qmp_socket:
            Path(self.qmp_socket).unlink(missing_ok=True)
        if self._qmp_dir:
            shutil.rmtree(self._qmp_dir, ignore_errors=True)
            self._qmp_dir = None
        if self._qmp_owned is not None:
            self._qmp_owned.release()
            self._qmp_owned = None

    def __enter__(self) -> VM:
        if not self.running():
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # On an error or Ctrl-C nobody waits for a polite shutdown of a throwaway guest.
        self.stop(timeout=None if exc_type is None else 0.0)

    # -- guest access --

    def wait_for_ssh(self, user: str, key_path: str | os.PathLike[str], timeout: float = 900.0) -> None:
        """Block until `user` logs in with `key_path` and runs `true`. Progress every 30 s; VMError with the
        serial log tail if QEMU dies or `timeout` passes."""
        start = time.monotonic()
        deadline = start + timeout
        next_report = start + 30
        last = ""
        while True:
            reason = self.died()
            if reason:
                raise VMError(f"{self.disk}: {reason}")
            self._not_stuck(start)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise VMError(
                    f"{self.disk}: no SSH login as {user} on 127.0.0.1:{self.ssh_port} within {timeout:.0f}s "
                    f"({last}); serial log tail:\n{self.serial_tail()}",
                    hint=f"full console output in {self.serial_log}",
                )
            try:
                with Session(
                    "127.0.0.1", self.ssh_port, user, key_path, timeout=min(30.0, remaining), alive=self.died
                ) as session:
                    session.run("true", timeout=60)
            except SSHError as exc:
                last = exc.message
                if time.monotonic() >= next_report:
                    log.info(
                        "waiting for SSH on 127.0.0.1:%d (%.0fs)...", self.ssh_port, time.monotonic() - start
                    )
                    next_report += 30
                continue
            self._login = (user, Path(key_path))
            log.info(
                "SSH up as %s on 127.0.0.1:%d after %.0fs", user, self.ssh_port, time.monotonic() - start
            )
            return

    def _not_stuck(self, start: float) -> None:
        """VMError when the guest's console shows a boot that stopped for good (stuck_boot)."""
        stuck = stuck_boot(self.serial_log)
        if stuck:
            raise VMError(
                f"{self.disk}: the guest will not come up after {time.monotonic() - start:.0f}s: {stuck}",
                hint=f"full console output in {self.serial_log}; {stuck_hint(stuck, self.hardware)}",
            )

    def wait_for_banner(self, timeout: float = 900.0) -> None:
        """Without a key, "up" means sshd answers with its banner through the port forward."""
        start = time.monotonic()
        end = start + timeout
        while time.monotonic() < end:
            reason = self.died()
            if reason:
                raise VMError(f"{self.disk}: {reason}")
            self._not_stuck(start)
            try:
                with socket.create_connection(("127.0.0.1", self.ssh_port), timeout=5) as s:
                    s.settimeout(10)
                    if s.recv(64).startswith(b"SSH-"):
                        log.info("sshd is up (no private key given: cloud-init status not checked)")
                        return
            except OSError:
                pass
            time.sleep(3)
        raise VMError(
            f"{self.disk}: sshd did not answer within {timeout:.0f}s", hint=f"see {self.serial_log}"
        )

    def ssh(self, user: str, key_path: str | os.PathLike[str], timeout: float = 120.0) -> Session:
        """A new `kiln.vm.ssh.Session` into the guest (retries until `timeout`)."""
        session = Session("127.0.0.1", self.ssh_port, user, key_path, timeout=timeout, alive=self.died)
        self._login = (user, Path(key_path))
        return session

    def wait_for_cloud_init(self, user: str, key_path: str | os.PathLike[str], timeout: float = 900.0) -> str:
        """Run `cloud-init status --wait --long` in the guest and return its output. VMError when cloud-init
        reports an error (exit 1); exit 2 (recoverable errors, cloud-init >= 23.4) is logged as a warning."""
        with self.ssh(user, key_path) as session:
            rc, out, err = session.run(
                ["cloud-init", "status", "--wait", "--long"], check=False, timeout=timeout
            )
        text = (out + err).strip()
        if rc == 2:
            log.warning("cloud-init finished with recoverable errors:\n%s", text)
        elif rc != 0:
            raise VMError(
                f"{self.disk}: cloud-init failed in the guest (exit {rc}):\n{text}",
                hint="look at /var/log/cloud-init.log in the guest",
            )
        return text

    def state(self) -> dict[str, Any]:
        """What `kiln boot --stop` and `kiln ssh` need to find this VM again (written as a state file)."""
        return {
            "pid": self.pid,
            "ssh_port": self.ssh_port,
            "qmp_socket": self.qmp_socket,
            "workdir": str(self.workdir),
            "serial_log": str(self.serial_log),
            "disk": str(self.disk),
            "firmware": self.firmware,
            "accelerator": self.accelerator,
        }


def _tail(path: Path, lines: int) -> str:
    try:
        data = path.read_bytes()[-16384:].decode(errors="replace")
    except OSError:
        return "(no output)"
    text = "\n".join(line.rstrip("\r") for line in data.splitlines()[-lines:])
    return text or "(empty)"


@atexit.register
def _stop_leftovers() -> None:
    for vm in list(_LIVE):
        if not vm.detach:
            vm._kill()
