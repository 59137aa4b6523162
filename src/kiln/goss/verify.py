"""Verification: run kiln's goss specs on a host, and `kiln verify BUILD_DIR` on a finished image.

Two entry points:

- `check_host(...)` runs one phase's spec on a reachable SSH host. It is what `kiln goss-check` does
  inside the build (Packer's shell-local provisioner calls it between provisioning and sysprep, against
  the build VM; a non-zero exit fails the build).
- `verify_image(qcow2, values, workdir, report_dir, ...)` boots the artifact with `kiln.vm.VM` on a
  throwaway overlay (the artifact is never written), logs in as a one-time user with a one-time key
  delivered through a cloud-init seed, runs the "final" phase (the build checks plus hygiene), writes
  `report.json` and `junit.xml` into `report_dir` and raises VerifyError (exit 1) listing every failure.
  With `live="iso"` or `live="netboot"` it boots the build's live ISO or netboot set instead.
- `verify_build_dir(BUILD_DIR, fmt=...)` is `kiln verify`; `verify_build(temp_dir, monitor=...)` is the
  build pipeline's finalize step, before the temp dir is renamed into place.

Evaluation uses the real goss binary when one is given (copied into the guest and run with
`goss -g SPEC --vars VARS validate -f json`), and kiln's own evaluator over testinfra/paramiko otherwise.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from kiln.core import inputs
from kiln.core.errors import InputError, VerifyError
from kiln.core.progress import Monitor, Null
from kiln.core.runtime import Runtime
from kiln.goss import specs as goss

log = logging.getLogger(__name__)

VERIFY_USER = "kiln-verify"
PHASES = ("build", "final")

# Appended to the seed's user-data for `kiln verify`: keep whatever host keys the image carries, so that a
# key baked in by the build is still there for the hygiene check (cloud-init would otherwise delete and
# regenerate every key on a new instance, hiding the leak). Missing keys are still generated.
# A live boot has no disk partition to grow and no fstab of its own: those first-boot steps are off, and the
# spec's disk-only checks are skipped by name (the report lists them).
LIVE_CLOUD_CONFIG = """
# added by kiln verify for a live boot: the root is a squashfs under a tmpfs overlay
growpart: {mode: "off"}
resize_rootfs: false
"""
LIVE_SKIPS: frozenset[str] = frozenset()

VERIFY_CLOUD_CONFIG = """
# added by kiln verify: keep host keys the image carries so that hygiene.yaml can see them
ssh_deletekeys: false
"""


def load_config_json(path: Path) -> dict[str, Any]:
    """A resolved config file: kiln's config.json form ({"key": {"value": V, ...}}) or a flat mapping."""
    raw = inputs.read_json_object(path, "config")
    return {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in raw.items()}


class _Progress:
    """Logs each failure as it happens and a count every 15 seconds (checks over SSH take a minute)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.next_report = time.monotonic() + 15

    def __call__(self, result: goss.Result) -> None:
        self.done += 1
        if not result.successful:
            log.info("FAIL %s", result.title())
        if time.monotonic() >= self.next_report:
            log.info("goss: %d checks so far (the spec has %d resources)", self.done, self.total)
            self.next_report = time.monotonic() + 15


def check_host(
    host: str,
    port: int,
    user: str,
    key_file: Path,
    values: Mapping[str, Any],
    *,
    phase: str = "build",
    report_dir: Path | None = None,
    goss_binary: Path | None = None,
    extra_vars: Mapping[str, Any] | None = None,
    spec_dir: Path = goss.SPEC_DIR,
    meta: Mapping[str, Any] | None = None,
    skip_ids: Collection[str] = (),
) -> list[goss.Result]:
    """Run `phase`'s spec on host:port as `user` (with sudo) and return the results.

    Vars and spec are rendered and validated before anything connects (bad spec or config: InputError,
    exit 2). With `report_dir`, vars-PHASE.yaml, report.json and junit.xml are written there.
    """
    if phase not in PHASES:
        raise InputError(f"--phase: must be one of {', '.join(PHASES)}, not {phase!r}")
    if not Path(key_file).is_file():
        raise InputError(f"{key_file}: SSH key file not found")
    if goss_binary is not None and not Path(goss_binary).is_file():
        raise InputError(f"{goss_binary}: goss binary not found")
    vars_ = goss.render_vars(values, {"phase": phase, **(extra_vars or {})}, spec_dir=spec_dir)
    vars_.update(user_vars(values))
    entry = spec_dir / goss.ENTRY[phase]
    spec = goss.load_spec(entry, vars_)  # validates every resource and matcher up front
    user_entry = user_spec(values, phase)
    if user_entry is not None:  # the user's specs run as well, with the same vars
        spec.resources.extend(goss.load_spec(user_entry, vars_).resources)
        spec.files.append(user_entry)
    for resource in spec.resources:
        if resource.id in skip_ids:
            resource.attrs["skip"] = True  # reported as skipped, by name
    started = time.monotonic()
    if goss_binary is not None:
        results = _run_goss_binary(host, port, user, key_file, goss_binary, spec, vars_, spec_dir)
        engine = "goss"
    else:
        log.info(
            "goss %s phase: %d resources from %s on %s@%s:%d",
            phase,
            len(spec.resources),
            entry,
            user,
            host,
            port,
        )
        results = goss.evaluate(
            spec, _testinfra_probe(host, port, user, key_file), on_result=_Progress(len(spec.resources))
        )
        engine = "kiln (testinfra over paramiko)"
    s = goss.summary(results)
    log.info(
        "goss %s phase: %d checks, %d failed, %d skipped in %.1fs (%s)",
        phase, s["test-count"], s["failed-count"], s["skipped-count"], time.monotonic() - started, engine,
    )  # fmt: skip
    if report_dir is not None:
        goss.write_vars(vars_, report_dir / f"vars-{phase}.yaml")
        goss.write_reports(
            results, report_dir, {"phase": phase, "engine": engine, "spec": str(entry), **(meta or {})}
        )
    return results


def _user_path(raw: str) -> Path:
    from kiln.config import repo_root

    path = Path(raw)
    return path if path.is_absolute() else repo_root() / path


def user_vars(values: Mapping[str, Any]) -> dict[str, Any]:
    """goss_vars_file, then goss_vars_inline, merged over kiln's vars (InputError names the file)."""
    out: dict[str, Any] = {}
    raw = str(values.get("goss_vars_file") or "")
    if raw:
        out.update(goss.read_vars_file(_user_path(raw), "goss_vars_file"))
    inline = values.get("goss_vars_inline") or ""
    if isinstance(inline, Mapping):
        out.update(inline)
    elif inline:
        data = inputs.loads_json(str(inline), "goss_vars_inline", "value")
        if not isinstance(data, dict):
            raise InputError("goss_vars_inline: must be a JSON object")
        out.update(data)
    return out


