"""The run's environment: the one `Runtime` the CLI makes from the process environment it was started with
(kiln.core.runtime), and what of that environment kiln's children get.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType

from kiln.config.loading import repo_root
from kiln.core import proc
from kiln.core.runtime import Runtime

# Ansible reads ANSIBLE_* variables over its config file, so an operator's shell settings would change how
# kiln provisions: ANSIBLE_PYTHON_INTERPRETER names a Python the image does not have, ANSIBLE_FORCE_COLOR or
# ANSIBLE_STDOUT_CALLBACK give a log the progress cannot read, ANSIBLE_BECOME_ASK_PASS waits for a password,
# ANSIBLE_SSH_ARGS drops kiln's SSH options. kiln's ansible/ansible.cfg decides; only where to find the
# user's own content (extra_roles_before/after by name, the collections and plugins they use) passes.
# (ANSIBLE_HOME: where ~/.ansible's collections and roles are when it is moved; a *_PLUGINS path adds
# plugins to choose from, it chooses none.)
ANSIBLE_PASSED = frozenset({
    "ANSIBLE_HOME", "ANSIBLE_ROLES_PATH", "ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_COLLECTIONS_PATHS",
    "ANSIBLE_LIBRARY", "ANSIBLE_MODULE_UTILS", "ANSIBLE_DOC_FRAGMENT_PLUGINS", "ANSIBLE_VAULT_PASSWORD_FILE",
    "ANSIBLE_VAULT_IDENTITY", "ANSIBLE_VAULT_IDENTITY_LIST",
    *(f"ANSIBLE_{kind}_PLUGINS" for kind in (
        "ACTION", "BECOME", "CACHE", "CALLBACK", "CLICONF", "CONNECTION", "FILTER", "HTTPAPI", "INVENTORY",
        "LOOKUP", "NETCONF", "STRATEGY", "TERMINAL", "TEST", "VARS",
    )),
})  # fmt: skip


def default_runtime(dry_run: bool = False, debug: bool = False, root: Path | None = None) -> Runtime:
    """The Runtime of this process: its environment, with kiln's virtualenv first on PATH (Packer's ansible
    provisioner runs `ansible-playbook` from there), Packer's update check off, the C.UTF-8 locale, and no
    Ansible setting but the content paths of ANSIBLE_PASSED (the rest is in `withheld`). Made once by the
    CLI."""
    import sys

    env = dict(os.environ)
    withheld = tuple(sorted(k for k in env if k.startswith("ANSIBLE_") and k not in ANSIBLE_PASSED))
    for name in withheld:
        del env[name]
    if env.get("ANSIBLE_ROLES_PATH"):
        # as Ansible reads it (~ and $VARS expanded, relative to where kiln started), made absolute once: the
        # stage IDs hash the roles found there (Runtime.roles_path), and Packer runs Ansible from elsewhere
        env["ANSIBLE_ROLES_PATH"] = os.pathsep.join(
            os.path.abspath(os.path.expandvars(os.path.expanduser(p)))
            for p in env["ANSIBLE_ROLES_PATH"].split(os.pathsep) if p
        )  # fmt: skip
    venv_bin = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep) if p]
    if venv_bin not in path:
        path.insert(0, venv_bin)
    # and the system's sbin and bin directories, last: kiln needs root's tools (chroot, mkfs.ext4, debugfs,
    # sfdisk), and a root shell from a plain `su` has no sbin on PATH
    path += [d for d in proc.SYSTEM_PATH if d not in path]
    env.update(PATH=os.pathsep.join(path), CHECKPOINT_DISABLE="1", PACKER_NO_COLOR="1")
    # One locale for every child, the one every tree has (glibc's built-in C.UTF-8): a workstation's
    # en_US.UTF-8 or de_DE.UTF-8 reached the chroot's maintainer scripts, where no such locale is generated
    # (perl's "Setting locale failed" for each), and made tools answer in another language.
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8")
    env.pop("LANGUAGE", None)
    return Runtime(
        root=root or repo_root(), dry_run=dry_run, debug=debug, env=MappingProxyType(env), withheld=withheld
    )
