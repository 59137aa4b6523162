"""The one check-boot: boot a disk to look at it.

Every boot kiln makes to check or use an image goes through here: the build's stage runner (credentials and
seed for the VM that Packer boots), `kiln verify`, `kiln boot`/`kiln ssh` and conformance. It is two steps:

- `make_login(...)`: a one-time ed25519 key pair and the NoCloud seed that installs it, rendered from
  `cloudinit/templates` (the one user-data generator) with any extra cloud-config appended;
- `booted(disk, login, options, runtime)`: QEMU on a throwaway overlay with that seed, waited for until the
  login works and cloud-init has finished, and torn down on leaving the block (or on any failure).

Options travel as one `BootOptions` value.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.config.typed import Settings
from kiln.core.builddir import BuildDir
from kiln.core.errors import InputError
from kiln.core.runtime import Runtime
from kiln.vm import cidata, ssh
from kiln.vm.qemu import VM, VMError

log = logging.getLogger(__name__)

# What to do with cloud-init once SSH answers:
CLOUD_INIT_CHECK = "check"  # wait, and fail (VMError) when it reports an error
CLOUD_INIT_WARN = "warn"  # wait, and log its error as a warning (the VM stays up to look at: `kiln boot`)
CLOUD_INIT_WAIT = "wait"  # wait, and leave judging it to the caller (goss's hygiene spec checks its status)
CLOUD_INIT_MODES = (CLOUD_INIT_CHECK, CLOUD_INIT_WARN, CLOUD_INIT_WAIT)

# Wait until cloud-init's final stage has finished, or cloud-init has not started and will not run: what
# `cloud-init status --wait` waits for (cloud-init 22.4's cmd/status.py), read from the files it reads. Done:
# result.json, which the final stage writes after status.json says no stage runs. Disabled: the generator's
# "disabled" mark, the marker file or `cloud-init=disabled`, while no status.json says a stage has started
# and `cloud-init=enabled` does not override them. (`status --wait` also stops early when status.json
# records an error; this waits on to the end, and the hygiene spec's `cloud-init status --long` reports
# the error.) No cloud-init: nothing to wait for. A shell loop, not `cloud-init status`, which starts
# Python and imports cloud-init each time (9 to 15 s of an emulated CPU).
CLOUD_INIT_SETTLED = (
    "command -v cloud-init >/dev/null 2>&1 || exit 0; r=/run/cloud-init; "
    "until [ -e $r/result.json ] || { [ ! -e $r/status.json ] && ! grep -qw cloud-init=enabled /proc/cmdline "
    "&& { [ -e $r/disabled ] || [ -e /etc/cloud/cloud-init.disabled ] "
    "|| grep -qw cloud-init=disabled /proc/cmdline; }; }; do sleep 1; done"
)


@dataclass(frozen=True)
class Login:
    """One-time credentials for a boot and the seed that installs them."""

    user: str
    instance_id: str
    private_key: Path | None  # None when the user's own seed came without a key
    seed: Path | None  # the NoCloud ISO; None when the seed travels over HTTP (netboot)
    files: Mapping[str, str] = field(default_factory=dict)  # the seed's files, for serving over HTTP
    keys: ssh.KeyPair | None = None  # the key pair kiln made for this boot; never the user's own key

    def forget(self) -> None:
        """Remove the one-time key pair kiln made (the boot it was made for is over). A user's own key is
        never touched."""
        if self.keys is not None:
            shutil.rmtree(self.keys.directory, ignore_errors=True)


def make_login(
    workdir: Path,
    *,
    user: str,
    values: Mapping[str, Any],
    purpose: str,
    root: Path,
    hostname: str | None = None,
    extra_user_data: str = "",
    write_iso: bool = True,
) -> Login:
    """A key pair in `workdir/key` and a seed in `workdir/seed.iso` for `user`.

    `purpose` names the boot in the key's comment and the instance id (`build`, `verify`, `boot`); `root` is
    the data root whose cloudinit/templates render the seed. A `build`
    seed leaves nothing of itself in the image (no marker file, no hostname, no image default user);
    `extra_user_data` is cloud-config appended to the user-data.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    instance_id = f"kiln-{purpose}-{uuid.uuid4().hex[:12]}"
    keys = ssh.generate_keypair(workdir / "key", comment=instance_id)
    files = cidata.render_seed(
        [keys.public_line],
        user=user,
        hostname=hostname,
        instance_id=instance_id,
        values=values,
        templates=cidata.template_dir(root),
        build=purpose == "build",
    )
    if extra_user_data:
        files["user-data"] = files["user-data"].rstrip("\n") + "\n" + extra_user_data
    seed = cidata.write_iso(workdir / "seed.iso", files) if write_iso else None
    return Login(user, instance_id, keys.private_key, seed, files, keys)


