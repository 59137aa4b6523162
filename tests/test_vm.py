"""vm: the accelerator probe, the QEMU command line, and the real QEMU lifecycle on a tiny disk.

The lifecycle tests start real QEMU (TCG) on the 512-byte probe disk: SeaBIOS boots it, it prints its
marker on the serial port and halts. That is enough to check overlays, QMP, serial logs, ports and
that stopping never leaves QEMU behind, in well under a second per test. Booting a real OS and SSH into
it is tests/test_boot_vm.py (marked vm).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.core import proc
from kiln.core.errors import InputError
from kiln.vm import accel, console, control
from kiln.vm import qemu as vm
from kiln_runtime import RUNTIME


@pytest.fixture
def probe_disk(tmp_path: Path) -> Path:
    disk = tmp_path / "artifact" / "probe.img"
    disk.parent.mkdir()
    disk.write_bytes(accel.probe_boot_sector().ljust(1 << 20, b"\0"))
    return disk


def _tiny(disk: Path, workdir: Path, **kwargs: object) -> vm.VM:
    """A VM for the probe disk: TCG, 64 MiB, 1 vCPU, no ACPI wait on stop (nothing there to power off)."""
    args: dict[str, object] = {"accelerator": "tcg", "memory": 64, "cpus": 1, "stop_timeout": 0, **kwargs}
    return vm.VM(disk, workdir=workdir, runtime=RUNTIME, **args)  # type: ignore[arg-type]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _qemu_pids_using(path: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmd and str(path).encode() in cmd and control.pid_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def _wait_for(pred, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return bool(pred())


# --- accelerator -------------------------------------------------------------------------------------


def test_probe_boot_sector_layout() -> None:
    sector = accel.probe_boot_sector()
    assert len(sector) == 512 and sector.endswith(b"\x55\xaa")
    # `mov si, imm16` points at the message: 0x7c00 + code length
    si = int.from_bytes(sector[9:11], "little")
    assert sector[si - 0x7C00 :].startswith(accel.PROBE_MARKER)


def test_probe_under_tcg_reaches_marker_and_exit_port() -> None:
    ok, took = accel.probe_accelerator("tcg", RUNTIME)
    assert ok
    assert took < accel.PROBE_TIMEOUT


def _answers(sock: Path) -> bool:
    try:
        control.qmp(sock, "query-status")
    except control.VMError:
        return False
    return True


def test_the_tcg_cpu_model_is_max_without_the_byte_at_a_time_string_ops(tmp_path: Path) -> None:
    """QEMU takes kiln's TCG CPU model and the guest's CPU has neither ERMS nor FSRM, and keeps the rest
    of `max` (AVX2); under KVM the guest gets the host's CPU as before. (QEMU 7.2's TCG has no FSRM to take
    away, so on this machine only the ERMS check can tell the model from plain `max`.)"""
    assert accel.cpu_model("kvm") == "max"
    sock = tmp_path / "qmp.sock"
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-S", "-nodefaults", "-display", "none", "-accel", "tcg",
         "-cpu", accel.cpu_model("tcg"), "-qmp", f"unix:{sock},server=on,wait=off"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert _wait_for(lambda: sock.exists() or qemu.poll() is not None) and qemu.poll() is None, (
            qemu.stderr.read() if qemu.poll() is not None else "no QMP socket"
        )
        # the socket file is there at bind(), a moment before QEMU listens on it
        assert _wait_for(lambda: _answers(sock)), "QMP does not answer"
        (cpu,) = [c["qom-path"] for c in control.qmp(sock, "query-cpus-fast")]
        flags = {f: control.qmp(sock, "qom-get", path=cpu, property=f) for f in ("erms", "fsrm", "avx2")}
        assert flags == {"erms": False, "fsrm": False, "avx2": True}
    finally:
        qemu.kill()
        qemu.wait()


def test_probe_works_in_a_temp_dir_the_next_build_collects_when_kiln_dies(tmp_path: Path) -> None:
    """The probe's disk is in TMPDIR/.kiln-accel.tmp-PID-*, removed when it ends; a kiln killed while it
    runs (kill -9, here os._exit) leaves one that the next build's collection (prefix "kiln-") removes."""
    from kiln.core import tempdirs

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    probe = "import os; from kiln.config import default_runtime; from kiln.vm import accel; "
    run = probe + "print(accel.probe_accelerator('tcg', default_runtime()))"
    done = subprocess.run([sys.executable, "-c", run], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.startswith("(True,") and list(tmp_path.iterdir()) == []
    die = probe + "accel._probe = lambda *a: os._exit(9); accel.probe_accelerator('tcg', default_runtime())"
    assert subprocess.run([sys.executable, "-c", die], env=env, check=False).returncode == 9
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".kiln-accel.tmp-")
    assert [s.path for s in tempdirs.collect(tmp_path, prefix="kiln-")] == [left] and not left.exists()