def user_spec(values: Mapping[str, Any], phase: str) -> Path | None:
    """The user's entry gossfile for `phase` in goss_spec_dir, or None."""
    raw = str(values.get("goss_spec_dir") or "")
    if not raw:
        return None
    folder = _user_path(raw)
    names = ["goss.yaml"] if phase == "build" else ["goss-final.yaml", "goss.yaml"]
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise InputError(f"{folder}: goss_spec_dir has no {' or '.join(names)}")


def _testinfra_probe(host: str, port: int, user: str, key_file: Path) -> goss.TestinfraProbe:
    import warnings

    from testinfra.backend import get_backend
    from testinfra.host import Host

    # Throwaway VMs have new host keys on every boot: paramiko's "unknown host key" warning is noise.
    logging.getLogger("paramiko").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Unknown .* host key", module="paramiko")
    # A fresh Host (not testinfra.get_host's process-wide cache): each VM gets its own connection.
    backend = get_backend(
        f"paramiko://{user}@{host}:{port}", ssh_identity_file=str(key_file), sudo=True, timeout=60
    )
    target = f"{user}@{host}:{port}"
    # Preflight: the login works and sudo needs no password (checks as a user without root would all
    # fail for the wrong reason). Connection errors become one clear VerifyError, not a traceback.
    try:
        result = backend.run("id -u")
    except Exception as exc:  # paramiko/socket errors of every kind
        raise VerifyError(f"{target}: cannot run commands over SSH: {exc}") from exc
    if result.rc != 0 or result.stdout.strip() != "0":
        raise VerifyError(
            f"{target}: `sudo id -u` failed (exit {result.rc}): "
            f"{(result.stderr or result.stdout).strip()[:300]}",
            hint="the checks run as root through passwordless sudo (NOPASSWD)",
        )
    return goss.TestinfraProbe(Host(backend))


def _run_goss_binary(
    host: str,
    port: int,
    user: str,
    key_file: Path,
    binary: Path,
    spec: goss.Spec,
    vars_: Mapping[str, Any],
    spec_dir: Path,
) -> list[goss.Result]:
    """Copy goss, the spec files and the vars into the guest, run `goss validate -f json` there."""
    from kiln.vm.ssh import Session

    remote = f"/tmp/kiln-goss-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="kiln-goss-") as tmp:
        vars_path = goss.write_vars(vars_, Path(tmp) / "vars.yaml")
        with Session(host, port, user, key_file) as session:
            session.run(["mkdir", "-p", remote])
            session.put(binary, f"{remote}/goss", mode=0o755)
            session.put(vars_path, f"{remote}/vars.yaml")
            for path in sorted(spec_dir.glob("*.yaml")):
                session.put(path, f"{remote}/{path.name}", mode=0o644)
            entry = spec.entry.name
            rc, out, err = session.run(
                f"cd {remote} && sudo ./goss -g {entry} --vars vars.yaml validate -f json",
                check=False,
                timeout=1800,
            )
            session.run(["rm", "-rf", remote], check=False)
    try:
        doc = json.loads(out)
    except ValueError as exc:
        raise VerifyError(
            f"goss in the guest exited {rc} without a JSON report:\n{(out + err)[-2000:]}"
        ) from exc
    return goss.results_from_goss_json(doc)


