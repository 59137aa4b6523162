# kiln: the action of every module that has none of its own (Ansible's `normal`), in kiln's chroot stages
# only: kiln.build.chroot puts this directory first on ANSIBLE_ACTION_PLUGINS for a stage's run, and never
# for a build VM's. It is Ansible's own action, except for the modules in IMAGE_KERNEL: those ask the
# running kernel about the image's, and in a chroot the running kernel is the build host's. They run under
# kiln's image_kernel.py (the stage's /run/kiln-stage), which answers for the image's kernel instead.
#
# Ansible loads this file under the name ansible.plugins.action.normal. Were that module imported before
# in the same process (a network collection's action imports it), the loader would hand back Ansible's own
# and this one would not apply: tests/test_chroot_vm.py's build-VM role fails then (its modprobe tasks).
from __future__ import annotations

import hashlib
import os
import tempfile

from ansible.plugins.loader import action_loader

NormalAction = action_loader.get("ansible.builtin.normal", class_only=True)

# community.general.modprobe reads /proc/modules (missing where the build host's kernel has no modules) and
# /lib/modules/<running kernel>/modules.builtin; `modprobe:` resolves to it
IMAGE_KERNEL = frozenset({"community.general.modprobe"})
STAGE_DIR = "kiln-stage"  # in the stage's /run (KILN_STAGE_RUN on the build host)
SHIM = "/run/kiln-stage/image_kernel.py"  # a script of /usr/bin/python3, the interpreter kiln's ansible.cfg sets
KILNS_PYTHON = "/usr/bin/python3"
AUTO = ("auto", "auto_silent", "auto_legacy", "auto_legacy_silent")


def interpreter(python: str, discovered: str | None) -> str | None:
    """The interpreter that runs the module under the shim: the shim itself for kiln's python, else a
    wrapper in the stage's /run that runs the play's own (or the discovered) interpreter on it. None
    outside a stage."""
    run = os.environ.get("KILN_STAGE_RUN")
    if not run:
        return None
    if python in AUTO or not python:
        python = discovered or KILNS_PYTHON
    if python == KILNS_PYTHON:
        return SHIM
    name = "python-" + hashlib.sha256(python.encode()).hexdigest()[:16]
    wrapper = os.path.join(run, STAGE_DIR, name)
    if not os.path.exists(wrapper):
        quoted = "'" + python.replace("'", "'\\''") + "'"
        fd, part = tempfile.mkstemp(dir=os.path.dirname(wrapper), prefix=".python-")
        with os.fdopen(fd, "w") as f:
            f.write('#!/bin/sh\nexec %s %s "$@"\n' % (quoted, SHIM))
        os.chmod(part, 0o755)
        os.replace(part, wrapper)
    return "/run/%s/%s" % (STAGE_DIR, name)


class ActionModule(NormalAction):
    def run(self, tmp=None, task_vars=None):
        if task_vars is not None and self._task.resolved_action in IMAGE_KERNEL:
            python = str(self._templar.template(task_vars.get("ansible_python_interpreter") or "")).strip()
            facts = task_vars.get("ansible_facts") or {}
            shim = interpreter(python, facts.get("discovered_interpreter_python"))
            if shim is not None:
                task_vars = dict(task_vars, ansible_python_interpreter=shim)
        return super().run(tmp, task_vars)
