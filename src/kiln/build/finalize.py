"""The finalize stage: the finished disk (made offline from the chroot runner's tree, or the last stage's
disk), the compressed qcow2, the live formats, verify (the one boot) beside the compression, the OVA
written from the qcow2, the manifest, the SBOM and publish. A pre-flight check says when the output
filesystem is too small, before anything is written (kiln.core.space)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from kiln.artifacts import filelist, kernel, ova
from kiln.build import bootloader, chroot, stages
from kiln.build.render import Output
from kiln.build.workspace import SERIAL_LOG, Workspace
from kiln.core import builddir, digests, paths, proc, space, tempdirs
from kiln.core.errors import BuildError, VerifyError


def stage_finalize(ws: Workspace, verify: bool, publish: Callable[[], None] | None = None) -> None:
    """Post-process the disk the last Packer run wrote (as render said where and in which format)."""
    if ws.runtime.dry_run:
        ws.monitor.log(
            "finalize", "would write NAME.qcow2, NAME.ova, sha256 sidecars, manifest; verify; publish"
        )
        return
    if ws.disk is None:
        raise BuildError(f"{ws.temp}: no disk to finalize")
    ws.needs["finalize"] = finalize_needs(ws, ws.disk)
    chroot.check_space(ws.temp, ws.needs["finalize"], ws.handoff, "finalize")  # no hand-off: space.check
    tree = None  # the chroot runner's tree, kept after the disk is made when live formats are made from it
    try:
        if ws.disk.format == "tree":
            ws.disk, tree = disk_from_tree(ws, ws.disk.disk)
        finalize_disk(ws, ws.disk, tree, verify)
    finally:
        if tree is not None:
            shutil.rmtree(tree, ignore_errors=True)
    if publish is not None:
        publish()


OUTPUT_RATIO = 0.45  # a compressed artifact (qcow2, OVA, squashfs, ISO, ...) is about 0.45 x the root


def finalize_needs(ws: Workspace, disk: Output) -> int:
    """What finalize writes at its peak, estimated: from a tree, the unpacked tree and the raw disk made
    from it; then the compressed qcow2, the OVA and each live format."""
    if disk.format == "tree":
        root = int(disk.disk.stat().st_size * chroot.TREE_RATIO)
        making = 2 * root
    else:  # a stage disk (its backing chain in the cache) or Packer's output
        root = disk.disk.stat().st_blocks * 512 if disk.disk.exists() else 0
        if ws.base_disk is not None and ws.base_disk.exists():
            root += ws.base_disk.stat().st_blocks * 512
        making = 0
    from kiln.artifacts import formats

    live = len([f for f in ws.settings.formats if f not in ("qcow2", "ova")]) if formats.live_wanted(
        list(ws.settings.formats)) else 0  # fmt: skip
    # the qcow2 and the OVA, whose VMDK and the tar made of it are there at once, and each live format
    return max(making, root) + int(root * OUTPUT_RATIO * (3 + live))


def disk_from_tree(ws: Workspace, tar: Path) -> tuple[Output, Path | None]:
    """The chroot runner's last tree made into the finished disk, offline (kiln.build.chroot). The tree
    itself is returned too when live formats are wanted, which are made from it (kiln.artifacts.formats),
    else None: it is removed at once."""
    from kiln.artifacts import formats

    if ws.base is None:
        raise BuildError(f"{tar}: a tree needs the base disk to become a disk")
    work = ws.work / "finalize"
    work.mkdir(mode=0o700, exist_ok=True)
    tree, raw = work / "tree", work / f"{ws.name}.raw"
    marks = [time.monotonic()]  # where the time goes: unpacking, the file list, the file system
    handoff, ws.handoff = ws.handoff, None
    keep = False
    try:
        taken = chroot.take_or_unpack(handoff, tar, tree, log_file=ws.log_file, runtime=ws.runtime)
        if ws.base.root_uuid:  # (none: chroot.disk_from_tree says so) the stages left update-grub to here
            bootloader.write_cfg(tree, ws.base.root_uuid, kernel.newest(tree), log_file=ws.log_file,
                                 runtime=ws.runtime)  # fmt: skip
        marks.append(time.monotonic())
        filelist.write(tree, ws.temp / f"{ws.name}{filelist.SUFFIX}")
        marks.append(time.monotonic())
        chroot.disk_from_tree(ws.base, tree, raw, epoch=ws.epoch, seed=ws.ids["kubernetes"].id,
                              log_file=ws.log_file, runtime=ws.runtime)  # fmt: skip
        marks.append(time.monotonic())
        keep = formats.live_wanted(list(ws.settings.formats))
    finally:
        if not keep:
            shutil.rmtree(tree, ignore_errors=True)
    unpack, listing, filesystem = (b - a for a, b in itertools.pairwise(marks))
    ws.monitor.log(
        "finalize",
        f"disk made from the tree in {time.monotonic() - marks[0]:.0f}s (no boot: "
        f"{'taken from the kubernetes stage' if taken else 'unpacked'} {unpack:.0f}s, "
        f"file list {listing:.0f}s, file system {filesystem:.0f}s)",
    )
    return Output(raw, "raw", False), tree if keep else None


def finalize_disk(ws: Workspace, disk: Output, tree: Path | None = None, verify: bool = False) -> None:
    """NAME.qcow2 (compressed, standalone), NAME.ova, their .sha256, the live formats, the SBOM, the
    provenance, packer-manifest.json, config.json; with `verify`, the one boot (kiln.goss.verify), before
    any of the last five is written. The live formats are made from `tree` (the root the disk was made
    from, which they change) or from the disk while the qcow2 is compressed; then the boot runs while it
    still is, on the uncompressed disk it is made from (raw, or a stage's qcow2 overlay), or on the qcow2
    when Packer compressed it. A failed or stopped boot ends the compression with it. The OVA's VMDK is
    written from the qcow2's compressed clusters (kiln.artifacts.vmdk), not compressed a second time, in a
    thread beside the boot once the qcow2 is there."""
    from kiln.artifacts import sbom

    qcow2 = ws.temp / f"{ws.name}.qcow2"
    ova_path = ws.temp / f"{ws.name}.ova"

    def write_ova(say: Callable[[str], None], stop: Callable[[], bool] | None = None) -> None:
        ova.build_ova(qcow2, ova_path, ws.name, ws.cfg.settings, input_hash=ws.ids["finalize"].id,
                      epoch=ws.epoch, log_file=ws.log_file, say=say, stop=stop,
                      runtime=ws.runtime)  # fmt: skip

    def say(line: str) -> None:
        ws.monitor.log("finalize", line)

    said: list[str] = []  # the OVA thread's line, said in order after the boot's
    if (
        disk.format == "qcow2"
        and disk.compressed
        and disk.disk.parent != stages.root(ws.cfg.path("cache_dir"))
    ):
        os.rename(disk.disk, qcow2)  # Packer's disk_compression already did it
        with _Beside() as beside:  # the OVA from the qcow2 at once, beside the live formats and the boot
            beside.start(lambda: write_ova(said.append, beside.stopping.is_set))
            live = live_formats(ws, qcow2, tree, "the OVA written")
            if verify:
                try:
                    verify_disk(ws, qcow2)
                except VerifyError:  # an OVA that failed meanwhile (a full disk) is the cause to show
                    beside.check()
                    raise
            beside.result()
    else:  # a stage overlay (flattened through its backing chain), a disk made from a tree, a VMware VMDK
        # the compressed qcow2 in the background (in order, on one core: `-W`, out-of-order writes, would
        # place its clusters differently on every run), the live formats meanwhile, which read the tree or
        # the same disk, and the boot beside it unless the disk is a VMDK (its qcow2 boots afterwards); the
        # compression yields the CPU to the boot (the build waits for the boot; it takes the cycles the boot
        # leaves), and only then (with no boot to give way to, a busy host would starve it). Once the qcow2
        # is done, the OVA is written from it in a thread, still beside the boot.
        boots_beside = verify and disk.format in ("raw", "qcow2")
        argv = ["qemu-img", "convert", "-c", "-O", "qcow2", str(disk.disk), str(qcow2)]
        with (
            _Beside() as beside,  # left last: the compression it waits for is stopped first
            proc.Background(
                argv, log_file=ws.log_file, yielding=boots_beside, runtime=ws.runtime
            ) as converting,
        ):
            live = live_formats(ws, disk.disk, tree, "the qcow2 compressed")
            if tree is not None:  # its room for the OVA (stage_finalize removes it on failure)
                shutil.rmtree(tree, ignore_errors=True)
            if boots_beside:

                def ova_when_the_qcow2_is_done() -> None:
                    converting.wait()
                    write_ova(said.append, beside.stopping.is_set)

                beside.start(ova_when_the_qcow2_is_done)
                # a compression or an OVA that failed meanwhile (a full disk) is the cause to show
                try:
                    verify_disk(ws, disk.disk)
                except VerifyError:
                    converting.check()
                    beside.check()
                    raise
            converting.wait()
            beside.result()
        if not boots_beside:
            write_ova(say)
            if verify:
                verify_disk(ws, qcow2)
    for line in said:
        say(line)
    builddir.write_sha256(qcow2)
    builddir.write_sha256(ova_path)
    spdx = sbom.write(ws.temp / f"{ws.name}.spdx.json", ws.name, ws.cfg.settings, ws.packages_file,
                      created=ws.epoch or None, seed=ws.ids["kubernetes"].id)  # fmt: skip
    files = [qcow2, ova_path, spdx] + ([ws.packages_file] if ws.packages_file.is_file() else [])
    listing = ws.temp / f"{ws.name}{filelist.SUFFIX}"
    files += [listing] if listing.is_file() else []
    files += live
    files.append(write_provenance(ws, files))
    data = builddir.custom_data(ws.values, ws.ids["finalize"].id)
    builddir.write_manifest(ws.temp / builddir.MANIFEST, ws.name, files, data, ws.builder)
    (ws.temp / builddir.CONFIG).write_text(json.dumps(ws.cfg.to_json(), indent=2, sort_keys=True) + "\n")
    shutil.rmtree(ws.work, ignore_errors=True)  # keys, seeds and vars go before anything can copy them
    (ws.temp / SERIAL_LOG).unlink(missing_ok=True)
    builddir.BuildDir.open(ws.temp)  # the contract other commands read


class _Beside:
    """One piece of finalize's work in a thread beside the boot (the OVA, once the qcow2 is done).
    `result()` waits for it and raises its error; leaving the block by an exception sets `stopping` (the
    work stops at its next step) and waits for it, its error then dropped for the one leaving."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, work: Callable[[], None]) -> None:
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # raised in the main thread, by result()
                self.error = exc

        self.thread = threading.Thread(target=run, name="kiln-beside-the-boot", daemon=True)
        self.thread.start()

    def result(self) -> None:
        if self.thread is not None:
            self.thread.join()
        self.check()

    def check(self) -> None:
        """Raise the work's error now if it has already failed; else return (it may still run)."""
        if self.error is not None:
            raise self.error

    def __enter__(self) -> _Beside:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        if self.thread is not None:  # a second Ctrl-C here leaves it to end with kiln (a daemon thread)
            self.thread.join()


def verify_disk(ws: Workspace, disk: Path) -> None:
    """The build's one boot (kiln.goss.verify.verify_build) of `disk`: its qcow2, or the disk the qcow2 is
    compressed from. The build's record is the one its manifest and config.json will hold."""
    from kiln.goss.verify import verify_build

    data = builddir.custom_data(ws.values, ws.ids["finalize"].id)
    build = builddir.BuildDir.of(ws.temp, ws.name, data, ws.cfg.to_json())
    started = time.monotonic()
    results = verify_build(
        build, disk=disk, monitor=ws.monitor, accelerator=ws.accelerator, runtime=ws.runtime
    )
    took = time.monotonic() - started
    ws.monitor.log("finalize", f"verify: {len(results)} checks passed in {took:.0f}s; reports in goss/")


def live_formats(ws: Workspace, disk: Path, tree: Path | None, meanwhile: str) -> list[Path]:
    """The live formats the build asks for (none: []), from `tree` when there is one, else from `disk`;
    `meanwhile`, what runs beside them, for the log."""
    from kiln.artifacts import formats

    wanted = list(ws.settings.formats)
    if not formats.live_wanted(wanted):
        return []
    started = time.monotonic()
    base = live_base(ws) if "overlay" in wanted else None
    made = formats.produce(
        disk, ws.temp, ws.name, wanted, ws.packages_file, ws.cfg.repo_root, ws.work / "formats",
        kernel_params=ws.settings.extra_kernel_boot_params, epoch=ws.epoch, seed=ws.ids["kubernetes"].id,
        runtime=ws.runtime, log_file=ws.log_file, say=lambda t: ws.monitor.log("finalize", t), base=base,
        tree=tree,
    )  # fmt: skip
    ws.timings["formats"] = round(time.monotonic() - started, 1)
    source = "the tree" if tree is not None else "the disk"
    ws.monitor.log(
        "finalize",
        f"live formats {', '.join(wanted)} made from {source} in {ws.timings['formats']:.0f}s "
        f"({meanwhile} meanwhile)",
    )
    return made


LIVE_BASE_VERSION = "2"  # how a base squashfs is made: a change here makes new bases (2: -no-sparse)


def live_base(ws: Workspace) -> Path:
    """The base squashfs of format overlay: the os stage's root tree, generalized by the same sysprep
    playbook as the finished image (no host keys, machine-id, apt lists or logs), its fstab as the live
    root has it, its times the stage's date. Made once per os stage and sysprep roles, and kept in the os
    stage's cache entry (its size counted in the entry's record), so every Kubernetes version built on that
    os stage, at any commit, shares one file; kiln cache prune removes it with the entry."""
    from kiln.artifacts import formats
    from kiln.build import runners

    cache = ws.cfg.path("cache_dir")
    os_id = ws.ids["os"].id
    tar = stages.disk(cache, os_id)
    if tar.name != chroot.TREE or not tar.is_file():
        raise BuildError(f"{tar.parent}: format overlay: the os stage has no root tree (provisioner chroot)")
    roles = stages.files_digest(ws.runtime.root / "ansible", ("sysprep.yml", "roles/sysprep/**/*"))
    # the stage's own date, not the commit's: the same base for every commit that reuses the os stage
    key = hashlib.sha256(f"{LIVE_BASE_VERSION}:{os_id}:{ws.stage_epoch}:{roles}".encode()).hexdigest()[:16]
    dest = tar.parent / f"live-base-{key}.squashfs"
    with stages.locked(cache, f"{os_id}-live-base"):  # not the stage's own lock: builds reusing it go on
        if dest.is_file():
            ws.monitor.log("finalize", f"overlay: the base {dest} is made already (os stage {os_id[:12]})")
            record = stages.lookup(cache, os_id)
            if record is not None and dest.name not in record.digests:  # made before records kept digests
                stages.touch(cache, record, kept=digests.file_digests(dest.parent, [dest.name]))
            return dest
        started = time.monotonic()
        work = ws.work / "live-base"
        work.mkdir(mode=0o700)
        space.check(work, chroot.stage_needs(tar, None), "the overlay's base")
        tree = work / "tree"
        # written in a temp dir beside the entries (the next build collects it if this one is killed), then
        # renamed into the entry
        try:
            with tempdirs.scratch(stages.root(cache), "live-base") as scratch:
                part = scratch / dest.name
                chroot.unpack(tar, tree, log_file=ws.log_file, runtime=ws.runtime)
                runners.run_in_chroot(ws, "finalize", tree, work, ws.runtime.root / "ansible" / "sysprep.yml")
                formats.live_fstab(tree)
                chroot.clamp_times(tree, ws.stage_epoch)
                formats.make_squashfs(tree, part, ws.runtime, ws.log_file, ws.stage_epoch)
                os.rename(part, dest)
            record = stages.lookup(cache, os_id)
            if record is not None:  # kiln cache prune --max-size counts it with the entry; a build checks it
                kept = digests.file_digests(dest.parent, [dest.name])
                stages.touch(cache, record, size=dest.stat().st_size, kept=kept)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    ws.monitor.log(
        "finalize",
        f"overlay: base squashfs made from the os stage's tree in {time.monotonic() - started:.0f}s "
        f"({dest.stat().st_size / 1e6:.0f} MB)",
    )
    return dest


def _ci_run(env: Mapping[str, str]) -> dict[str, str]:
    """The CI run this build is part of, from the variables GitHub Actions, Cloud Build and GitLab set."""
    if env.get("GITHUB_RUN_ID"):
        server, repo = env.get("GITHUB_SERVER_URL", "https://github.com"), env.get("GITHUB_REPOSITORY", "")
        return {"run": env["GITHUB_RUN_ID"], "url": f"{server}/{repo}/actions/runs/{env['GITHUB_RUN_ID']}"}
    if env.get("CI_JOB_URL"):
        return {"run": env.get("CI_JOB_ID", ""), "url": env["CI_JOB_URL"]}
    if env.get("BUILD_ID") and env.get("PROJECT_ID"):
        return {
            "run": env["BUILD_ID"],
            "url": f"https://console.cloud.google.com/cloud-build/builds/{env['BUILD_ID']}",
        }
    return {}


def write_provenance(ws: Workspace, files: list[Path]) -> Path:
    """NAME.intoto.jsonl over every artifact in `files`, signed when the build has a signing key."""
    from kiln.artifacts import compare, provenance

    runner = (
        ws.settings.provisioner
        if ws.builder == "qemu" and ws.settings.install_method == "bootstrap"
        else "vm"
    )
    pkgs = compare.read_packages(ws.packages_file) if ws.packages_file.is_file() else {}
    stmt = provenance.statement(
        ws.temp,
        files, ws.cfg.recorded(), pkgs, target=ws.cfg.target, runner=runner, commit=paths.commit(),
        input_hash=ws.ids["finalize"].id, ci=_ci_run(ws.runtime.env), started=ws.started,
        finished=time.time(),
    )  # fmt: skip
    out = provenance.write(ws.temp / f"{ws.name}{provenance.SUFFIX}", stmt, ws.signing_key)
    ws.monitor.log(
        "finalize",
        f"provenance: {out.name} ({len(files)} subjects), "
        + ("signed" if ws.signing_key is not None else "UNSIGNED: no --signing-key / KILN_SIGNING_KEY"),
    )
    return out
