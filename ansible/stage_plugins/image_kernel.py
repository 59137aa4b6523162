#!/usr/bin/python3
# kiln: runs an Ansible module in a chroot stage as it would run in a build VM booted from the image's
# kernel (kiln's action plugin stage_plugins/action/normal.py picks the modules). Copied to the stage's
# /run/kiln-stage, never into the image. Usage: image_kernel.py [MODULE_FILE] (no file: from stdin).
# - The running kernel's release is the image's (KILN_TREE_FACTS' "kernel", the ansible_kernel fact of the
#   stage), so /lib/modules/RELEASE is the image kernel's modules, not the build host's missing ones.
# - /proc/modules lists what the stage's `modprobe` stand-in "loaded" (/run/kiln-stage/loaded), not the
#   build host's modules (or their absence, on a host whose kernel has none): so the module reports a load
#   as changed, and a second one as done, as in a build VM.
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


def _modules():
    try:
        with _open("/run/kiln-stage/loaded") as f:
            names = [line.strip() for line in f if line.strip()]
    except OSError:
        names = []
    return "".join("%s 16384 0 - Live 0x0000000000000000\n" % name for name in names)


def _open_in_stage(file, mode="r", *args, **kwargs):
    if file in ("/proc/modules", b"/proc/modules") and not any(c in mode for c in "wax+"):
        return io.BytesIO(_modules().encode()) if "b" in mode else io.StringIO(_modules())
    return _open(file, mode, *args, **kwargs)


builtins.open = _open_in_stage

if len(sys.argv) > 1:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
else:
    sys.argv = ["-"]
    exec(compile(sys.stdin.buffer.read(), "<stdin>", "exec"), {"__name__": "__main__"})
