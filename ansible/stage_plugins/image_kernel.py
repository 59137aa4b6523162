#!/usr/bin/python3
# kiln: runs an Ansible module in a chroot stage as it would run in a build VM booted from the image's
# kernel (kiln's action plugin stage_plugins/action/normal.py picks the modules). Copied to the stage's
# /run/kiln-stage, never into the image. Usage: image_kernel.py [MODULE_FILE] (no file: from stdin).
# - The running kernel's release is the image's (KILN_TREE_FACTS' "kernel", the ansible_kernel fact of the
#   stage), so /lib/modules/RELEASE is the image kernel's modules, not the build host's missing ones.
# - /proc/modules reads as empty: no module of the image's kernel is loaded while a stage runs, and the
#   build host's list (or its absence, on a host whose kernel has no modules) says nothing of the image.
import builtins
import io
import json
import os
import platform
import runpy
import sys

try:
    _KERNEL = json.loads(os.environ.get("KILN_TREE_FACTS") or "{}").get("kernel")
except ValueError:
    _KERNEL = None
if _KERNEL:
    platform.release = lambda: _KERNEL

_open = builtins.open


def _open_in_stage(file, mode="r", *args, **kwargs):
    if file in ("/proc/modules", b"/proc/modules") and not any(c in mode for c in "wax+"):
        return io.BytesIO(b"") if "b" in mode else io.StringIO("")
    return _open(file, mode, *args, **kwargs)


builtins.open = _open_in_stage

if len(sys.argv) > 1:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
else:
    sys.argv = ["-"]
    exec(compile(sys.stdin.buffer.read(), "<stdin>", "exec"), {"__name__": "__main__"})