def test_pick_accelerator_rejects_unknown_setting() -> None:
    with pytest.raises(InputError, match="accelerator: must be one of auto, kvm, tcg"):
        accel.pick_accelerator("hvf", RUNTIME)


def test_forced_kvm_without_dev_kvm_is_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "kvm_available", lambda: False)
    with pytest.raises(InputError) as err:
        accel.pick_accelerator("kvm", RUNTIME)
    assert err.value.message.startswith("accelerator: 'kvm'")
    assert err.value.exit_code == 2
    assert accel.pick_accelerator("tcg", RUNTIME) == "tcg"


@pytest.mark.parametrize(
    ("kvm_result", "expected"),
    [((True, 0.05), "kvm"), ((True, 3.3), "tcg"), ((False, 8.0), "tcg")],
)
def test_auto_uses_kvm_only_when_probe_proves_it(
    monkeypatch: pytest.MonkeyPatch, kvm_result: tuple[bool, float], expected: str
) -> None:
    calls: list[str] = []

    def fake_probe(name: str, runtime: object, timeout: float = accel.PROBE_TIMEOUT) -> tuple[bool, float]:
        calls.append(name)
        return (True, 0.07) if name == "tcg" else kvm_result

    monkeypatch.setattr(accel, "_ACCEL_CACHE", {})
    monkeypatch.setattr(accel, "kvm_available", lambda: True)
    monkeypatch.setattr(accel, "probe_accelerator", fake_probe)
    assert accel.pick_accelerator("auto", RUNTIME) == expected
    assert accel.pick_accelerator("auto", RUNTIME) == expected
    assert calls == ["tcg", "kvm"]  # probed once per process


def test_auto_without_dev_kvm_is_tcg_without_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "_ACCEL_CACHE", {})
    monkeypatch.setattr(accel, "kvm_available", lambda: False)
    monkeypatch.setattr(accel, "probe_accelerator", lambda *a, **k: pytest.fail("must not probe"))
    assert accel.pick_accelerator("auto", RUNTIME) == "tcg"


# --- command line --------------------------------------------------------------------------------------


def test_qemu_argv_bios_with_seed_and_kernel(tmp_path: Path, probe_disk: Path) -> None:
    seed = tmp_path / "seed.iso"
    seed.write_bytes(b"x")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    machine = vm.VM(
        probe_disk, workdir=tmp_path / "w,1", cidata=seed, accelerator="tcg", memory=1024, cpus=1,
        kernel=kernel, append="root=/dev/vda console=ttyS0", extra_args=["-no-reboot"], runtime=RUNTIME,
    )  # fmt: skip
    machine.accelerator = "tcg"
    machine.ssh_port = 2222
    machine.qmp_socket = "/tmp/q.sock"
    argv = machine.qemu_argv("raw")
    joined = " ".join(argv)
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi"
    assert argv[argv.index("-cpu") + 1] == "max,-erms,-fsrm"  # TCG runs rep movsb/stosb a byte a step
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in joined
    assert f"file={tmp_path}/w,,1/overlay.qcow2,format=qcow2,if=virtio" in joined  # commas escaped
    assert f"file={seed},format=raw,media=cdrom,readonly=on" in joined
    assert argv[argv.index("-kernel") + 1] == str(kernel)
    assert argv[argv.index("-append") + 1] == "root=/dev/vda console=ttyS0"
    assert "-display" in argv and argv[argv.index("-display") + 1] == "none"
    assert "pflash" not in joined
    assert argv[-1] == "-no-reboot"


