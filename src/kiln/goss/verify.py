"""Verification: run kiln's goss specs on a host, and `kiln verify BUILD_DIR` on a finished image.

Two entry points:

- `check_host(...)` runs one phase's spec on a reachable SSH host. It is what `kiln goss-check` does
  inside the build (Packer's shell-local provisioner calls it between provisioning and sysprep, against
  the build VM; a non-zero exit fails the build).
- `verify_image(Target, values, workdir, report_dir, BootOptions, runtime=)` boots the artifact through the
  check-boot (kiln.vm.checkboot: a throwaway overlay, the artifact is never written), logs in as a one-time
  user with a one-time key delivered through a cloud-init seed, runs the "final" phase (the build checks plus
  hygiene), writes `report.json` and `junit.xml` into `report_dir` and raises VerifyError (exit 1) listing
  every failure. A live `Target` ("iso" or "netboot") boots the build's live ISO or netboot set instead.
- `verify_build(BuildDir, fmt=...)` is `kiln verify` and, with `disk=`, the build pipeline's finalize step,
  before the manifest is written and the temp dir renamed into place.

Evaluation uses the real goss binary when one is given (copied into the guest and run with
`goss -g SPEC --vars VARS validate -f json`), and kiln's own evaluator over testinfra/paramiko otherwise.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kiln.core import inputs, tempdirs
from kiln.core.builddir import BuildDir
from kiln.core.errors import InputError, VerifyError
from kiln.core.progress import Monitor, Null
from kiln.core.runtime import Runtime
from kiln.goss import bootprofile, reports, treephase
from kiln.goss import specs as goss
from kiln.goss.probe import TestinfraProbe
from kiln.goss.userspecs import load_phase, user_spec
from kiln.vm import checkboot

log = logging.getLogger(__name__)

VERIFY_USER = "kiln-verify"
# stand-ins for a verify boot's one-time facts, to render and check the final spec without booting
PLACEHOLDER_VARS = {
    "verify_user": VERIFY_USER,
    "verify_key_marker": "-",
    "verify_instance_id": "-",
    "verify_firmware": "",  # no firmware check (`kiln goss-check --var verify_firmware=efi` asks for one)
}
PHASES = ("build", "final")

# Appended to the seed's user-data for `kiln verify`: keep whatever host keys the image carries, so that a
# key baked in by the build is still there for the hygiene check (cloud-init would otherwise delete and
# regenerate every key on a new instance, hiding the leak). A missing key is made: ed25519 only, the fast one.
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
# and make one new key, ed25519: an RSA key takes 5 to 30 s of an emulated CPU (a random prime search)
ssh_genkeytypes: [ed25519]
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
    spec_dir: Path,
    root: Path,
    meta: Mapping[str, Any] | None = None,
    skip_ids: Collection[str] = (),
    passed_in_tree: Collection[str] = (),
    running_only: bool = False,
) -> list[goss.Result]:
    """Run `phase`'s spec on host:port as `user` (with sudo) and return the results.

    Vars and spec are rendered and validated before anything connects (bad spec or config: InputError,
    exit 2). With `report_dir`, vars-PHASE.yaml, report.json and junit.xml are written there. In the final
    phase, the resources of your build-phase spec (goss_spec_dir's goss.yaml, standing in for a
    goss-final.yaml) that `passed_in_tree` (kiln.goss.treephase) are skipped: they were checked on the image
    at rest, as image-builder checks its build VM after sysprep. With a goss-final.yaml of yours, the
    resources of your goss.yaml that did not pass in the tree (they waited for the boot) run beside it.

    `running_only` (the build phase in a VM runner's build VM, before sysprep, when its disk is checked at
    rest after shutdown: kiln.build.runners) checks only the resources that need a running system
    (kiln.goss.treephase.phase_of says "boot"); the others wait for the disk.
    """
    if phase not in PHASES:
        raise InputError(f"--phase: must be one of {', '.join(PHASES)}, not {phase!r}")
    if running_only and phase != "build":
        raise InputError("--running-only: the build phase's split; the final phase checks everything")
    if not Path(key_file).is_file():
        raise InputError(f"{key_file}: SSH key file not found")
    if goss_binary is not None and not Path(goss_binary).is_file():
        raise InputError(f"{goss_binary}: goss binary not found")
    # validates every resource and matcher up front
    loaded = load_phase(values, phase, spec_dir=spec_dir, root=root, extra_vars=extra_vars)
    spec, vars_, entry, user_entry = loaded.spec, loaded.vars, loaded.spec.entry, loaded.user_entry
    ours, theirs = list(spec.resources), loaded.theirs
    # the goss binary's runs: an entry (kiln's, then the user's) and the resources it holds, and those of them
    # not checked here (_settled)
    runs: list[tuple[Path, list[goss.Resource], list[goss.Resource]]] = [(entry, ours, [])]
    if user_entry is not None:  # the user's specs run as well, with the same vars
        runs.append((user_entry, theirs, []))
        if phase == "final" and user_entry.name == goss.ENTRY["build"] and passed_in_tree:
            done = [r for r in theirs if treephase.resource_key(r) in passed_in_tree]
            for resource in done:
                resource.attrs["skip"] = True  # reported as skipped, by name
            log.info("goss: %d resources of %s passed in the tree: skipped here", len(done), user_entry)
        elif phase == "final" and passed_in_tree:  # their goss-final.yaml, after a build that kept a record:
            # what their goss.yaml left for the boot (a service, a command that failed at rest) is checked too
            # (by type and id: goss.yaml renders here with the final phase's vars, and a resource that
            # goss-final.yaml defines too is goss-final.yaml's, as goss merges them)
            build_entry = user_entry.with_name(goss.ENTRY["build"])
            every = goss.load_spec(build_entry, vars_).resources
            gone = {key.rsplit("\t", 1)[0] for key in passed_in_tree} | {f"{r.type}\t{r.id}" for r in theirs}
            left = [r for r in every if f"{r.type}\t{r.id}" not in gone]
            if left:
                runs.append((build_entry, every, [r for r in every if all(r is not x for x in left)]))
                theirs = theirs + left
            log.info("goss: %d resources of %s wait for this boot: checked here", len(left), build_entry)
        spec.resources.extend(theirs)
        spec.files.append(user_entry)
    for resource in spec.resources:
        if resource.id in skip_ids:
            resource.attrs["skip"] = True  # reported as skipped, by name
    at_rest = [r for r in spec.resources if running_only and treephase.phase_of(r) != "boot"]
    if at_rest:
        spec.resources = [r for r in spec.resources if r not in at_rest]
        log.info("goss: %d resources wait for the disk at rest (after sysprep and shutdown)", len(at_rest))
    started = time.monotonic()
    if goss_binary is not None:
        entries = [run[0] for run in runs]
        found = _run_goss_binary(host, port, user, key_file, goss_binary, spec_dir, vars_, entries)
        results = [
            r
            for one, (_, resources, dropped) in zip(found, runs, strict=True)
            for r in _settled(one, resources, [*at_rest, *dropped])
        ]
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
        probe = _testinfra_probe(host, port, user, key_file)
        try:
            results = goss.evaluate(spec, probe, on_result=_Progress(len(spec.resources)))
        finally:
            probe.host.backend.close()
        engine = "kiln (testinfra over paramiko)"
    s = reports.summary(results)
    log.info(
        "goss %s phase: %d checks, %d failed, %d skipped in %.1fs (%s)",
        phase, s["test-count"], s["failed-count"], s["skipped-count"], time.monotonic() - started, engine,
    )  # fmt: skip
    if report_dir is not None:
        goss.write_vars(vars_, report_dir / f"vars-{phase}.yaml")
        reports.write_reports(
            results, report_dir, {"phase": phase, "engine": engine, "spec": str(entry), **(meta or {})}
        )
    return results


def _testinfra_probe(host: str, port: int, user: str, key_file: Path) -> TestinfraProbe:
    from testinfra.host import Host

    from kiln.goss.rootshell import RootShellBackend

    # A fresh Host (not testinfra.get_host's process-wide cache): each VM gets its own connection, and
    # each checking thread one root shell on it (`sudo -n /bin/sh -s`, kiln.goss.rootshell).
    spec_host = f"[{host}]" if ":" in host else host  # an IPv6 address, as testinfra's host spec writes it
    backend = RootShellBackend(
        f"{user}@{spec_host}:{port}", ssh_identity_file=str(key_file), sudo=True, timeout=60
    )
    target = f"{user}@{host}:{port}"
    hint = "the checks run as root through passwordless sudo (NOPASSWD)"
    # Preflight: the login works and sudo needs no password (checks as a user without root would all
    # fail for the wrong reason). Connection errors become one clear VerifyError, not a traceback.
    try:
        try:
            result = backend.run("id -u")
        except Exception as exc:  # paramiko/socket errors of every kind, or a shell sudo would not start
            raise VerifyError(f"{target}: cannot run commands over SSH: {exc}", hint=hint) from exc
        if result.rc != 0 or result.stdout.strip() != "0":
            raise VerifyError(
                f"{target}: `sudo id -u` failed (exit {result.rc}): "
                f"{(result.stderr or result.stdout).strip()[:300]}",
                hint=hint,
            )
    except VerifyError:
        backend.close()
        raise
    return TestinfraProbe(Host(backend))


def _run_goss_binary(
    host: str,
    port: int,
    user: str,
    key_file: Path,
    binary: Path,
    spec_dir: Path,
    vars_: Mapping[str, Any],
    entries: list[Path],
) -> list[list[goss.Result]]:
    """Copy goss, kiln's spec files, the user's (goss_spec_dir, under site/: their gossfile includes are
    relative to their entry) and the vars into the guest; run `goss validate -f json` on each entry, kiln's
    first, then the user's. Returns each run's results."""
    from kiln.vm.ssh import Session

    remote = f"/tmp/kiln-goss-{uuid.uuid4().hex[:8]}"
    runs = [(remote if i == 0 else f"{remote}/site", e.name) for i, e in enumerate(entries)]
    with tempdirs.scratch(Path(tempfile.gettempdir()), "kiln-goss") as tmp:
        vars_path = goss.write_vars(vars_, tmp / "vars.yaml")
        with Session(host, port, user, key_file) as session:
            session.run(["mkdir", "-p", remote])
            session.put(binary, f"{remote}/goss", mode=0o755)
            session.put(vars_path, f"{remote}/vars.yaml")
            files = [(path, f"{remote}/{path.name}") for path in sorted(spec_dir.glob("*.yaml"))]
            if len(entries) > 1:
                theirs = entries[1].parent
                files += [(path, f"{remote}/site/{path.relative_to(theirs).as_posix()}")
                          for path in sorted(theirs.rglob("*")) if path.suffix in (".yaml", ".yml")
                          and path.is_file()]  # fmt: skip
            for folder in sorted({str(Path(dest).parent) for _, dest in files}):
                session.run(["mkdir", "-p", folder])
            outputs = []
            try:
                for path, dest in files:
                    session.put(path, dest, mode=0o644)
                for where, name in runs:
                    validate = f"sudo {remote}/goss -g {name} --vars {remote}/vars.yaml validate -f json"
                    outputs.append(session.run(f"cd {where} && {validate}", check=False, timeout=1800))
            finally:  # nothing of the check stays in the host, however it ended
                session.run(["rm", "-rf", remote], check=False)
    found: list[list[goss.Result]] = [[] for _ in runs]
    for i, (rc, out, err) in enumerate(outputs):
        try:
            doc = json.loads(out)
        except ValueError as exc:
            raise VerifyError(
                f"goss in the guest exited {rc} on {runs[i][1]} without a JSON report:\n{(out + err)[-2000:]}"
            ) from exc
        found[i] = reports.results_from_goss_json(doc)
    return found


def _settled(
    found: list[goss.Result], resources: list[goss.Resource], at_rest: list[goss.Resource]
) -> list[goss.Result]:
    """The goss binary's results of one run of whole files, settled as kiln's evaluator settles them: a
    resource that waits for the disk at rest (`running_only`) is dropped, one kiln skips (passed in the tree,
    a disk-only check on a live boot) is reported skipped. Only this run's own resources count (kiln's and
    the user's may share a type and id), and a result's id may carry goss's `ID: PATH` (or `: NAME`) form."""
    waiting = {(r.type, r.id) for r in resources if any(r is a for a in at_rest)}
    skipped = {(r.type, r.id) for r in resources if r.skip}
    ids = {(r.type, r.id) for r in resources}
    settled = []
    for result in found:
        key = (result.resource_type, result.resource_id)
        if key not in ids:  # goss names a resource whose path or name differs from its key `KEY: PATH`
            key = (result.resource_type, result.resource_id.split(": ", 1)[0])
        if key in waiting:
            continue
        if key in skipped and not result.skipped:
            result = replace(result, successful=True, skipped=True, found=None, err="")
        settled.append(result)
    return settled


