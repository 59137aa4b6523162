"""The build phase's goss checks against a root tree (the chroot runner's, or the VM runner's disk after
shutdown: kiln.build.runners), and their record.

image-builder's goss runs in the build VM after the whole playbook, sysprep included: its specs describe the
image at rest (no SSH host keys, an empty machine-id, no cloud-init instance; image-builder's
goss-image-hygiene.yaml) as well as a running system. A chroot stage has the image at rest (the tree after
sysprep) and, in finalize, the running system (the one boot). So each resource of the build phase is
checked where it can be:

- "tree": files, packages, users, groups and matchers (not files under /proc, /sys, /run, /dev), and any
  resource that asks for it (`meta: {kiln_phase: tree}`): checked in the tree after sysprep; a failure ends
  the stage before the tree is packed.
- "boot": services, kernel parameters, files under those paths, and anything that asks (`kiln_phase: boot`):
  checked in the one boot of the finished image (the final phase).
- "either": a command that names no phase. It is run in the tree after sysprep (read-only: kiln.build.chroot
  .walled); if it passes there, and wrote nothing to stderr (unless its check reads stderr), it is done, and
  if not it waits for the boot, where it must pass. So a check of the image at rest
  (`test ! -e /var/lib/cloud/data/instance-id`) passes in the tree, and one that needs a running system
  (`crictl ps`, `systemctl --failed | wc -l`, whose systemctl complains in a tree) in the boot.

`check_tree` returns what passed in the tree; the build keeps it as BUILD_DIR/goss/tree-phase.json
(`write_record`), and `kiln verify` skips those resources of your build-phase spec (goss_spec_dir's goss.yaml,
when it has no goss-final.yaml) on the booted image (`passed_in_tree`), where an at-rest check could not pass;
with a goss-final.yaml, it runs the rest of your goss.yaml (what waited for the boot) beside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from kiln.core import inputs
from kiln.core.runtime import Runtime
from kiln.goss import reports
from kiln.goss import specs as goss
from kiln.goss.probe import TestinfraProbe
from kiln.goss.userspecs import load_phase

log = logging.getLogger(__name__)

TREE_TYPES = frozenset({"package", "file", "user", "group", "matching"})
RUNTIME_PATHS = ("/proc/", "/sys/", "/run/", "/dev/")  # files a running system makes
RESOURCE_PHASES = ("tree", "boot")  # `meta: {kiln_phase: boot}` on a goss resource: where it is checked
TREE_CAPABLE = TREE_TYPES | {"command"}  # a command may ask for the tree: it then runs in the chroot
RECORD = "tree-phase.json"  # BUILD_DIR/goss/RECORD: the build-phase resources that passed in the tree


def phase_of(resource: goss.Resource) -> str:
    """Where a resource of the build phase is checked by the chroot runner: "tree", "boot" or "either" (see
    the module doc). A resource names its phase with goss's own `meta` attribute, `meta: {kiln_phase: boot}`
    or `tree` (valid goss: real goss ignores it). A resource that asks for the tree but needs a running
    system (a service, a port) stays in the boot."""
    meta = resource.attrs.get("meta")
    asked = meta.get("kiln_phase") if isinstance(meta, dict) else None
    if asked == "boot":
        return "boot"
    if asked == "tree" and resource.type in TREE_CAPABLE:
        return "tree"
    if resource.type == "command":
        return "either"
    if resource.type not in TREE_TYPES:
        return "boot"
    runtime_file = resource.type == "file" and str(resource.attrs.get("path", resource.id)).startswith(
        RUNTIME_PATHS
    )
    return "boot" if runtime_file else "tree"


def resource_key(resource: goss.Resource) -> str:
    """One resource as rendered (type, id and every attribute): a resource the final phase renders
    differently (from `.Vars.phase`, say) is another resource."""
    attrs = json.dumps(resource.attrs, sort_keys=True, default=str)
    return f"{resource.type}\t{resource.id}\t{hashlib.sha256(attrs.encode()).hexdigest()[:16]}"


def check_tree(
    in_tree: Callable[[Sequence[str]], list[str]],
    values: Mapping[str, Any],
    *,
    spec_dir: Path,
    root: Path,
    runtime: Runtime,
    extra_vars: Mapping[str, Any] | None = None,
) -> tuple[list[goss.Result], int, list[goss.Resource]]:
    """The build phase against a root tree (after sysprep): the "tree" resources, which must pass, and the
    "either" commands, whose failures wait for the boot. `in_tree` makes the argv that runs a command in the
    tree (kiln.build.chroot.walled). Returns the results that count (the tree resources' and the passed
    commands'), how many resources wait for the boot, and the resources that passed."""
    from testinfra.backend.local import LocalBackend
    from testinfra.host import Host

    from kiln.core import proc

    env = proc.tree_env(runtime)

    class ChrootBackend(LocalBackend):  # type: ignore[misc]
        """testinfra's local backend with every command run as `/bin/sh -c CMD` in the tree (`in_tree`),
        in the environment of programs in a tree (proc.tree_env), not kiln's own, and as kiln runs its
        children (proc.capture: no terminal, ended with kiln)."""

        def run(self, command: str, *args: str, **kwargs: Any) -> Any:
            text = self.get_command(command, *args)
            rc, out, err = proc.capture(in_tree(["/bin/sh", "-c", text]), env=env, runtime=runtime)
            return self.result(rc, self.encode(text), out, err)

    loaded = load_phase(values, "build", spec_dir=spec_dir, root=root, extra_vars=extra_vars)
    spec = loaded.spec
    spec.resources.extend(loaded.theirs)
    phases = [phase_of(r) for r in spec.resources]
    tree = [r for r, p in zip(spec.resources, phases, strict=True) if p == "tree"]
    either = [r for r, p in zip(spec.resources, phases, strict=True) if p == "either"]
    probe = _Recording(TestinfraProbe(Host(ChrootBackend())))
    started = time.monotonic()
    results = goss.evaluate(replace(spec, resources=tree), probe)
    failed_ids = {(x.resource_type, x.resource_id) for x in results if not x.successful and not x.skipped}
    passed = [r for r in tree if (r.type, r.id) not in failed_ids]
    with ThreadPoolExecutor(goss.WORKERS, thread_name_prefix="goss-tree") as pool:
        one = lambda r: goss.evaluate(replace(spec, resources=[r]), probe, workers=1)  # noqa: E731
        tries = list(pool.map(one, either))
    waiting, ran = len(spec.resources) - len(tree) - len(either), 0
    for resource, outcome in zip(either, tries, strict=True):
        if all(x.successful or x.skipped for x in outcome) and probe.quiet(resource):
            results.extend(outcome)
            passed.append(resource)
            ran += 1
        else:
            waiting += 1
    s = reports.summary(results)
    log.info(
        "goss build phase (tree): %d checks, %d failed in %.1fs; %d commands passed in the tree, "
        "%d resources wait for the boot",
        s["test-count"], s["failed-count"], time.monotonic() - started, ran, waiting,
    )  # fmt: skip
    return results, waiting, passed


class _Recording:
    """A probe that keeps each command's stderr: a command that complained in the tree ("System has not been
    booted with systemd", a missing /proc) is not settled there, even when its pipeline's status passed
    (`systemctl --failed --no-legend | wc -l` prints 0 in a tree), unless its check reads stderr itself."""

    def __init__(self, probe: TestinfraProbe) -> None:
        self.probe, self.stderr = probe, dict[str, str]()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.probe, name)

    def command(self, cmd: str, timeout: float) -> tuple[int, str, str]:
        rc, out, err = self.probe.command(cmd, timeout)
        self.stderr[cmd] = err
        return rc, out, err

    def quiet(self, resource: goss.Resource) -> bool:
        said = self.stderr.get(str(resource.attrs.get("exec", resource.id)), "")
        return "stderr" in resource.checks or not said.strip()


def write_record(path: Path, passed: Sequence[goss.Resource]) -> None:
    """What passed in the tree, for `kiln verify` (atomically: a half-written record would skip nothing)."""
    entries = [{"type": r.type, "id": r.id, "key": resource_key(r)} for r in passed]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"passed_in_tree": entries}, indent=1) + "\n")
    tmp.replace(path)


def record_path(build_dir: Path) -> Path:
    return build_dir / "goss" / RECORD


def passed_in_tree(build_dir: Path) -> frozenset[str]:
    """The keys of the resources the build phase passed in the tree (empty for a build that has no record:
    the VM runner's of an installer or cloud-image target, or one made before it was kept)."""
    path = record_path(build_dir)
    if not path.is_file():
        return frozenset()
    data = inputs.loads_json(path.read_text(), str(path), "record")
    entries = data.get("passed_in_tree") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return frozenset()
    return frozenset(str(e["key"]) for e in entries if isinstance(e, dict) and "key" in e)