def test_qemu_argv_efi_copies_vars(tmp_path: Path, probe_disk: Path) -> None:
    machine = vm.VM(
        probe_disk,
        workdir=tmp_path / "w",
        firmware="efi",
        accelerator="tcg",
        overlay=False,
        runtime=RUNTIME,
        memory=64,
        cpus=1,
    )
    machine.workdir.mkdir()
    machine.accelerator = "kvm"
    machine.qmp_socket = "/tmp/q.sock"
    argv = machine.qemu_argv("raw")
    code, vars_template = vm.find_ovmf()
    joined = " ".join(argv)
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={code}" in joined
    assert f"if=pflash,format=raw,unit=1,file={machine.workdir}/OVMF_VARS.fd" in joined
    assert (machine.workdir / "OVMF_VARS.fd").read_bytes() == vars_template.read_bytes()
    assert f"file={probe_disk},format=raw,if=virtio" in joined  # overlay=False: the disk itself
    assert argv[argv.index("-accel") + 1] == "kvm"


def test_bad_inputs_are_input_errors(tmp_path: Path, probe_disk: Path) -> None:
    with pytest.raises(InputError, match="disk image not found"):
        vm.VM(tmp_path / "nope.qcow2", workdir=tmp_path, runtime=RUNTIME, memory=64, cpus=1)
    with pytest.raises(InputError, match="firmware: must be one of bios, efi"):
        vm.VM(probe_disk, workdir=tmp_path, firmware="uefi", runtime=RUNTIME, memory=64, cpus=1)
    with pytest.raises(InputError, match="cidata ISO not found"):
        vm.VM(
            probe_disk, workdir=tmp_path, cidata=tmp_path / "missing.iso", runtime=RUNTIME, memory=64, cpus=1
        )


def test_detect_format(tmp_path: Path, probe_disk: Path) -> None:
    assert vm.detect_format(probe_disk, RUNTIME) == "raw"
    q = tmp_path / "d.qcow2"
    proc.run(["qemu-img", "create", "-q", "-f", "qcow2", str(q), "1M"], runtime=RUNTIME)
    assert vm.detect_format(q, RUNTIME) == "qcow2"


# --- real QEMU lifecycle --------------------------------------------------------------------------------


def test_start_overlay_serial_qmp_and_stop_leave_artifact_and_nothing_running(
    tmp_path: Path, probe_disk: Path
) -> None:
    before = _sha(probe_disk)
    work = tmp_path / "run"
    machine = _tiny(probe_disk, work)
    with machine:
        assert machine.running() and machine.pid
        argv = ["qemu-img", "info", "--output=json", "-U", str(machine.overlay_path)]
        info = json.loads(proc.output(argv, runtime=RUNTIME))
        assert info["format"] == "qcow2"
        assert info["backing-filename"] == str(probe_disk)  # absolute
        assert info["backing-filename-format"] == "raw"
        assert _wait_for(lambda: accel.PROBE_MARKER in machine.serial_log.read_bytes())
        assert vm.qmp(machine.qmp_socket, "query-status")["status"] == "running"
        assert int(machine.pidfile.read_text()) == machine.pid
        with socket.create_connection(("127.0.0.1", machine.ssh_port), timeout=5):
            pass  # the forward listens on loopback
        assert machine.state()["ssh_port"] == machine.ssh_port
        pid = machine.pid
    assert not control.pid_alive(pid)
    assert not machine.overlay_path.exists()
    assert not Path(machine.qmp_socket).exists()
    assert machine.serial_log.exists()  # the log stays
    assert _sha(probe_disk) == before
    assert _qemu_pids_using(work) == []


def test_stop_on_exception_and_efi(tmp_path: Path, probe_disk: Path) -> None:
    work = tmp_path / "efi"
    with pytest.raises(RuntimeError):
        with _tiny(probe_disk, work, firmware="efi", memory=128) as machine:
            assert (work / "OVMF_VARS.fd").is_file()
            assert vm.qmp(machine.qmp_socket, "query-status")["status"] == "running"
            raise RuntimeError("boom")
    assert _qemu_pids_using(work) == []


