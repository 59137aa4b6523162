"""The build pipeline: a chain of content-addressed stages over one workspace (stage table: build.stages).

    result = run_build(cfg)            # cfg: a kiln.config.Config
    result.path                        # packer/output/BUILD_NAME+kube-SEMVER/

Stages (the terminal shows which one runs; everything goes to build.log):
  base        install_method bootstrap: the cached base disk (kiln.build.bootstrap)
  os          a Packer build on a qcow2 overlay of the base: extra_roles_before, node, containerd, cni,
              providers; cached in cache_dir/stages/ID/
  kubernetes  a Packer build on an overlay of the os stage: kubernetes, extra_roles_after, the package
              list, the in-guest goss check, sysprep; cached likewise
  finalize    compressed qcow2 + sha256, OVA + sha256 (verify boots meanwhile), manifest, config.json, publish
              (always runs)

A build resumes from the longest cached prefix and says so. Targets that are not bootstrap targets, and
vmware-iso builds, run os and kubernetes in one Packer build (no parent disk to stack an overlay on).

How a stage runs is separate from what it is (kiln.build.runners); the stage table is kiln.build.stages.

Failure safety: everything happens in OUTPUT_DIR/.NAME.tmp-XXXX; the final directory appears only after
every stage succeeded. On failure or Ctrl-C the temp dir and any half-made stage are removed, the log is
kept in OUTPUT_DIR/logs/ and its path is printed. An unchanged rebuild is a no-op ("up to date").
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln import __version__
from kiln.artifacts import provenance
from kiln.build import bootstrap, cachecheck, chroot, stages
from kiln.build.finalize import stage_finalize
from kiln.build.packer import PackerFlags
from kiln.build.preflight import (
    check_goss,
    check_package_cache,
    check_replaceable_build,
    check_tools,
    check_vmware,
    warn_unfound_roles,
)
from kiln.build.render import Output
from kiln.build.runners import ChrootRunner, PackerRunner
from kiln.build.workspace import SERIAL_LOG, Workspace
from kiln.config import Config
from kiln.core import builddir, digests, inputs, paths, proc, tempdirs
from kiln.core.errors import BuildError, KilnError
from kiln.core.progress import LogFile, Monitor, Multi, Null
from kiln.core.runtime import Runtime
from kiln.goss import reports, treephase

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    path: Path
    name: str
    stages: dict[str, float]  # stage -> wall seconds
    base_cached: bool | None  # None when there is no base stage
    input_hash: str
    up_to_date: bool = False
    reused: dict[str, str] = field(default_factory=dict)  # stage -> cached stage ID it reused

    def __str__(self) -> str:
        return str(self.path)


# --- the stages --------------------------------------------------------------------------------------------


def stage_base(ws: Workspace) -> None:
    if ws.settings.install_method == "cloudimg" and _staged(ws):
        _cloud_base(ws)
        return
    if ws.settings.install_method != "bootstrap":
        ws.monitor.log("base", f"install_method {ws.values['install_method']}: Packer installs the OS itself")
        return
    spec = bootstrap.spec_from_config(ws.cfg, ws.cfg.repo_root)
    if ws.runtime.dry_run:
        entry = ws.cfg.path("cache_dir") / stages.BASE_ROOT / spec.key()
        info, problem = cachecheck.base_check(entry)
        doing = f"build again the damaged ({problem})" if problem else "reuse" if info else "build"
        ws.monitor.log("base", f"would {doing} base disk {spec.key()} ({spec.suite})")
        hit = bootstrap.BaseImage(spec.key(), entry, True, info) if info and not problem else None
        if hit is None:
            ws.remade.add(str(entry / stages.BASE_DISK))
        ws.base = hit or bootstrap.BaseImage(spec.key(), entry, False)
        return
    # held until the build ends: kiln cache prune never deletes the base under a running build's stages
    stages.hold_shared(stages.use_lock(ws.cfg.path("cache_dir"), "base", spec.key()), ws.holds)
    ws.base = bootstrap.ensure_base(
        spec,
        ws.cfg.path("cache_dir"),
        ws.cfg.repo_root,
        log_file=ws.log_file,
        say=lambda t: ws.monitor.log("base", t),
        runtime=ws.runtime,
    )


def _cloud_base(ws: Workspace) -> None:
    """A cloudimg target's base: the cloud image, downloaded once and checked (kiln.build.cloudimg)."""
    from kiln.build import cloudimg

    cache_dir = ws.cfg.path("cache_dir")
    digest = cloudimg.resolve(ws.settings.cloudimg_url, ws.settings.cloudimg_checksum)
    if ws.runtime.dry_run:
        entry = cache_dir / cloudimg.ROOT / digest.key
        info, problem = cachecheck.base_check(entry)
        doing = "reuse" if info else "download and check"
        doing = f"download again the damaged ({problem})" if problem else doing
        ws.monitor.log("base", f"would {doing} cloud image {ws.settings.cloudimg_url} ({digest})")
        hit = cloudimg.CloudBase(digest.key, entry, True, info) if info and not problem else None
        if hit is None:
            ws.remade.add(str(entry / cloudimg.DISK))
        ws.cloud = hit or cloudimg.CloudBase(digest.key, cache_dir / cloudimg.ROOT / digest.key, False, {})
        return
    stages.hold_shared(stages.use_lock(cache_dir, "base", digest.key), ws.holds)
    ws.cloud = cloudimg.ensure(
        ws.values, cache_dir, say=lambda t: ws.monitor.log("base", t),
        progress=lambda done, total: ws.monitor.progress("download", done, total, "bytes"),
        log_file=ws.log_file, runtime=ws.runtime,
    )  # fmt: skip


