"""`kiln boot`, `kiln ssh` and the boot half of `kiln conformance`: a finished build dir, booted.

A boot lives in BUILD_DIR/.boot/ (the run dir):
  state.json      pid, SSH port, user, key path, QMP socket, serial log, firmware, accelerator, hardware:
                  how `kiln ssh`, hack/image-ssh.sh, `kiln conformance` and `kiln boot --stop` find the
                  running VM
  key/            the one-time ed25519 key pair (0700/0600) when kiln made the seed
  seed.iso        that seed
  vm/             overlay.qcow2, serial.log, qemu.log, qemu.pid (see kiln.vm)
  disk.vmdk       the VMDK extracted from the OVA, when booting an OVA
The artifact is never written. Stopping removes the run dir except vm/serial.log and vm/qemu.log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from kiln.core import inputs
from kiln.core.builddir import BuildDir
from kiln.core.errors import InputError, KilnError
from kiln.core.runtime import Runtime
from kiln.vm import checkboot, cidata, ssh
from kiln.vm.control import pid_alive, stop_process
from kiln.vm.qemu import VM

log = logging.getLogger(__name__)

RUN_DIR = ".boot"
STATE = "state.json"


@dataclass(frozen=True)
class BootState:
    pid: int
    ssh_port: int
    user: str
    key: str  # private key path, "" when the seed came from the user and kiln has no key for it
    qmp_socket: str
    serial_log: str
    run_dir: str
    disk: str
    firmware: str
    accelerator: str
    detached: bool
    started: float
    hardware: str  # virtio or vmware (a state file of a kiln before --hardware has none: virtio)

    def connect_hint(self) -> str:
        key = f"-i {self.key} -o IdentitiesOnly=yes " if self.key else ""
        # no ~/.ssh/config: a `Host *` proxy or jump host would reach another machine's 127.0.0.1
        return (
            f"ssh -F /dev/null {key}-p {self.ssh_port} -o StrictHostKeyChecking=no "
            f"-o UserKnownHostsFile=/dev/null {self.user}@127.0.0.1"
        )


def run_dir(build: BuildDir) -> Path:
    return build.path / RUN_DIR


def read_state(build: BuildDir) -> BootState | None:
    """The running boot of `build`, or None. A state file whose QEMU is gone is cleaned up."""
    rdir = run_dir(build)
    path = rdir / STATE
    if not path.is_file() and not path.is_symlink():
        return None
    data = inputs.read_json_object(path, "boot state")
    state = _state_from(data, path)
    # the state file is trusted only for paths under this build dir: a stale or edited file must never
    # point kiln's clean-up at another directory
    if not _inside(Path(state.run_dir), rdir):
        raise InputError(
            f"{path}: run_dir {inputs.clip(state.run_dir)} is not {rdir}; kiln will not use this boot state",
            hint=f"remove {path} yourself",
        )
    if not _is_our_qemu(state):
        log.info("%s: the VM recorded there is gone; cleaning up", path)
        _cleanup(rdir)
        return None
    return state


_STATE_TYPES: dict[str, tuple[type, ...]] = {f: (str,) for f in BootState.__dataclass_fields__}
_STATE_TYPES.update(pid=(int,), ssh_port=(int,), detached=(bool,), started=(int, float))


def _state_from(data: dict[str, Any], path: Path) -> BootState:
    data = {"hardware": "virtio", **data}
    missing = sorted(set(_STATE_TYPES) - set(data))
    if missing:
        raise InputError(f"{path}: malformed boot state: missing {', '.join(missing)}")
    for key, types in _STATE_TYPES.items():
        value = data[key]
        if not isinstance(value, types) or (types == (int,) and isinstance(value, bool)):
            raise InputError(f"{path}: malformed boot state: {key} is {inputs.clip(value)}")
    if not 0 < data["pid"] < 1 << 31:  # pid_t
        raise InputError(f"{path}: malformed boot state: pid {inputs.clip(data['pid'])} is out of range")
    if not 0 < data["ssh_port"] < 65536:
        raise InputError(
            f"{path}: malformed boot state: ssh_port {inputs.clip(data['ssh_port'])} is out of range"
        )
    return BootState(**{k: data[k] for k in _STATE_TYPES})


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve() == root.resolve() or path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):
        return False


def _is_our_qemu(state: BootState) -> bool:
    """The pid is alive AND is the QEMU of this run dir (pids get reused)."""
    if not pid_alive(state.pid):
        return False
    try:
        cmdline = Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and b"qemu" in cmdline[0] and any(state.run_dir.encode() in a for a in cmdline)


def disk_for(build: BuildDir, where: Path) -> tuple[Path, str]:
    """The disk to boot: NAME.qcow2, else the VMDK inside NAME.ova (extracted into `where`)."""
    if build.qcow2.is_file():
        return build.qcow2, "qcow2"
    if build.ova.is_file():
        return extract_vmdk(build.ova, where), "vmdk"
    raise InputError(
        f"{build.path}: neither {build.qcow2.name} nor {build.ova.name} is there",
        hint="build one with `make build-qemu-debian-12`",
    )


def extract_vmdk(ova: Path, where: Path) -> Path:
    """Copy the (first) .vmdk member of an OVA tar to `where`/disk.vmdk; QEMU reads stream-optimized VMDKs."""
    try:
        with tarfile.open(ova) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(".vmdk") and m.isfile()), None)
            if member is None:
                raise InputError(f"{ova}: no .vmdk disk inside the OVA")
            src = tar.extractfile(member)
            assert src is not None
            where.mkdir(parents=True, exist_ok=True)
            out = where / "disk.vmdk"
            with src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            return out
    except (tarfile.TarError, OSError) as exc:
        raise InputError(f"{ova}: not a readable OVA tar ({exc})") from exc


def seed_user(iso: Path) -> str:
    """The login user a seed ISO creates (first named entry of `users:`), for seeds given with --cidata."""
    _, files = cidata.read_iso(iso)
    raw = files.get("user-data")
    if raw is None:
        raise InputError(f"{iso}: no user-data in the seed ISO")
    try:
        data = yaml.safe_load(raw.decode(errors="replace")) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{iso}: user-data is not valid YAML ({exc})") from exc
    for entry in data.get("users") or []:
        if isinstance(entry, dict) and entry.get("name"):
            return str(entry["name"])
    raise InputError(f"{iso}: user-data names no user; pass --user")


def start(
    build: BuildDir,
    *,
    cidata_iso: Path | None = None,
    key: Path | None = None,
    user: str | None = None,
    firmware: str | None = None,
    accelerator: str | None = None,
    memory: int | None = None,
    cpus: int | None = None,
    hostname: str | None = None,
    detach: bool = False,
    timeout: float = 900.0,
    hardware: str | None = None,
    runtime: Runtime,
) -> tuple[VM, BootState]:
    """Boot `build` on a throwaway overlay and wait for SSH and cloud-init (a cloud-init error is
    printed as a warning; the VM stays up so that you can look).

    Without `cidata_iso`, kiln makes a one-time key pair and a seed for user `kiln`. With `cidata_iso`,
    `key` is the private key matching the seed (no key: kiln waits only for sshd's banner). Writes the
    state file before waiting, so `kiln boot --stop` works from another terminal at any time. On any
    failure (or Ctrl-C) QEMU is stopped and the run dir removed.
    """
    existing = read_state(build)
    if existing is not None:
        raise InputError(
            f"{build.path}: already booted (QEMU pid {existing.pid}, ssh port {existing.ssh_port})",
            hint=f"stop it with `kiln boot --stop {build.path}`",
        )
    with contextlib.ExitStack() as scratch:
        if runtime.dry_run:  # print what would run; nothing in the build dir is created, extracted or removed
            rdir = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="kiln-boot-dry-run-")))
        else:
            rdir = run_dir(build)
            _cleanup(rdir)
            rdir.mkdir(parents=True, exist_ok=True)  # may hold the previous boot's logs
        vm: VM | None = None
        try:
            if runtime.dry_run and not build.qcow2.is_file() and build.ova.is_file():
                disk, fmt = rdir / "disk.vmdk", "vmdk"  # would be extracted from the OVA
            else:
                disk, fmt = disk_for(build, rdir)
            if cidata_iso is None:
                login = checkboot.make_login(
                    rdir,
                    user=user or cidata.DEFAULT_USER,
                    values=build.values(),
                    purpose="boot",
                    root=runtime.root,
                    hostname=hostname,
                )
            else:
                if not cidata_iso.is_file():
                    raise InputError(f"{cidata_iso}: cidata ISO not found (from --cidata)")
                login = checkboot.user_seed(cidata_iso, user or seed_user(cidata_iso), key)
            options = checkboot.options_for(
                build,
                memory=memory,
                cpus=cpus,
                firmware=firmware,
                accelerator=accelerator,
                disk_format=fmt,
                detach=detach,
                timeout=timeout,
                hardware=hardware,
                cloud_init=checkboot.CLOUD_INIT_WARN,  # keep the VM: logging in to look is the point
            )
            vm = checkboot.start(disk, rdir / "vm", login, options, runtime)
            key_path = login.private_key
            state = BootState(
                pid=vm.pid or 0,
                ssh_port=vm.ssh_port,
                user=login.user,
                key=str(key_path) if key_path else "",
                qmp_socket=vm.qmp_socket,
                serial_log=str(vm.serial_log),
                run_dir=str(rdir),
                disk=str(disk),
                firmware=vm.firmware,
                accelerator=vm.accelerator or "",
                detached=detach,
                started=time.time(),
                hardware=vm.hardware,
            )
            if runtime.dry_run:
                return vm, state
            _write_state(rdir, state)
            checkboot.wait(vm, login, options)
            return vm, state
        except BaseException:
            if vm is not None:
                vm.stop(timeout=0)
            _cleanup(rdir)
            raise


def _write_state(rdir: Path, state: BootState) -> None:
    tmp = rdir / f".{STATE}.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(tmp, rdir / STATE)


def cleanup(build: BuildDir) -> None:
    """Remove the run dir of `build` (its logs stay)."""
    _cleanup(run_dir(build))


def _cleanup(rdir: Path) -> None:
    """Remove a run dir, keeping the logs (vm/serial.log, vm/qemu.log) for a post-mortem."""
    if not rdir.exists():
        return
    for child in rdir.iterdir():
        if child.name == "vm" and child.is_dir():
            for item in child.iterdir():
                if item.name not in ("serial.log", "qemu.log"):
                    if item.is_dir():
                        shutil.rmtree(item, ignore_errors=True)
                    else:
                        item.unlink(missing_ok=True)
        elif child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def stop(build: BuildDir, timeout: float = 10.0) -> BootState | None:
    """Stop the boot of `build` (ACPI powerdown, then kill) and clean up; the stopped state or None."""
    state = read_state(build)
    if state is None:
        return None
    stop_process(state.pid, state.qmp_socket, timeout=timeout)
    if pid_alive(state.pid):
        raise KilnError(f"{build.path}: QEMU pid {state.pid} did not stop")
    _cleanup(run_dir(build))
    return state


def require_state(build: BuildDir) -> BootState:
    state = read_state(build)
    if state is None:
        raise InputError(
            f"{build.path}: not booted",
            hint=f"boot it first: `kiln boot --detach {build.path}`",
        )
    if not state.key:
        raise InputError(
            f"{build.path}: booted with a seed kiln has no private key for",
            hint="log in with your own key: " + state.connect_hint(),
        )
    return state


def session(state: BootState, timeout: float = 60.0) -> ssh.Session:
    return ssh.Session("127.0.0.1", state.ssh_port, state.user, state.key, timeout=timeout)


@contextlib.contextmanager
def booted(build: BuildDir, *, runtime: Runtime, **start_args: Any) -> Iterator[BootState]:
    """The running boot of `build`, or a temporary one for the duration of the block."""
    state = read_state(build)
    if state is not None:
        if not state.key:
            require_state(build)
        yield state
        return
    log.info("%s is not booted; booting it for this run", build.path)
    vm, state = start(build, runtime=runtime, **start_args)
    try:
        yield state
    finally:
        vm.stop()
        _cleanup(run_dir(build))