def test_the_vmware_hardware_boots_from_pvscsi_on_bios(tmp_path: Path, probe_disk: Path) -> None:
    """--hardware vmware: the disk on a PVSCSI controller, a VMXNET3 NIC, no RNG (the OVA's hardware).
    SeaBIOS boots the probe sector from it; test_boot_vm's seeded boot boots the image so. (OVMF has no
    PVSCSI driver: it starts its shell after its network boot attempts, which kiln names: _BOOTS.)"""
    with pytest.raises(InputError, match="hardware: must be one of virtio, vmware, not 'xen'"):
        _tiny(probe_disk, tmp_path / "x", hardware="xen")
    with _tiny(probe_disk, tmp_path / "w", hardware="vmware") as machine:
        argv = " ".join(machine.qemu_argv("raw"))
        assert "-device pvscsi,id=pvscsi0" in argv and "scsi-hd,drive=disk0,bus=pvscsi0.0,bootindex=0" in argv
        assert "-device vmxnet3,netdev=net0" in argv and "virtio" not in argv, argv
        assert _wait_for(lambda: accel.PROBE_MARKER in machine.serial_log.read_bytes(), 60), "not booted"


def test_long_workdir_puts_qmp_socket_in_short_temp_dir(tmp_path: Path, probe_disk: Path) -> None:
    work = tmp_path / ("x" * 90)
    with _tiny(probe_disk, work) as machine:
        assert len(machine.qmp_socket) < 100 and not machine.qmp_socket.startswith(str(work))
        assert vm.qmp(machine.qmp_socket, "query-status")["status"] == "running"
        qmp_dir = Path(machine.qmp_socket).parent
    assert not qmp_dir.exists()


