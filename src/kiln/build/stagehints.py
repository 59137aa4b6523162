"""Why a chroot stage's task failed, and what to do about it: the hint kiln's error gives (kiln.build.chroot
runs the stage). A task that reaches for the build host hits the stage's wall (kiln.build.chroot's module
doc): it needs a running system, or the build host's kernel, and its effect belongs to the boot; a task that
names the build host's kernel release asked `uname -r` where the image's kernel is meant."""

from __future__ import annotations

import os
import re
from pathlib import Path

from kiln.artifacts import kernel

# how a task fails when it reaches for the build host from a stage (module doc), and what to do about it
_WALLED = re.compile(
    r"Read-only file system|Operation not permitted|must be root|must be superuser|permission denied on key"
    r"|mount: .*permission denied"
    r"|not found in directory /lib/modules/|'/lib/modules/|'/proc/modules'"  # modprobe, the host's kernel
    r"|System has not been booted with systemd"  # hostnamectl, timedatectl: no running systemd to ask
    # no daemon runs (docker), or the tree's containerd did not start for its client (kiln.build.ondemand)
    r"|failed to dial \S*containerd\.sock|containerd\.sock\S*: (?:connect|timeout)"
    r"|docker\.sock|Cannot connect to the Docker daemon"
)
WALLED_HINT = (
    "a chroot stage is no running system, and keeps the build host out of a task's reach: there is no "
    "systemd to ask (hostnamectl, timedatectl), no daemon runs (docker: no image pulls) but the tree's own "
    "containerd, started for a client of /run/containerd/containerd.sock (where it did not start, the log "
    "says why), "
    "/proc/sys and /sys are read-only (the `sysctl` command stands in and applies nothing), the kernel is "
    "the build host's (the `modprobe` command and module stand in and load nothing), and swap, "
    "mount, mknod, iptables, hostname and the clock are refused. Skip such a task with "
    "`when: kiln_runner | default('vm') != 'chroot'` (the boot checks its effect), or provision in a VM "
    "with -var provisioner=vm"
)


def failed_task(tail: str) -> str:
    """The output of the task that ended the run: the last task that failed for good (a `fatal: [`, or a
    loop's `failed: [` item, that Ansible did not go on from with `...ignoring`), from its TASK line on.
    "" when no task failed (the stage's own setup), or only tasks whose failure a role ignores."""
    lines = tail.splitlines()
    for end in range(len(lines) - 1, -1, -1):
        if not lines[end].startswith(("fatal: [", "failed: [")):
            continue
        after = end + 1  # past a loop's later items: ansible-core 2.19 ends a failed loop with its items
        while after < len(lines) and lines[after].startswith(
            ("failed: [", "ok: [", "changed: [", "skipping: [")
        ):
            after += 1
        if lines[after : after + 1] == ["...ignoring"]:
            continue
        start = end
        while start > 0 and not lines[start].startswith("TASK ["):
            start -= 1
        return "\n".join(lines[start : end + 1])
    return ""


HOST_KERNEL_HINT = (
    "the task names the build host's kernel, {release}: in a chroot stage `uname -r` and /proc are the "
    "build host's. `ansible_kernel` is the kernel the image boots ({image}); use it, as in "
    "`linux-headers-{{{{ ansible_kernel }}}}`, or provision in a VM with -var provisioner=vm"
)


def failure_hint(tail: str, tree: Path) -> str | None:
    """kiln's hint for a stage whose task failed: the wall's, or the host kernel's when the task's output
    names the build host's kernel release (a `uname -r` in a package name or path)."""
    task = failed_task(tail)
    if _WALLED.search(task):
        return WALLED_HINT
    release = os.uname().release
    image = kernel.facts(tree).get("kernel", "none installed")
    if release and release in task and release != image:  # a host running the image's kernel: no telling
        return HOST_KERNEL_HINT.format(release=release, image=image)
    return None
