"""How a stage runs, separate from what it is. `PackerRunner` boots the parent disk in QEMU under Packer and
runs the stage's roles over SSH, with this build's own one-time login (kiln.vm.checkboot) and a new
cloud-init instance-id, so a cached stage never carries another build's credentials forward. `ChrootRunner`
(provisioner chroot, bootstrap targets) runs the same roles against the stage's root tree, booting nothing."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from kiln.build import bootloader, chroot, packer, render
from kiln.build.render import BuildContext, Output
from kiln.build.workspace import SERIAL_LOG, Workspace
from kiln.core import proc
from kiln.core.errors import BuildError

FINALIZE_COMMAND = "sudo /usr/local/sbin/kiln-finalize"  # written by the sysprep role; Packer's shutdown
STAGE_SHUTDOWN = "sudo shutdown -P now"  # the os stage ends without sysprep


class PackerRunner:
    """Runs a stage as a Packer build in a booted VM: the parent disk (if any) through a qcow2 overlay,
    this build's fresh key and seed, the stage's roles (`kiln_stage`), and for the last stage the in-guest
    goss check and sysprep. Returns the disk Packer wrote. (A chroot runner for bootstrap targets would
    implement the same `run`.)"""

    def run(self, ws: Workspace, stage: str, parent: Path | None, last: bool) -> Output:
        from kiln.vm import checkboot
        from kiln.vm.qemu import free_port

        values = ws.values
        repo = ws.runtime.root
        sdir = ws.work / stage
        sdir.mkdir(mode=0o700)
        # the one-time login Packer uses, from the one user-data generator (kiln.vm.checkboot)
        login = checkboot.make_login(
            sdir, user=ws.settings.ssh_username, values=values, purpose="build", root=ws.runtime.root
        )
        assert login.keys is not None and login.seed is not None
        keys, seed = login.keys, login.seed
        staged = parent is not None
        # a bootstrap target's disk has kiln's own layout (its root the last partition): after sysprep and
        # shutdown it is checked at rest as the chroot runner's tree is (its root mounted: as root, as the
        # base is built), and the build VM, before sysprep, checks only what needs a running system
        at_rest = last and ws.base is not None and os.geteuid() == 0
        context = BuildContext(
            ssh_private_key_file=keys.private_key,
            ssh_public_key=keys.public_line,
            password_hash=render.random_password_hash(ws.runtime)
            if ws.settings.install_method == "installer"
            else "",
            ssh_port=free_port(),
            output_dir=sdir / "packer-output",
            manifest_path=sdir / "packer-manifest.json",
            accelerator=ws.accelerator,
            base_disk=parent,
            base_disk_checksum="none",
            seed_iso=seed,
            playbook=repo / "ansible" / "playbook.yml",
            sysprep_playbook=repo / "ansible" / "sysprep.yml",
            shutdown_command=FINALIZE_COMMAND if last else STAGE_SHUTDOWN,
            extra_vars={
                "kiln_packages_file": str(ws.packages_file),
                "kiln_host_tmp": str(ws.host_tmp),
                "kiln_stage": stage,
            },
            ansible_config=repo / "ansible" / "ansible.cfg",
            serial_log=ws.temp / SERIAL_LOG,
            kiln_command=[sys.executable, "-m", "kiln"],
            goss_check=last,
            goss_running_only=at_rest,
            sysprep=last,
            use_backing_file=staged,
            compress=not staged,
        )
        rendered = render.render(ws.cfg, context, sdir / "packer", packer.version(ws.runtime), ws.runtime)
        ws.monitor.log(stage, f"rendered template: {rendered.template}", show=False)
        shims = str(repo / "packer" / "shims")  # qemu-img -F for Packer 1.6.6's overlays (see the shim)
        runtime = replace(ws.runtime, env={**ws.runtime.env, "PATH": f"{shims}{os.pathsep}{ws.runtime.path}"})
        try:
            packer.build(
                rendered.dir,
                ws.log_path,
                only=[ws.builder],
                on_stage=lambda line: ws.monitor.log(stage, line),
                flags=ws.packer_flags,
                runtime=runtime,
            )
        except BuildError as err:
            if "Timeout waiting for SSH" not in err.message:
                raise
            what = "the cloud image" if ws.settings.install_method == "cloudimg" else "the VM"
            raise BuildError(
                f"{stage}: {what} never answered SSH within ssh_timeout ({ws.settings.ssh_timeout}): "
                "a disk without cloud-init (or without an SSH server) never takes the build's key from the "
                "cidata seed",
                hint="the VM's console shows how far it got (the serial log, kept beside the build log)",
            ) from err
        out = rendered.outputs[ws.builder]
        if not out.disk.is_file() and not ws.runtime.dry_run:
            raise BuildError(f"{out.disk.parent}: Packer finished but wrote no {out.disk.name}")
        login.forget()  # the stage's key goes as soon as the stage ends
        if at_rest and not ws.runtime.dry_run:  # read through the backing path Packer wrote (not rebased yet)
            _check_at_rest(ws, stage, out.disk)
        return out


class ChrootRunner:
    """Runs a stage's roles at native speed against the stage's root tree, through Ansible's chroot
    connection (kiln.build.chroot): the parent is the base disk (its root filesystem is copied out) or the
    previous stage's packed tree; the result is this stage's packed tree (TREE). Nothing boots: the finished
    disk is made offline in finalize and booted once there, for goss and the hygiene checks."""

    def run(self, ws: Workspace, stage: str, parent: Path | None, last: bool) -> Output:
        repo = ws.runtime.root
        sdir = ws.work / stage
        sdir.mkdir(mode=0o700)
        out = sdir / chroot.TREE
        playbooks = [repo / "ansible" / "playbook.yml"] + ([repo / "ansible" / "sysprep.yml"] if last else [])
        if ws.runtime.dry_run:
            ws.monitor.log(
                stage, f"would provision the {stage} tree in a chroot (Ansible {chroot.CONNECTION})"
            )
            for playbook in playbooks:  # as proc.run says it under --dry-run
                argv = chroot.playbook_argv(sdir / "tree", sdir / "ansible-vars.json", playbook)
                print(f"would run: {proc.quote(argv)}")
            return Output(out, "tree", False)
        tree = sdir / "tree"
        started = time.monotonic()
        ws.needs[stage] = chroot.stage_needs(parent, ws.base)
        chroot.check_space(sdir, ws.needs[stage], ws.handoff, f"the {stage} stage")
        handoff, ws.handoff = ws.handoff, None
        taken = False
        if parent is not None and parent.name == chroot.TREE:
            taken = chroot.take_or_unpack(handoff, parent, tree, log_file=ws.log_file, runtime=ws.runtime)
        else:
            if handoff is not None:  # a tree no one reads (the VM runner's, a base disk's)
                shutil.rmtree(handoff.tree, ignore_errors=True)
            if ws.base is None:
                raise BuildError(f"{stage}: the chroot runner needs the base disk or a parent tree")
            chroot.base_tree(ws.base, tree, sdir, log_file=ws.log_file, runtime=ws.runtime)
        how = "taken from the last stage" if taken else "ready"
        ws.monitor.log(stage, f"tree {how} in {time.monotonic() - started:.0f}s; provisioning in a chroot")
        kept = False
        try:
            for playbook in playbooks:
                run_in_chroot(ws, stage, tree, sdir, playbook)
            if last:  # after sysprep: the image at rest, as image-builder's goss sees its build VM
                _check_tree(ws, stage, tree)
            chroot.clamp_times(tree, ws.stage_epoch)  # the same tree at any commit, any day
            chroot.pack(tree, out, log_file=ws.log_file, runtime=ws.runtime)
            ws.handoff, kept = chroot.hand_off(out, tree), True  # the next stage or finalize takes it
        finally:
            if not kept:
                shutil.rmtree(tree, ignore_errors=True)
        return Output(out, "tree", False)


def run_in_chroot(ws: Workspace, stage: str, tree: Path, work: Path, playbook: Path) -> None:
    """One playbook against `tree` through the chroot connection, with the build's values as the roles'
    variables (the build's own and the user's ansible_user_vars)."""
    extra = {
        **chroot.host_view(render.ansible_values(ws.cfg, ws.runtime)),
        # what Packer's Ansible provisioner gives every play in the VM runner (`-e packer_build_name="node"
        # -e packer_builder_type=qemu`): image-builder's roles test them (`when: packer_builder_type ...`)
        "packer_build_name": render.SOURCE_NAME,
        "packer_builder_type": ws.builder,
        "kiln_stage": stage,
        "kiln_runner": "chroot",
        "kiln_packages_file": str(ws.packages_file),
        "kiln_host_tmp": str(ws.host_tmp),
    }
    user_vars = str(ws.values.get("ansible_user_vars") or "")
    chroot.run_playbooks(
        tree, work, [playbook], extra, repo_root=ws.runtime.root, user_vars=user_vars, log_file=ws.log_file,
        on_line=_task_lines(ws, stage), epoch=ws.stage_epoch, room=ws.settings.disk_size << 20,
        root_uuid=ws.base.root_uuid if ws.base is not None else None, runtime=ws.runtime,
    )  # fmt: skip
    bootloader.check_cfg(tree, log_file=ws.log_file, runtime=ws.runtime)  # before the tree is cached


def _check_at_rest(ws: Workspace, stage: str, disk: Path) -> None:
    """The VM runner's disk after sysprep and shutdown, its root mounted from a throwaway copy: the build
    phase's checks of the image at rest, as the chroot runner makes them in its tree (image-builder's goss
    runs after its sysprep); a failure ends the stage before it is cached."""
    from kiln.artifacts import formats

    work = ws.work / f"{stage}-at-rest"
    try:
        with formats.root_tree(disk, work, ws.runtime, ws.log_file) as root:
            _check_tree(ws, stage, root, where="on the disk at rest, after sysprep and shutdown")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_tree(ws: Workspace, stage: str, tree: Path, where: str = "in the chroot, after sysprep") -> None:
    """The build phase's goss checks that a tree can answer (kiln.goss.treephase); a failure ends the stage
    before anything is packed or cached. What passed is kept in BUILD_DIR/goss/ for the verify boot."""
    from kiln.goss import specs, treephase, verify

    results, waiting, passed = treephase.check_tree(
        lambda argv: chroot.walled(tree, argv, runtime=ws.runtime),
        ws.values,
        spec_dir=specs.spec_dir(ws.runtime.root),
        root=ws.runtime.root,
        runtime=ws.runtime,
    )
    failed = [r for r in results if not r.successful and not r.skipped]
    ws.monitor.log(
        stage,
        f"goss build phase: {len(results)} checks, {len(failed)} failed ({where}; "
        f"{waiting} resources wait for the boot check)",
    )
    verify.raise_on_failure(results, f"goss build phase ({where})", None)
    treephase.write_record(ws.tree_record, passed)


def _task_lines(ws: Workspace, stage: str) -> Any:
    """Show Ansible's TASK lines as the stage's progress (the whole output is in the build log)."""
    started = time.monotonic()

    def on_line(line: str) -> None:
        if line.startswith("TASK [") or line.startswith("PLAY ["):
            elapsed = int(time.monotonic() - started)
            ws.monitor.log(
                stage, f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {line.split(' *')[0]}", show=False
            )

    return on_line