def user_seed(iso: Path, user: str, key: Path | None) -> Login:
    """A login from a seed the user made (`--cidata ISO [--key KEY]`); checked before anything boots."""
    if not iso.is_file():
        raise InputError(f"{iso}: cidata ISO not found (from --cidata)")
    if key is not None:
        ssh.load_private_key(key)  # bad key: exit 2 before booting
    return Login(user=user, instance_id="", private_key=key, seed=iso)


@dataclass(frozen=True)
class BootOptions:
    """How to boot a disk for checking. `memory` and `cpus` come from the caller (the build's settings or
    the command line); there are no fallback defaults here."""

    memory: int
    cpus: int
    firmware: str
    accelerator: str
    disk_format: str | None = None  # detected unless given
    boot: str = "disk"  # disk | cdrom (live ISO) | net (iPXE)
    live_iso: Path | None = None
    bootfile: str | None = None  # the iPXE script URL for boot=net
    detach: bool = False  # QEMU outlives this process (`kiln boot --detach`)
    timeout: float = 900.0  # seconds to wait for SSH, and again for cloud-init
    cloud_init: str = CLOUD_INIT_CHECK
    hardware: str = "virtio"  # virtio | vmware (the OVA's PVSCSI disk and VMXNET3 NIC: kiln.vm.qemu)

    def __post_init__(self) -> None:
        if self.cloud_init not in CLOUD_INIT_MODES:
            raise ValueError(f"cloud_init: one of {CLOUD_INIT_MODES}, not {self.cloud_init!r}")


def settings_of(build: BuildDir) -> Settings:
    """The typed settings a build directory recorded (config.json, else its manifest's custom_data)."""
    try:
        return Settings.from_values(build.values())
    except TypeError as exc:
        raise InputError(f"{build.path}: recorded settings: {exc}") from None


def options_for(build: BuildDir, **overrides: Any) -> BootOptions:
    """Boot options from what a build directory recorded (memory, cpus, firmware, accelerator); a key an
    older build dir lacks takes its default from the settings table. `overrides` that are None are ignored."""

    s = settings_of(build)
    values: dict[str, Any] = {
        "memory": s.memory,
        "cpus": s.cpus,
        "firmware": s.firmware,
        "accelerator": s.accelerator,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return BootOptions(**values)


def start(disk: Path, workdir: Path, login: Login, options: BootOptions, runtime: Runtime) -> VM:
    """Start QEMU on `disk` (never written: a throwaway overlay in `workdir`) with `login`'s seed."""
    vm = VM(
        disk,
        workdir=workdir,
        firmware=options.firmware,
        accelerator=options.accelerator,
        cidata=login.seed,
        memory=options.memory,
        cpus=options.cpus,
        disk_format=options.disk_format,
        detach=options.detach,
        boot=options.boot,
        live_iso=options.live_iso,
        bootfile=options.bootfile,
        hardware=options.hardware,
        runtime=runtime,
    )
    vm.start()
    return vm


def wait(vm: VM, login: Login, options: BootOptions) -> None:
    """Block until `login` works and cloud-init has finished (judged per `options.cloud_init`)."""
    key = login.private_key
    if key is None:
        vm.wait_for_banner(options.timeout)
        return
    vm.wait_for_ssh(login.user, key, timeout=options.timeout)
    if options.cloud_init == CLOUD_INIT_WAIT:
        with vm.ssh(login.user, key) as session:
            session.run(["sh", "-c", CLOUD_INIT_SETTLED], check=False, timeout=options.timeout)
        return
    try:
        vm.wait_for_cloud_init(login.user, key, timeout=options.timeout)
    except VMError as exc:
        if options.cloud_init == CLOUD_INIT_CHECK:
            raise
        log.warning("WARNING: %s", exc.message)  # keep the VM: logging in to look is the point


@contextlib.contextmanager
def booted(disk: Path, workdir: Path, login: Login, options: BootOptions, runtime: Runtime) -> Iterator[VM]:
    """`disk` booted and waited for; QEMU is stopped when the block ends, however it ends."""
    vm = start(disk, workdir, login, options, runtime)
    try:
        if not runtime.dry_run:
            wait(vm, login, options)
        yield vm
    finally:
        # QEMU quits at once, with no ACPI powerdown first: the overlay is thrown away, so nothing the guest
        # would write on its way down is kept (a polite shutdown cost about 5 s of every verify under TCG)
        vm.stop(timeout=0)
