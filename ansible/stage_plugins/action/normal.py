# kiln: the action of every module that has none of its own (Ansible's `normal`), in kiln's chroot stages
# only: kiln.build.chroot puts this directory first on ANSIBLE_ACTION_PLUGINS for a stage's run, and never
# for a build VM's. It is Ansible's own action, except for the modules in IMAGE_KERNEL: those ask the
# running kernel about the image's, and in a chroot the running kernel is the build host's. They run under
# kiln's image_kernel.py (the stage's /run/kiln-stage), which answers for the image's kernel instead.
from __future__ import annotations

from ansible.plugins.loader import action_loader

# Ansible loads this file as ansible.plugins.action.normal: its own `normal` comes through the loader
NormalAction = action_loader.get("ansible.builtin.normal", class_only=True)

# community.general.modprobe reads /proc/modules (missing where the build host's kernel has no modules) and
# /lib/modules/<running kernel>/modules.builtin; `modprobe:` and `ansible.builtin.modprobe` resolve to it
IMAGE_KERNEL = frozenset({"community.general.modprobe"})
SHIM = "/run/kiln-stage/image_kernel.py"
DEFAULT_PYTHON = "/usr/bin/python3"  # kiln's ansible.cfg: interpreter_python


class ActionModule(NormalAction):
    def run(self, tmp=None, task_vars=None):
        # the shim is the interpreter (a script of DEFAULT_PYTHON's): a play's own interpreter keeps Ansible's way
        if (
            task_vars is not None
            and self._task.resolved_action in IMAGE_KERNEL
            and task_vars.get("ansible_python_interpreter", DEFAULT_PYTHON) == DEFAULT_PYTHON
        ):
            task_vars = dict(task_vars, ansible_python_interpreter=SHIM)
        return super().run(tmp, task_vars)
