# kiln: the action of every module that has none of its own (Ansible's `normal`), in kiln's chroot stages
# only: kiln.build.chroot puts this directory first on ANSIBLE_ACTION_PLUGINS for a stage's run, and never
# for a build VM's. It is Ansible's own action, except for the modules in IMAGE_KERNEL: those ask the
# running kernel about the image's, and in a chroot the running kernel is the build host's. They run under
# kiln's image_kernel.py (the stage's /run/kiln-stage), which answers for the image's kernel instead.
from __future__ import annotations

import hashlib
import os

from ansible.plugins.loader import action_loader

# Ansible loads this file as ansible.plugins.action.normal: its own `normal` comes through the loader
NormalAction = action_loader.get("ansible.builtin.normal", class_only=True)

# community.general.modprobe reads /proc/modules (missing where the build host's kernel has no modules) and
# /lib/modules/<running kernel>/modules.builtin; `modprobe:` resolves to it
IMAGE_KERNEL = frozenset({"community.general.modprobe"})
STAGE_DIR = "kiln-stage"  # in the stage's /run (KILN_STAGE_RUN on the build host)
SHIM = "/run/kiln-stage/image_kernel.py"  # a script of /usr/bin/python3, the interpreter kiln's ansible.cfg sets
AS_SHIM = ("", "/usr/bin/python3", "auto", "auto_silent", "auto_legacy", "auto_legacy_silent")


def interpreter(python: str) -> str | None:
    """The interpreter that runs the module under the shim: the shim itself for kiln's python, else a
    wrapper that runs the play's own interpreter on it (None: not in a stage)."""
    if python in AS_SHIM:
        return SHIM
    run = os.environ.get("KILN_STAGE_RUN")
    if not run:
        return None
    name = "python-" + hashlib.sha256(python.encode()).hexdigest()[:16]
    wrapper = os.path.join(run, STAGE_DIR, name)
    if not os.path.exists(wrapper):
        quoted = "'" + python.replace("'", "'\\''") + "'"
        with open(wrapper + ".part", "w") as f:
            f.write('#!/bin/sh\nexec %s %s "$@"\n' % (quoted, SHIM))
        os.chmod(wrapper + ".part", 0o755)
        os.replace(wrapper + ".part", wrapper)
    return "/run/%s/%s" % (STAGE_DIR, name)


class ActionModule(NormalAction):
    def run(self, tmp=None, task_vars=None):
        if task_vars is not None and self._task.resolved_action in IMAGE_KERNEL:
            python = self._templar.template(task_vars.get("ansible_python_interpreter") or "")
            shim = interpreter(str(python).strip())
            if shim is not None:
                task_vars = dict(task_vars, ansible_python_interpreter=shim)
        return super().run(tmp, task_vars)