def test_port_taken_between_pick_and_start_is_retried(
    tmp_path: Path, probe_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = [taken.getsockname()[1]]
    real_free_port = vm.free_port
    monkeypatch.setattr(vm, "free_port", lambda: ports.pop(0) if ports else real_free_port())
    try:
        with _tiny(probe_disk, tmp_path / "w") as machine:
            assert machine.ssh_port != taken.getsockname()[1]
            assert machine.running()
    finally:
        taken.close()


def test_wait_for_ssh_fails_fast_when_qemu_dies(tmp_path: Path, probe_disk: Path) -> None:
    key = tmp_path / "key"
    from kiln.vm import ssh

    pair = ssh.generate_keypair(key)
    machine = _tiny(probe_disk, tmp_path / "w").start()
    try:
        assert machine.pid is not None
        os.kill(machine.pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(vm.VMError, match="QEMU exited with code -9"):
            machine.wait_for_ssh("kiln", pair.private_key, timeout=120)
        assert time.monotonic() - start < 30
    finally:
        machine.stop(timeout=0)


def test_shutdown_cleanly_raises_when_guest_ignores_powerdown(tmp_path: Path, probe_disk: Path) -> None:
    machine = _tiny(probe_disk, tmp_path / "w").start()
    with pytest.raises(vm.VMError, match="did not power off within 2s"):
        machine.shutdown_cleanly(timeout=2)
    assert not machine.running()
    assert machine.overlay_path.exists()  # kept for reuse
    machine.start()  # boots the same overlay again
    assert machine.running()
    machine.stop(timeout=0)
    assert not machine.overlay_path.exists()


_CHILD = """
import sys, time
from kiln.config import default_runtime
from kiln.vm import qemu as vm
RUNTIME = default_runtime()
m = vm.VM(
    sys.argv[1], workdir=sys.argv[2], accelerator="tcg", memory=64, cpus=1, stop_timeout=0, runtime=RUNTIME
)
with m:
    print(m.pid, flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_no_qemu_left_after_ctrl_c_or_parent_killed(tmp_path: Path, probe_disk: Path, sig: int) -> None:
    """Ctrl-C runs __exit__ (stop); SIGKILL of kiln itself is covered by PR_SET_PDEATHSIG."""
    work = tmp_path / "child"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(probe_disk), str(work)],
        stdout=subprocess.PIPE,
        text=True,
        # A shell that starts the suite in the background leaves SIGINT ignored, and Python then never
        # turns it into KeyboardInterrupt: give the child the disposition a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert child.stdout is not None
        qemu_pid = int(child.stdout.readline())
        assert control.pid_alive(qemu_pid)
        child.send_signal(sig)
        child.wait(timeout=60)
        assert _wait_for(lambda: not control.pid_alive(qemu_pid), 15)
        assert _qemu_pids_using(work) == []
    finally:
        if child.poll() is None:
            child.kill()


_E = "\x1b[0;1;31m"
_BOOTS = {  # consoles as a Debian guest prints them (systemd's colours kept), and what kiln makes of each
    "emergency": (
        f"[    8.4] Run /init as init process\r\n[{_E}FAILED\x1b[0m] Failed to mount "
        "\x1b[0;1;39mboot-efi.mount\x1b[0m - /boot/efi.\r\n"
        "[\x1b[0;1;38;5;185mDEPEND\x1b[0m] Dependency failed for local-fs.target - Local File Systems.\r\n"
        "[  OK  ] Started emergency.service - Emergency Shell.\r\n"
        'You are in emergency mode. After logging in, type "journalctl -xb" to view\r\n',
        "its boot stopped in emergency mode; from its console:\n"
        "  [FAILED] Failed to mount boot-efi.mount - /boot/efi.\n"
        "  [DEPEND] Dependency failed for local-fs.target - Local File Systems.",
    ),
    "panic": (
        "[    2.1] VFS: Cannot open root device\n[    2.2] Kernel panic - not syncing: VFS: Unable to mount "
        "root fs on unknown-block(0,0)\n",
        "its kernel panicked; from its console:\n"
        "  Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
    ),
    "panicked, then rebooted": (  # panic=10: the boot after it counts
        "[    0.0] Linux version 6.1.0\n[    2.2] Kernel panic - not syncing: oops\n"
        "[    0.0] Linux version 6.1.0\n[    9.1] cloud-init[420]: Cloud-init v. 22.4.2 running\n",
        None,
    ),
    "echoed by cloud-init": (  # a user's runcmd echoed to the console names the marks
        "[   30.1] cloud-init[700]: You are in emergency mode (a test string)\n"
        "[   30.2] cloud-init[700]: Kernel panic - not syncing: none\n",
        None,
    ),
    "initramfs": (
        "Gave up waiting for root file system device.\n"
        "ALERT!  UUID=0b5e does not exist.  Dropping to a shell!\n",
        "its initramfs could not find the root file system; from its console:\n"
        "  Gave up waiting for root file system device.\n"
        "  ALERT!  UUID=0b5e does not exist.  Dropping to a shell!",
    ),
    "uefi shell": (  # OVMF's console (its colours kept) when no boot option loads
        'BdsDxe: failed to load Boot0001 "UEFI QEMU HARDDISK QM00001 " from PciRoot(0x0)/Pci(0x1F,0x2)/Sata'
        '(0x0,0xFFFF,0x0): Not Found\r\nBdsDxe: loading Boot0007 "EFI Internal Shell" from Fv(7CB8)\r\n'
        "\x1b[=3h\x1b[2J\x1b[01;01H\x1b[01;01HUEFI Interactive Shell v2.2\r\nEDK II\r\n",
        "its firmware (OVMF) found nothing to boot and started the UEFI shell; from its console:\n"
        '  BdsDxe: failed to load Boot0001 "UEFI QEMU HARDDISK QM00001 " from PciRoot(0x0)/Pci(0x1F,0x2)/Sata'
        "(0x0,0xFFFF,0x0): Not Found",
    ),
    "up": (  # a unit failing is not a stopped boot: sshd may still come
        f"[{_E}FAILED\x1b[0m] Failed to start foo.service.\r\n[  OK  ] Reached target multi-user.target.\r\n"
        "debian login: ",
        None,
    ),
}


@pytest.mark.parametrize("boot", sorted(_BOOTS))
def test_a_boot_that_stopped_for_good_is_told_from_its_console(tmp_path: Path, boot: str) -> None:
    printed, why = _BOOTS[boot]
    log = tmp_path / "serial.log"
    log.write_bytes(printed.encode())
    assert console.stuck_boot(log) == why
    assert console.stuck_boot(tmp_path / "none.log") is None
    if why is not None:  # what to try, for the guest's hardware
        hints = {hw: console.stuck_hint(why, hw) for hw in vm.HARDWARE}
        assert ("PVSCSI" in hints["vmware"]) == (boot == "uefi shell") and "PVSCSI" not in hints["virtio"]
        assert ("vmw_pvscsi" in hints["vmware"]) == (boot == "initramfs"), hints
