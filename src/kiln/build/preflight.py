"""What a build checks before anything runs: the tools, VMware for vmware-iso, the package cache, that
the build directory is kiln's to replace, the user's extra roles and goss files. Each failure is the error
the CLI maps to its exit code, raised before a stage starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kiln.build import chroot, stages
from kiln.config import Config
from kiln.core import builddir, inputs, proc
from kiln.core.errors import BuildError, InputError, KilnError
from kiln.core.progress import Monitor
from kiln.core.runtime import Runtime

VMWARE_TOOLS = ("vmrun", "vmware", "vmplayer", "vmware-vdiskmanager")


def required_tools(values: Mapping[str, Any]) -> list[str]:
    tools = ["packer", "qemu-system-x86_64", "qemu-img", "ansible-playbook"]
    if values.get("install_method") == "bootstrap":
        tools += ["mmdebstrap", "sfdisk", "mkfs.fat", "mkfs.ext4"]
    return tools


def check_tools(values: Mapping[str, Any], runtime: Runtime) -> None:
    """ToolMissingError (exit 2) naming the package for the first missing program (on the runtime's PATH,
    which has kiln's virtualenv first: Packer runs ansible-playbook from there)."""
    for tool in required_tools(values):
        proc.which(tool, runtime)


def check_package_cache(cfg: Config) -> None:
    """`apt_cache` must answer before any stage runs: a stopped cache would otherwise show as apt timing out
    deep in the os stage (and with disable_public_repos the cache is the only way to packages). Exit 1."""
    import socket
    import urllib.parse

    from kiln.core import net

    url = cfg.settings.apt_cache
    if not url:
        return
    seen = str(chroot.host_view(url))  # QEMU's address of the build host is this host
    parts = urllib.parse.urlsplit(seen)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname or "", port), timeout=5).close()
    except (OSError, ValueError) as exc:
        cause = net.describe(exc, seen).cause if isinstance(exc, OSError) else str(exc)
        raise BuildError(
            f"apt_cache {url}: {cause}",
            hint="start the package cache, or unset apt_cache"
            + (
                "; disable_public_repos is on, so the cache is the build's only package source"
                if cfg.settings.disable_public_repos
                else ""
            ),
        ) from None


def check_vmware(cfg: Config, runtime: Runtime) -> None:
    """vmware-iso needs VMware Workstation, Player or Fusion: without it, fail now (exit 2), not after
    Packer has started."""
    import shutil as _sh

    if any(_sh.which(tool, path=runtime.path or None) for tool in VMWARE_TOOLS):
        return
    raise InputError(
        f"builder vmware-iso: VMware is not installed (none of {', '.join(VMWARE_TOOLS)} on PATH)",
        hint=f"build the qcow2 with QEMU instead: `make build-qemu-{cfg.target}` (kiln build {cfg.target} "
        "--only qemu); kiln makes the OVA from it",
    )


def check_replaceable_build(final: Path) -> None:
    """kiln replaces a build dir only if it made it: its marker, or (builds from before the marker) a
    packer-manifest.json whose custom_data carries kiln_version. Anything else: InputError, exit 2."""
    if not final.exists() and not final.is_symlink():
        return
    if final.is_dir() and not final.is_symlink():
        if (final / inputs.MARKER).is_file():
            return
        try:
            if builddir.BuildDir.open(final).custom_data.get("kiln_version"):
                return
        except KilnError:
            pass
    raise InputError(
        f"{final}: exists and was not made by kiln (no {inputs.MARKER} marker); kiln will not replace it",
        hint="move it away, or set output_dir to another directory",
    )


def warn_unfound_roles(cfg: Config, mon: Monitor, rt: Runtime) -> None:
    """A warning for each extra role kiln cannot find (stages.unfound_roles): Ansible may still find it, but
    its files are not part of the stage's cache key."""
    for setting, item in stages.unfound_roles(cfg.plain(), cfg.repo_root, cfg.work_root, rt.roles_path):
        mon.log(
            "build",
            f"warning: {cfg.origins.get(setting, setting)}: {setting}: {item!r} is not in ansible/roles/, "
            "ANSIBLE_ROLES_PATH, ansible/ or the working directory, so its files are not part of the stage's "
            "cache key (a change to them does not rebuild the stage); give its path",
        )


def check_goss(cfg: Config, rt: Runtime) -> None:
    """Your goss files (goss_spec_dir, goss_vars_file) exist, and kiln's and your specs render with the
    build's vars in both phases, before any stage runs: a missing file or a template error (image-builder's
    vars file with no section for the target's OS) costs no provisioning. InputError or GossSpecError,
    exit 2, naming the file and line."""
    from kiln.goss import specs, userspecs
    from kiln.goss.verify import PLACEHOLDER_VARS

    values = cfg.values
    for key in ("goss_spec_dir", "goss_vars_file"):
        raw = str(values.get(key) or "")
        path = userspecs.user_path(raw, rt.root)
        if raw and not path.exists():
            raise InputError(
                f"{cfg.origins.get(key, key)}: {key}: {raw} does not exist ({path})",
                hint="a relative path is read from the kiln checkout (an installed kiln: the current "
                "directory); image-builder's packer/config/goss-args.json names its goss directory "
                "relative to its images/capi: give absolute paths (docs/verification.md)",
            )
    spec_dir = specs.spec_dir(rt.root)
    for phase, extra in (("build", {}), ("final", PLACEHOLDER_VARS)):
        userspecs.load_phase(
            values, phase, spec_dir=spec_dir, root=rt.root, extra_vars=extra, say=phase == "build"
        )