def raise_on_failure(results: list[goss.Result], what: str, report_dir: Path | None) -> None:
    bad = goss.failures(results)
    if not bad:
        return
    where = f"; reports in {report_dir}" if report_dir is not None else ""
    raise VerifyError(
        f"{what}: {len(bad)} of {len(results)} goss checks failed{where}\n{goss.failure_table(results)}"
    )


def verify_image(
    qcow2: Path,
    values: Mapping[str, Any],
    workdir: Path,
    report_dir: Path,
    *,
    firmware: str = "bios",
    accelerator: str = "auto",
    goss_binary: Path | None = None,
    memory: int = 2048,
    cpus: int = 2,
    boot_timeout: float = 900.0,
    on_boot: Callable[[Any], None] | None = None,
    monitor: Monitor | None = None,
    runtime: Runtime | None = None,
    live: str | None = None,
    live_iso: Path | None = None,
    netboot_build: Any = None,
) -> list[goss.Result]:
    """Boot `qcow2` on a throwaway overlay and run the final-phase spec (build checks + hygiene).

    `live`: "iso" boots `live_iso` from a CD (plus the seed as a second CD), "netboot" chain-loads
    `netboot_build`'s boot.ipxe from `kiln serve` through QEMU's iPXE ROM (the seed over HTTP); `qcow2` is
    then an empty local disk. Checks that only make sense on a disk (LIVE_SKIPS) are skipped by name.

    Raises VerifyError (exit 1) naming every failed check, after writing report_dir/report.json,
    report_dir/junit.xml and report_dir/vars-final.yaml. `workdir` holds the overlay, the seed, the
    one-time key and the serial log; it is removed afterwards unless verification failed to boot.
    """
    from kiln.vm import cidata, ssh

    qcow2 = Path(qcow2)
    if not qcow2.is_file():
        raise InputError(f"{qcow2}: image not found")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    marker = f"kiln-verify-{uuid.uuid4().hex[:12]}"
    instance_id = f"iid-{marker}"
    extra = {"verify_user": VERIFY_USER, "verify_key_marker": marker, "verify_instance_id": instance_id}
    # Render and validate vars and spec before booting: a broken spec costs no boot.
    goss.load_spec(goss.SPEC_DIR / goss.ENTRY["final"], goss.render_vars(values, {"phase": "final", **extra}))

    keys = ssh.generate_keypair(workdir / "key", comment=marker)
    files = cidata.render_seed(
        [keys.public_line],
        user=VERIFY_USER,
        instance_id=instance_id,
        values=values,
    )
    files["user-data"] = files["user-data"].rstrip("\n") + "\n" + VERIFY_CLOUD_CONFIG
    if live:
        files["user-data"] += LIVE_CLOUD_CONFIG
    seed: Path | None = cidata.write_iso(workdir / "seed.iso", files)
    mon: Monitor = monitor or Null()
    what = f"{live} live boot" if live else f"{qcow2.name} on a throwaway overlay"
    mon.log("verify", f"booting {what} ({firmware})")
    started = time.monotonic()
    server = None
    vm_args: dict[str, Any] = {}
    if live == "iso":
        vm_args = {"boot": "cdrom", "live_iso": live_iso}
    elif live == "netboot":
        from kiln.vm.serve import Server

        seed_bytes = {k: v.encode() if isinstance(v, str) else v for k, v in files.items()}
        server = Server(netboot_build, seed=seed_bytes).start()
        vm_args = {"boot": "net", "bootfile": f"{server.base}/boot.ipxe"}
        seed = None  # the seed comes over HTTP: ds=nocloud;s=URL
    elif live is not None:
        raise InputError(f"--format {live!r}: want disk, iso or netboot")
    try:
        results = _boot_and_check(
            qcow2, values, workdir, report_dir, firmware=firmware, accelerator=accelerator, seed=seed,
            memory=memory, cpus=cpus, runtime=runtime, vm_args=vm_args, keys=keys, boot_timeout=boot_timeout,
            on_boot=on_boot, goss_binary=goss_binary, extra=extra, started=started, mon=mon, live=live,
        )  # fmt: skip
    finally:
        if server is not None:
            server.stop()
    shutil.rmtree(keys.directory, ignore_errors=True)
    raise_on_failure(results, str(live_iso or qcow2), report_dir)
    return results