def raise_on_failure(results: list[goss.Result], what: str, report_dir: Path | None) -> None:
    bad = reports.failures(results)
    if not bad:
        return
    where = f"; reports in {report_dir}" if report_dir is not None else ""
    raise VerifyError(
        f"{what}: {len(bad)} of {len(results)} goss checks failed{where}\n{reports.failure_table(results)}"
    )


@dataclass(frozen=True)
class Target:
    """What `verify_image` boots: a disk, or a live ISO / netboot set with `disk` as the blank local disk."""

    disk: Path
    live: str | None = None  # None (the disk itself), "iso" or "netboot"
    live_iso: Path | None = None
    netboot_build: Any = None  # the BuildDir whose netboot set `kiln serve` serves
    # the artifact `disk` holds the bytes of, when it is not `disk` itself: the qcow2 that the build's raw
    # disk is being compressed into while the raw one boots (the reports name the artifact and the disk)
    stands_for: Path | None = None


def verify_image(
    target: Target,
    values: Mapping[str, Any],
    workdir: Path,
    report_dir: Path,
    options: checkboot.BootOptions,
    *,
    runtime: Runtime,
    goss_binary: Path | None = None,
    monitor: Monitor | None = None,
    passed_in_tree: Collection[str] = (),
) -> list[goss.Result]:
    """Boot `target` through the check-boot (a throwaway overlay; the artifact is never written) and run
    the final-phase spec (build checks + hygiene) as a one-time user; `passed_in_tree` as check_host.

    A live target boots `live_iso` from a CD (plus the seed as a second CD), or chain-loads
    `netboot_build`'s boot.ipxe from `kiln serve` through QEMU's iPXE ROM (the seed over HTTP). Checks that
    only make sense on a disk (LIVE_SKIPS) are then skipped by name.

    Raises VerifyError (exit 1) naming every failed check, after writing report_dir/report.json,
    report_dir/junit.xml and report_dir/vars-final.yaml. `workdir` holds the overlay, the seed, the
    one-time key and the serial log.
    """
    if target.live not in (None, "iso", "netboot"):
        raise InputError(f"--format {target.live!r}: want disk, iso or netboot")
    spec_dir = goss.spec_dir(runtime.root)
    # Render and validate vars and spec before booting: a broken spec costs no boot.
    spec = goss.load_spec(
        spec_dir / goss.ENTRY["final"],
        goss.render_vars(values, {"phase": "final", **PLACEHOLDER_VARS}, spec_dir=spec_dir),
    )
    if runtime.dry_run:  # nothing is booted, written or checked
        shown = target.live_iso or target.disk
        print(f"would boot {shown} ({target.live or 'disk'}, {options.firmware}) on a throwaway overlay")
        entry = spec_dir / goss.ENTRY["final"]
        print(f"would run the {len(spec.resources)} goss resources of {entry}; reports in {report_dir}")
        return []
    if not target.disk.is_file():
        raise InputError(f"{target.disk}: image not found")
    login = checkboot.make_login(
        workdir,
        user=VERIFY_USER,
        values=values,
        purpose="verify",
        root=runtime.root,
        extra_user_data=VERIFY_CLOUD_CONFIG + (LIVE_CLOUD_CONFIG if target.live else ""),
        write_iso=target.live != "netboot",  # netboot: the seed comes over HTTP (ds=nocloud;s=URL)
    )
    extra = {
        "verify_user": VERIFY_USER,
        "verify_key_marker": login.instance_id,
        "verify_instance_id": login.instance_id,
        "verify_firmware": options.firmware,  # hygiene.yaml: the boot went through it
    }
    mon: Monitor = monitor or Null()
    what = f"{target.live} live boot" if target.live else f"{target.disk.name} on a throwaway overlay"
    if target.stands_for is not None:
        what = (
            f"{target.disk.name} (the disk {target.stands_for.name} is being compressed from) "
            "on a throwaway overlay"
        )
    mon.log("verify", f"booting {what} ({options.firmware}, {options.hardware} hardware)")
    started = time.monotonic()
    server = None
    if target.live == "iso":
        options = replace(options, boot="cdrom", live_iso=target.live_iso)
    elif target.live == "netboot":
        from kiln.vm.serve import Server

        seed_bytes = {k: v.encode() for k, v in login.files.items()}
        server = Server(target.netboot_build, seed=seed_bytes).start()
        options = replace(options, boot="net", bootfile=f"{server.base}/boot.ipxe")
    # cloud-init's outcome is the spec's to judge (hygiene.yaml checks `cloud-init status`)
    options = replace(options, cloud_init=checkboot.CLOUD_INIT_WAIT)
    # the profile's `systemd-analyze blame` takes 6-13 s under TCG: it runs beside the checks (its own
    # session, on the guest's other CPU), not after them
    stopped = threading.Event()
    pool = ThreadPoolExecutor(1, thread_name_prefix="boot-profile")
    try:
        with checkboot.booted(target.disk, workdir / "vm", login, options, runtime) as vm:
            up = time.monotonic() - started
            mon.log("verify", f"guest up after {up:.0f}s; running checks")
            assert login.private_key is not None
            profiling = pool.submit(
                bootprofile.boot_profile, "127.0.0.1", vm.ssh_port, VERIFY_USER, login.private_key,
                report_dir, stopped=stopped,
            )  # fmt: skip
            results = check_host(
                "127.0.0.1",
                vm.ssh_port,
                VERIFY_USER,
                login.private_key,
                values,
                spec_dir=spec_dir,
                root=runtime.root,
                phase="final",
                report_dir=report_dir,
                goss_binary=goss_binary,
                extra_vars=extra,
                meta={
                    "image": str(target.stands_for or target.disk),
                    # the disk booted, by name: a file of the build's work dir, gone once it is published
                    **({"booted": target.disk.name} if target.stands_for is not None else {}),
                    "firmware": options.firmware,
                    "hardware": options.hardware,
                    "format": target.live or "disk",
                    "boot_to_ssh_s": round(up, 1),
                    "skipped_disk_only": sorted(LIVE_SKIPS) if target.live else [],
                },
                skip_ids=LIVE_SKIPS if target.live else (),
                passed_in_tree=passed_in_tree,
            )
            profile = profiling.result()
            if profile:
                mon.log("verify", f"boot profile: {profile}")
    finally:
        # after a failed check or an interrupt QEMU is gone by now: the profile gives up at once
        stopped.set()
        pool.shutdown(wait=True, cancel_futures=True)
        if server is not None:
            server.stop()
        login.forget()
    raise_on_failure(results, str(target.live_iso or target.stands_for or target.disk), report_dir)
    return results