def _staged(ws: Workspace) -> bool:
    """Stages stacked on a cached base: bootstrap and cloudimg targets on qemu."""
    return ws.builder == "qemu" and ws.settings.install_method in ("bootstrap", "cloudimg")


def stage_cached(
    ws: Workspace, stage: str, parent_disk: Path | None, last: bool, runner: PackerRunner | ChrootRunner
) -> Path:
    """Run `stage` on top of `parent_disk` unless the cache has it; returns the stage's cached disk."""
    cache_dir = ws.cfg.path("cache_dir")
    sid = ws.ids[stage]
    if ws.runtime.dry_run:
        hit, problem = cachecheck.check(cache_dir, sid.id)
        if hit is not None and hit.parent_disk in ws.remade:  # a VM runner's overlay on a disk made again
            problem = problem or f"{hit.parent_disk}: the disk it stands on is made again"
        doing = f"build again the damaged ({problem})" if problem else "reuse" if hit else "build"
        ws.monitor.log(stage, f"would {doing} stage {sid.short}")
        if hit is None or problem:  # what the run would be; a cached stage runs nothing
            ws.remade.add(str(stages.disk(cache_dir, sid.id)))
            runner.run(ws, stage, parent_disk, last)
        return stages.disk(cache_dir, sid.id)
    # held until the build ends, taken before the entry exists: prune never deletes it under this build
    stages.hold_shared(stages.use_lock(cache_dir, stage, sid.id), ws.holds)
    with stages.locked(cache_dir, sid.id):  # a concurrent build of the same stage waits, then reuses it
        hit, problem = cachecheck.check(cache_dir, sid.id)
        if problem:  # kiln made it: removed, with the stages built on its disk
            gone = cachecheck.evict_stage(cache_dir, sid.id)
            ws.monitor.log(stage, f"{stage}: stage {sid.short} in the cache is damaged ({problem}): {gone}; "
                                  "building it again")  # fmt: skip
            hit = None
        if hit is not None:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(hit.created))
            ws.monitor.log(
                stage, f"{stage}: reusing stage {sid.short} (built {when}, {inputs.human(hit.size)})"
            )
            ws.reused[stage] = sid.id
            entry = stages.root(cache_dir) / sid.id
            # an entry stored before records kept digests gets them: the overlays built on it record its own
            sums = {} if hit.digests else digests.entry_digests(entry, stages.RECORD)
            stages.touch(cache_dir, hit, kept=sums)
            return stages.disk(cache_dir, sid.id)
        # the parent disk as its entry keeps it now: an overlay on a disk made again meanwhile is not reused
        parent_digest = stages.recorded_digest(parent_disk) if parent_disk is not None else ""
        base_disk = ws.base.disk if ws.base is not None else None  # what a tree is made for (below)
        base_digest = stages.recorded_digest(base_disk) if base_disk is not None else ""
        out = runner.run(ws, stage, parent_disk, last)
        for disk, digest in ((parent_disk, parent_digest), (base_disk, base_digest)):
            if disk is not None and stages.recorded_digest(disk) != digest:
                raise BuildError(f"{disk}: made again while the {stage} stage ran on it (it was damaged)",
                                 hint="build again: the stage is made on the new disk")  # fmt: skip
        record = stages.Record(
            id=sid.id,
            stage=stage,
            parent=sid.parent,
            target=ws.cfg.target,
            parent_disk=str(parent_disk or ""),
            size=0,
            created=time.time(),
            last_used=time.time(),
            inputs=sid.inputs,
        )
        if out.format == "tree":  # a packed tree has no backing disk, but it is made for its base disk (the
            # tree's GRUB modules go with the base's boot code): it goes with that base (prune, evict) and is
            # not reused on a base made again since (stages.inspect)
            record.parent_disk, record.parent_digest = str(base_disk or ""), base_digest
        elif parent_disk is not None:  # record the parent by absolute path, whatever Packer wrote
            record.parent_digest = parent_digest
            proc.run(
                ["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(parent_disk), str(out.disk)],
                log_file=ws.log_file,
                runtime=ws.runtime,
            )
        # the package list the stage wrote travels with it (a build that reuses the stage needs it)
        kept = _kept_with_stage(ws) if stage == "kubernetes" else {}
        extra = {name: path for name, path in kept.items() if path.is_file()}
        cached = stages.store(cache_dir, sid.id, out.disk, record, extra)
        if out.format == "tree":  # the tree kept for the next reader waits only if the cache kept its file
            ws.handoff = chroot.still_held(ws.handoff, cached)
        ws.monitor.log(stage, f"{stage}: cached as stage {sid.short} ({inputs.human(record.size)})")
        return cached


def _output(path: Path) -> Output:
    return Output(path, "tree" if path.name == stages.TREE else "qcow2", False)


def stage_os(ws: Workspace, runner: PackerRunner | ChrootRunner) -> None:
    """Stacked and cached on the base for bootstrap targets on qemu; otherwise the one Packer run that
    installs the OS and runs every role (the kubernetes stage then has nothing left to do)."""
    if _staged(ws):
        ws.disk = _output(stage_cached(ws, "os", ws.base_disk, False, runner))
        return
    ws.monitor.log("os", f"one Packer build ({ws.builder}): the OS and every role, goss check, sysprep")
    ws.disk = runner.run(ws, "all", ws.base_disk, True)


def stage_kubernetes(ws: Workspace, runner: PackerRunner | ChrootRunner) -> None:
    if not _staged(ws):
        ws.monitor.log("kubernetes", "done within the os stage's Packer build")
        return
    assert ws.disk is not None
    ws.disk = _output(stage_cached(ws, "kubernetes", ws.disk.disk, True, runner))
    _packages_from_record(ws)


PACKAGES_KEPT = "packages.txt"


def _kept_with_stage(ws: Workspace) -> dict[str, Path]:
    """What the kubernetes stage's run writes into the build dir and its cache entry keeps (name there ->
    path here): the package list, and the record of the build phase's checks of the image at rest."""
    return {PACKAGES_KEPT: ws.packages_file, treephase.RECORD: ws.tree_record}


def _packages_from_record(ws: Workspace) -> None:
    """The package list is written by the kubernetes stage's run and stored with the stage; a build that
    reuses the stage takes the stored copies (_kept_with_stage)."""
    if ws.runtime.dry_run:
        return
    entry = stages.root(ws.cfg.path("cache_dir")) / ws.ids["kubernetes"].id
    for name, path in _kept_with_stage(ws).items():
        if (entry / name).is_file() and not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(entry / name, path)
    if not ws.packages_file.is_file():
        raise BuildError(f"{ws.packages_file}: the provision playbook wrote no package list")


# --- the pipeline ------------------------------------------------------------------------------------------


def run_stages(ws: Workspace, verify: bool, publish: Callable[[], None] | None = None) -> None:
    """The stages of the stage table, in its order, the same for a build and a dry run; `publish` runs last,
    inside finalize."""
    runner: PackerRunner | ChrootRunner = (
        ChrootRunner() if ws.settings.provisioner == "chroot" and _staged(ws) else PackerRunner()
    )
    steps: dict[str, Callable[[], None]] = {
        "base": lambda: stage_base(ws),
        "os": lambda: stage_os(ws, runner),
        "kubernetes": lambda: stage_kubernetes(ws, runner),
        "finalize": lambda: stage_finalize(ws, verify, publish),
    }
    for stage in stages.STAGES:
        with ws.stage(stage.name, stage.makes):
            steps[stage.name]()


def input_hash(cfg: Config, runtime: Runtime) -> str:
    """The finished image's input hash: the ID of its finalize stage."""
    return plan_ids(cfg, runtime)["finalize"].id


def base_spec(cfg: Config) -> bootstrap.BaseSpec | None:
    """The bootstrap base disk's inputs, or None for targets whose OS Packer installs."""
    if cfg.settings.install_method != "bootstrap":
        return None
    return bootstrap.spec_from_config(cfg, cfg.repo_root)


def has_base(cfg: Config) -> bool:
    """A cached base under the stages: kiln's bootstrap disk, or a cloudimg target's cloud image (qemu)."""
    method = cfg.settings.install_method
    return method == "bootstrap" or (method == "cloudimg" and cfg.settings.builder == "qemu")


def base_cached(cfg: Config) -> bool:
    if cfg.settings.install_method == "cloudimg":
        from kiln.build import cloudimg

        digest = cloudimg.resolve(cfg.settings.cloudimg_url, cfg.settings.cloudimg_checksum)
        return has_base(cfg) and _usable(cfg.path("cache_dir") / cloudimg.ROOT / digest.key)
    spec = base_spec(cfg)
    return spec is not None and _usable(cfg.path("cache_dir") / stages.BASE_ROOT / spec.key())


def _usable(entry: Path) -> bool:
    """A base disk's entry there and usable, its bytes unchecked (kiln stages reads; a build checks)."""
    info, why = stages.read_base(entry)
    return info is not None and why is None


def plan_ids(cfg: Config, runtime: Runtime) -> dict[str, stages.StageId]:
    """Every stage's ID for `cfg`, the user's roles found as this run's Ansible finds them."""
    spec = base_spec(cfg)
    base_key = spec.key() if spec is not None else ""
    if cfg.settings.install_method == "cloudimg" and cfg.settings.builder == "qemu":
        from kiln.build import cloudimg

        # the image's digest names the base (a checksum file is read here, once per run): a new image at
        # the same URL is a new os stage
        base_key = cloudimg.resolve(cfg.settings.cloudimg_url, cfg.settings.cloudimg_checksum).key
    return stages.stage_ids(cfg.plain(), cfg.repo_root, cfg.work_root, runtime.roles_path, base_key)


def run_build(
    cfg: Config,
    *,
    only: str | None = None,
    monitor: Monitor | None = None,
    runtime: Runtime,
    verify: bool = True,
    force: bool = False,
    packer_flags: PackerFlags | None = None,
    signing_key: Path | None = None,
) -> BuildResult:
    """Build the image described by `cfg` and publish it into its build directory.

    When the build directory already holds a verified build with the same input hash, nothing runs and
    nothing is touched (`up_to_date`), unless `force`. With a dry-run runtime the stages and the commands
    they would run are printed and nothing is written.
    """
    from kiln.vm.qemu import pick_accelerator

    rt = runtime
    cfg.check_root(rt.root)
    mon: Monitor = monitor or Null()
    flags = packer_flags or PackerFlags()
    values = cfg.values
    builder = only or cfg.settings.builder
    name = cfg.artifact_name
    final = cfg.path("output_dir") / name
    ids = plan_ids(cfg, rt)
    digest = ids["finalize"].id
    key = provenance.load_private_key(signing_key) if signing_key is not None else None  # exit 2 up front
    collect_stale(cfg, mon, rt)
    warn_unfound_roles(cfg, mon, rt)
    if not force and up_to_date(final, digest):
        mon.log("build", f"{final} is up to date (input hash {digest[:12]}); --force rebuilds")
        return BuildResult(final, name, {}, None, digest, up_to_date=True)
    check_replaceable_build(final)
    if builder == "vmware-iso":
        check_vmware(cfg, rt)
    check_tools(values, rt)
    check_goss(cfg, rt)
    if not rt.dry_run:
        check_package_cache(cfg)
    if cfg.settings.provisioner == "chroot" and not rt.dry_run:
        chroot.check_host(rt)
    setting = cfg.settings.accelerator
    if rt.dry_run:  # no probe VM under --dry-run: auto shows as tcg, as `kiln render` does
        accelerator = "tcg" if setting == "auto" else setting
        return _dry_run(cfg, rt, mon, name, final, builder, accelerator, ids, verify, flags)
    accelerator = pick_accelerator(setting, rt)

    out_root = proc.ensure_dir(cfg.path("output_dir"))
    owned = tempdirs.create(out_root, name)
    temp = owned.path
    log_path = temp / builddir.LOG
    # append mode: kiln.build.packer.build appends Packer's output through its own handle to the same file
    log_file = open(log_path, "a", buffering=1)  # noqa: SIM115 - closed in finally
    ws = Workspace(
        cfg, rt, Multi(mon, LogFile(log_file)), name, temp, temp / "work", log_path, log_file, accelerator,
        builder, ids, packer_flags=flags,
    )  # fmt: skip
    ws.epoch = cfg.settings.source_date_epoch or paths.source_date_epoch(rt.root)
    ws.stage_epoch = cfg.settings.source_date_epoch or stages.STAGE_SOURCE_DATE
    ws.signing_key = key
    try:
        ws.monitor.log(
            "build", f"kiln {__version__}: building {name} ({values['install_method']}, {accelerator})"
        )
        if rt.withheld:
            ws.monitor.log(
                "build",
                f"not passed on to Ansible from your environment: {', '.join(rt.withheld)} "
                "(kiln's ansible/ansible.cfg sets how it provisions; docs/building.md)",
            )
        ws.monitor.log("build", f"input hash {digest}", show=False)
        ws.monitor.log("build", "config: " + json.dumps(cfg.recorded(), sort_keys=True), show=False)
        ws.work.mkdir(mode=0o700)

        def publish() -> None:
            temp.chmod(0o755)  # mkdtemp made it private; the published build is readable like its files
            inputs.mark(temp, f"kiln build of {name}")
            check_replaceable_build(final)  # again: the build took minutes, someone may have put a dir there

            def published() -> None:
                ws.published = True  # in place: an interrupt from here on leaves it published, not failed

            tempdirs.put_in_place(temp, final, published)

        run_stages(ws, verify, publish)
        ws.monitor.log("build", "stages: " + json.dumps(ws.timings), show=False)
        ws.monitor.log(
            "build",
            f"built {final} in {sum(v for k, v in ws.timings.items() if k != 'formats'):.0f}s "
            + _stage_summary(ws.timings),
        )
        base = ws.base or ws.cloud
        base_cached = base.cached if base is not None else None
        return BuildResult(final, name, dict(ws.timings), base_cached, digest, reused=dict(ws.reused))
    except BaseException as exc:
        if ws.published:  # interrupted after the build was published (while the older one was being removed)
            mon.log("build", f"built {final}; stopped before the older build was all removed (the next run "
                    "collects what is left of it)")  # fmt: skip
            raise
        try:
            log_file.write(f"kiln: build failed: {exc!r}\n")
            log_file.flush()
        except OSError:
            pass  # a full disk: the error itself says so

        kept = _keep_log(log_path, out_root, name, move=not flags.keeps_output)
        if kept is not None:
            mon.log("build", f"build failed; the whole log is kept at {kept}")
            serial = kept.with_name(kept.stem + ".serial.log")
            where = f"build log: {kept}" + (f"; the VM's console: {serial}" if serial.is_file() else "")
            if isinstance(exc, KilnError):
                exc.hint = f"{exc.hint}; {where}" if exc.hint else where
        raise
    finally:
        ws.holds.close()
        log_file.close()
        if not ws.published and ws.packer_flags.keeps_output:
            (temp / tempdirs.KEPT).touch()  # an empty file: it needs no data block on a full disk
            mon.log(
                "build", f"-on-error={ws.packer_flags.on_error}: the failed build's work is kept in {temp}"
            )
        else:  # a failed build, or after a swap the older build that was at `final`
            shutil.rmtree(temp, ignore_errors=True)
        owned.release()


def collect_stale(cfg: Config, mon: Monitor, rt: Runtime) -> list[tempdirs.Stale]:
    """Remove what runs that died (kill -9, OOM) left in the output dir, the stage cache and the temp dir,
    and say so in one line; --dry-run says what it would remove."""
    cache = cfg.path("cache_dir")
    stale: list[tempdirs.Stale] = []
    for parent, prefix in (
        (cfg.path("output_dir"), ""),
        (stages.root(cache), ""),
        (cache / stages.BASE_ROOT, ""),
        (Path(tempfile.gettempdir()), "kiln-"),
    ):
        stale += tempdirs.collect(parent, prefix=prefix, dry_run=rt.dry_run)
    if stale:
        line = tempdirs.describe(stale)
        mon.log("build", f"would have {line}" if rt.dry_run else line)
    return stale


def _dry_run(
    cfg: Config,
    rt: Runtime,
    mon: Monitor,
    name: str,
    final: Path,
    builder: str,
    accelerator: str,
    ids: dict[str, stages.StageId],
    verify: bool,
    flags: PackerFlags,
) -> BuildResult:
    """Print the stages, their IDs and the commands they would run; write nothing anywhere."""
    with tempdirs.scratch(Path(tempfile.gettempdir()), "kiln-dry-run") as temp:
        with open(os.devnull, "w") as null:
            ws = Workspace(
                cfg, rt, mon, name, temp, temp / "work", temp / builddir.LOG, null, accelerator, builder, ids,
                packer_flags=flags,
            )  # fmt: skip
            ws.work.mkdir()
            for stage, sid in ids.items():
                mon.log("plan", f"{stage}: stage ID {sid.short}")
            run_stages(ws, verify)
    mon.log("build", f"dry run: would publish {final}")
    return BuildResult(final, name, dict(ws.timings), None, ids["finalize"].id)


def up_to_date(final: Path, digest: str) -> bool:
    """`final` is a kiln build dir, verified (its own boot's last report passed), whose manifest records
    `digest`, with its artifacts there. Reads only; any doubt means "not up to date"."""
    if not (final / inputs.MARKER).is_file() or not reports.passed(final / "goss" / "report.json"):
        return False
    try:
        build = builddir.BuildDir.open(final)
    except KilnError:
        return False
    if build.custom_data.get("input_hash") != digest:
        return False
    listed = [f.get("name") for f in _manifest_files(final)]
    return bool(listed) and all(isinstance(n, str) and (final / n).is_file() for n in listed)


def _manifest_files(final: Path) -> list[dict[str, Any]]:
    try:
        manifest = inputs.read_json_object(final / builddir.MANIFEST, "Packer manifest")
        files = manifest["builds"][-1]["files"]
    except (KilnError, KeyError, IndexError, TypeError):
        return []
    return [f for f in files if isinstance(f, dict)] if isinstance(files, list) else []


def _stage_summary(timings: Mapping[str, float]) -> str:
    return "(" + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + ")"


def _keep_log(log_path: Path, out_root: Path, name: str, *, move: bool) -> Path | None:
    """The failed build's log (and serial log, goss reports) into OUTPUT/logs/. `move`: renamed out of the
    temp dir that is about to go, which needs no space (the build may have failed on a full disk)."""
    if not log_path.is_file():
        return None
    logs = out_root / "logs"
    stamp = time.strftime("%Y%m%dT%H%M%S")
    kept = logs / f"{name}-{stamp}.log"
    keep: Callable[[Path, Path], object] = os.replace if move else shutil.copy2
    try:
        logs.mkdir(exist_ok=True)
        keep(log_path, kept)
        serial = log_path.parent / SERIAL_LOG
        if serial.is_file():
            keep(serial, logs / f"{name}-{stamp}.serial.log")
        reports = log_path.parent / "goss"
        if reports.is_dir():  # a failed verify's reports (or the tree's record alone) outlive the temp dir
            if move:
                os.replace(reports, logs / f"{name}-{stamp}.goss")
            else:
                shutil.copytree(reports, logs / f"{name}-{stamp}.goss")
    except OSError as exc:
        log.warning("%s: could not keep the failed build's log: %s", logs, exc.strerror or exc)
        return kept if kept.is_file() else None
    return kept