def _boot_and_check(
    qcow2: Path,
    values: Mapping[str, Any],
    workdir: Path,
    report_dir: Path,
    *,
    firmware: str,
    accelerator: str,
    seed: Path | None,
    memory: int,
    cpus: int,
    runtime: Runtime | None,
    vm_args: Mapping[str, Any],
    keys: Any,
    boot_timeout: float,
    on_boot: Callable[[Any], None] | None,
    goss_binary: Path | None,
    extra: Mapping[str, Any],
    started: float,
    mon: Monitor,
    live: str | None,
) -> list[goss.Result]:
    from kiln.vm.qemu import VM

    with VM(
        qcow2,
        workdir=workdir / "vm",
        firmware=firmware,
        accelerator=accelerator,
        cidata=seed,
        memory=memory,
        cpus=cpus,
        runtime=runtime,
        **vm_args,
    ) as vm:
        vm.wait_for_ssh(VERIFY_USER, keys.private_key, timeout=boot_timeout)
        # Wait for cloud-init to finish, but let the spec judge its outcome (hygiene.yaml checks
        # `cloud-init status`): an error there is a reported failure, not an aborted verification.
        with vm.ssh(VERIFY_USER, keys.private_key) as session:
            session.run(["cloud-init", "status", "--wait"], check=False, timeout=boot_timeout)
        up = time.monotonic() - started
        mon.log("verify", f"guest up after {up:.0f}s; running checks")
        if on_boot is not None:
            on_boot(vm)
        return check_host(
            "127.0.0.1",
            vm.ssh_port,
            VERIFY_USER,
            keys.private_key,
            values,
            phase="final",
            report_dir=report_dir,
            goss_binary=goss_binary,
            extra_vars=extra,
            meta={
                "image": str(qcow2),
                "firmware": firmware,
                "format": live or "disk",
                "boot_to_ssh_s": round(up, 1),
                "skipped_disk_only": sorted(LIVE_SKIPS) if live else [],
            },  # fmt: skip
            skip_ids=LIVE_SKIPS if live else (),
        )


def verify_build_dir(
    build_dir: Path,
    *,
    workdir: Path | None = None,
    accelerator: str | None = None,
    firmware: str | None = None,
    goss_binary: Path | None = None,
    monitor: Monitor | None = None,
    runtime: Runtime | None = None,
    fmt: str = "disk",
) -> list[goss.Result]:
    """`kiln verify BUILD_DIR [--format disk|iso|netboot]`: verify_image on the build's qcow2 (reports in
    BUILD_DIR/goss/), or on a live boot of its ISO or netboot set (BUILD_DIR/goss/FORMAT-FIRMWARE/)."""
    from kiln.core import proc
    from kiln.core.builddir import BuildDir

    build = BuildDir.open(build_dir)
    values: dict[str, Any] = build.values()
    firmware = firmware or build.firmware
    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix="kiln-verify-")) if workdir is None else Path(workdir)
    live_iso: Path | None = None
    if fmt == "disk":
        image, reports = build.qcow2, build.path / "goss"
        if not image.is_file():
            raise InputError(f"{image}: missing; {build.path} has no qcow2 to boot")
    elif fmt in ("iso", "netboot"):
        live_iso = build.path / f"{build.name}.iso" if fmt == "iso" else None
        if live_iso is not None and not live_iso.is_file():
            raise InputError(f"{live_iso}: missing; build with FORMATS='qcow2 ova iso'")
        reports = build.path / "goss" / f"{fmt}-{firmware}"
        work.mkdir(parents=True, exist_ok=True)
        image = work / "empty-local-disk.qcow2"  # a diskless node's blank local disk
        proc.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "8G"], runtime=runtime)
    else:
        raise InputError(f"--format {fmt!r}: want disk, iso or netboot")
    try:
        return verify_image(
            image,
            values,
            work,
            reports,
            firmware=firmware,
            accelerator=accelerator or str(build.setting("accelerator", "auto") or "auto"),
            goss_binary=goss_binary,
            monitor=monitor,
            runtime=runtime,
            live=None if fmt == "disk" else fmt,
            live_iso=live_iso,
            netboot_build=build if fmt == "netboot" else None,
        )
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)


def verify_build(
    build_dir: Path,
    *,
    monitor: Monitor | None = None,
    accelerator: str | None = None,
    goss_binary: Path | None = None,
    runtime: Runtime | None = None,
) -> list[goss.Result]:
    """The build pipeline's verify step (kiln.build calls it on its temp build dir before the rename).

    Same as `kiln verify BUILD_DIR`, reporting through `monitor`. Raises VerifyError (the build then fails
    and publishes nothing) or InputError.
    """
    return verify_build_dir(
        Path(build_dir), accelerator=accelerator, goss_binary=goss_binary, monitor=monitor, runtime=runtime
    )
