"""How a stage runs, separate from what it is. `PackerRunner` boots the parent disk in QEMU under Packer and
runs the stage's roles over SSH, with this build's own one-time login (kiln.vm.checkboot) and a new
cloud-init instance-id, so a cached stage never carries another build's credentials forward. (A chroot
runner for bootstrap targets implements the same `run`.)"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

from kiln.build import packer
from kiln.build.render import BuildContext, Output
from kiln.build.workspace import SERIAL_LOG, Workspace
from kiln.core.errors import BuildError

FINALIZE_COMMAND = "sudo /usr/local/sbin/kiln-finalize"  # written by the sysprep role; Packer's shutdown
STAGE_SHUTDOWN = "sudo shutdown -P now"  # the os stage ends without sysprep


class PackerRunner:
    """Runs a stage as a Packer build in a booted VM: the parent disk (if any) through a qcow2 overlay,
    this build's fresh key and seed, the stage's roles (`kiln_stage`), and for the last stage the in-guest
    goss check and sysprep. Returns the disk Packer wrote. (A chroot runner for bootstrap targets would
    implement the same `run`.)"""

    def run(self, ws: Workspace, stage: str, parent: Path | None, last: bool) -> Output:
        from kiln.build import render
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
            extra_vars={"kiln_packages_file": str(ws.packages_file), "kiln_stage": stage},
            ansible_config=repo / "ansible" / "ansible.cfg",
            serial_log=ws.temp / SERIAL_LOG,
            kiln_command=[sys.executable, "-m", "kiln"],
            goss_check=last,
            sysprep=last,
            use_backing_file=staged,
            compress=not staged,
        )
        rendered = render.render(ws.cfg, context, sdir / "packer", packer.version(ws.runtime), ws.runtime)
        ws.monitor.log(stage, f"rendered template: {rendered.template}", show=False)
        shims = str(repo / "packer" / "shims")  # qemu-img -F for Packer 1.6.6's overlays (see the shim)
        runtime = replace(ws.runtime, env={**ws.runtime.env, "PATH": f"{shims}{os.pathsep}{ws.runtime.path}"})
        packer.build(
            rendered.dir,
            ws.log_path,
            only=[ws.builder],
            on_stage=lambda line: ws.monitor.log(stage, line),
            flags=ws.packer_flags,
            runtime=runtime,
        )
        out = rendered.outputs[ws.builder]
        if not out.disk.is_file() and not ws.runtime.dry_run:
            raise BuildError(f"{out.disk.parent}: Packer finished but wrote no {out.disk.name}")
        login.forget()  # the stage's key goes as soon as the stage ends
        return out