def report_dir(build: BuildDir, fmt: str, firmware: str | None = None, hardware: str | None = None) -> Path:
    """Where `kiln verify --format FMT` of `build` on `firmware` and `hardware` (default: the build's own
    firmware, virtio) writes its reports: the build's goss/ for the boot the build made itself (its disk, on
    its own firmware, virtio hardware); goss/FMT-FIRMWARE/ for another (a live boot, the disk on the other
    firmware), with -vmware on the OVA's hardware. So no later boot writes over the build's own record."""
    firmware, hardware = firmware or build.firmware, hardware or "virtio"
    if fmt == "disk" and firmware == build.firmware and hardware == "virtio":
        return build.path / "goss"
    return build.path / "goss" / (f"{fmt}-{firmware}" + ("" if hardware == "virtio" else f"-{hardware}"))


def verify_build(
    build: BuildDir,
    *,
    workdir: Path | None = None,
    accelerator: str | None = None,
    firmware: str | None = None,
    goss_binary: Path | None = None,
    monitor: Monitor | None = None,
    runtime: Runtime,
    fmt: str = "disk",
    hardware: str | None = None,
    disk: Path | None = None,
) -> list[goss.Result]:
    """`kiln verify BUILD_DIR [--format disk|iso|netboot]` and the build pipeline's verify step:
    verify_image on `build`'s qcow2, or on a live boot of its ISO or netboot set; the reports where
    `report_dir` says. `build` is a finished build dir (BuildDir.open), or the pipeline's own before its
    manifest is written (kiln.build.finalize: BuildDir.of), whose `disk` boots instead of the qcow2 (fmt
    disk): the raw disk the qcow2 is being compressed from, which holds the same bytes.
    Raises VerifyError (a build then fails and publishes nothing) or InputError."""
    from kiln.core import proc

    values: dict[str, Any] = build.values()
    firmware = firmware or build.firmware
    owned = None if workdir is not None else tempdirs.create(Path(tempfile.gettempdir()), "kiln-verify")
    work = owned.path if owned is not None else Path(workdir or "")
    try:  # the temp dir goes also when the input is refused (a missing qcow2 or ISO)
        live_iso: Path | None = None
        reports = report_dir(build, fmt, firmware, hardware)
        if fmt == "disk":
            image = disk or build.qcow2
            if not image.is_file():
                raise InputError(f"{image}: missing; {build.path} has no qcow2 to boot")
        elif fmt in ("iso", "netboot"):
            live_iso = build.path / f"{build.name}.iso" if fmt == "iso" else None
            if live_iso is not None and not live_iso.is_file():
                raise InputError(f"{live_iso}: missing; build with FORMATS='qcow2 ova iso'")
            if not runtime.dry_run:
                work.mkdir(parents=True, exist_ok=True)
            image = work / "empty-local-disk.qcow2"  # a diskless node's blank local disk
            proc.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "8G"], runtime=runtime)
        else:
            raise InputError(f"--format {fmt!r}: want disk, iso or netboot")
        record = treephase.record_path(build.path)
        # a build dir copied without its record, or the VM runner's of an installer or cloud-image target
        # (which keeps none), when the final phase runs the user's goss.yaml (no goss-final.yaml of theirs)
        theirs = user_spec(values, "final", runtime.root)  # None without goss_spec_dir
        if theirs is not None and not record.is_file():
            (monitor or Null()).log(
                "verify",
                f"no {record}: every check of goss_spec_dir's goss.yaml runs on the booted image, where "
                "checks of the image at rest (no host keys, an empty machine-id) cannot pass"
                if theirs.name == goss.ENTRY["build"]
                else f"no {record}: of goss_spec_dir's specs only {theirs.name} runs here; what its "
                "goss.yaml left for the boot is checked only after a build that kept the record",
            )
        if reports == build.path / "goss" and not runtime.dry_run:
            # the build's own record says "verified" (pipeline.up_to_date) only once this boot has passed: a
            # boot that fails before any check, or is stopped, leaves the build unverified, not the last pass
            for name in ("report.json", "junit.xml"):
                (reports / name).unlink(missing_ok=True)
        return verify_image(
            Target(
                image,
                None if fmt == "disk" else fmt,
                live_iso,
                build if fmt == "netboot" else None,
                stands_for=build.qcow2 if disk not in (None, build.qcow2) else None,
            ),  # fmt: skip
            values,
            work,
            reports,
            checkboot.options_for(build, firmware=firmware, accelerator=accelerator, hardware=hardware),
            goss_binary=goss_binary,
            monitor=monitor,
            runtime=runtime,
            passed_in_tree=treephase.passed_in_tree(build.path),
        )
    finally:
        if owned is not None:
            shutil.rmtree(work, ignore_errors=True)
            owned.release()
