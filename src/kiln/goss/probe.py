"""The evaluator's questions answered on a host through pytest-testinfra (any backend: the root shells of
kiln.goss.rootshell over SSH, a chroot, the local machine in the tests).

Each question is a command in the host, and under TCG a command costs a second or more of the guest's CPU:
a file's type, mode, owner, group, size and link target come from one command, and every package of a
Debian host from one `dpkg-query`, cached; the answers are testinfra's own (`stat -L`, dpkg's
"install ok installed"). One difference from the goss binary, as before these speed-ups: goss reads a
link itself (Lstat: a dangling link exists, its mode is 0777), testinfra and kiln read its target.
"""

from __future__ import annotations

import threading
from typing import Any

from kiln.goss.specs import ProbeError


class TestinfraProbe:
    """Answers the evaluator's questions (kiln.goss.specs.Probe) with pytest-testinfra on `host`."""

    __test__ = False  # not a pytest class

    def __init__(self, host: Any) -> None:
        self.host = host
        self._dpkg: dict[str, tuple[bool, str]] | None = None
        self._dpkg_lock = threading.Lock()

    # Every package dpkg knows, in one query (testinfra asks dpkg twice per package: each one a second
    # or more under TCG). Installed as testinfra's DebianPackage says: "install" or "hold", "ok installed".
    DPKG_QUERY = "dpkg-query -W -f '${Package}\\t${Status}\\t${Version}\\n'"

    def _dpkg_packages(self) -> dict[str, tuple[bool, str]]:
        with self._dpkg_lock:
            if self._dpkg is None:
                out = self.host.run(self.DPKG_QUERY)
                table: dict[str, tuple[bool, str]] = {}
                if out.rc == 0:  # no dpkg (an rpm system): an empty table, testinfra answers
                    for line in str(out.stdout).splitlines():
                        fields = line.split("\t")
                        if len(fields) == 3:
                            status = fields[1].split()
                            ok = status[:1] in (["install"], ["hold"]) and status[1:3] == ["ok", "installed"]
                            if not table.get(fields[0], (False, ""))[0]:  # multi-arch: installed wins
                                table[fields[0]] = (ok, fields[2])
                self._dpkg = table
            return self._dpkg

    def package(self, name: str) -> tuple[bool, list[str]]:
        from testinfra.modules.package import DebianPackage

        # testinfra's DebianPackage hosts; a name:arch or a glob goes to dpkg-query as testinfra sends it
        debian = issubclass(self.host.package, DebianPackage) and not set(name) & set(":*?[")
        known = self._dpkg_packages() if debian else {}
        if known:
            installed, version = known.get(name, (False, ""))
            return (True, [version]) if installed else (False, [])
        pkg = self.host.package(name)
        if not pkg.is_installed:
            return False, []
        return True, [str(pkg.version)]

    def service(self, name: str) -> tuple[bool, bool]:
        svc = self.host.service(name)
        return bool(svc.is_enabled), bool(svc.is_running)

    def kernel_param(self, name: str) -> str:
        try:
            return str(self.host.sysctl(name))
        except AssertionError as exc:
            raise ProbeError(f"kernel-param {name}: not found") from exc

    # One round trip for a file's type, mode, owner, group, size and link target (testinfra's File asks
    # one question per attribute). As testinfra's File: `test -e` follows a link (a dangling link does not
    # exist), and mode, owner, group and size are the target's (`stat -L`); the link target is readlink's.
    # Size and mode first, the group on a line of its own: an owner or group name may hold a space.
    FILE_SCRIPT = (
        'p="$1"; test -e "$p" || { echo missing; exit 0; }; t=file; '
        'if test -L "$p"; then t=symlink; elif test -d "$p"; then t=directory; '
        'elif test -S "$p"; then t=socket; elif test -p "$p"; then t=pipe; fi; '
        'echo "$t"; stat -L -c "%s %a %U" -- "$p" || exit 3; stat -L -c "%G" -- "$p" || exit 3; '
        'if test "$t" = symlink; then readlink -- "$p" || exit 3; fi'
    )
    FILE_TYPES = ("file", "symlink", "directory", "socket", "pipe")

    def file(self, path: str, wanted: set[str]) -> dict[str, Any]:
        """One round trip for everything but contents and digests, which are read only when asked for."""
        out = self.host.run("/bin/sh -c %s kiln-file %s", self.FILE_SCRIPT, path)
        lines = str(out.stdout).split("\n")
        if out.rc == 0 and lines[0] == "missing":
            return {"exists": False}
        first = lines[1].split(" ", 2) if len(lines) > 2 else []
        if out.rc != 0 or lines[0] not in self.FILE_TYPES or len(first) != 3 or not first[0].isdigit():
            raise ProbeError(f"file {path}: cannot stat it (exit {out.rc}): {str(out.stderr).strip()[:200]}")
        size, mode, owner = first
        info: dict[str, Any] = {"exists": True, "filetype": lines[0], "mode": f"{int(mode, 8):04o}"}
        info.update(owner=owner, group=lines[2])
        if lines[0] == "symlink":  # a target may hold a newline: the rest of the output, less the last one
            info["linked-to"] = str(out.stdout).split("\n", 3)[3].removesuffix("\n") if len(lines) > 3 else ""
        if lines[0] in ("file", "symlink"):
            info["size"] = int(size)
            if wanted & {"contents", "md5", "sha256"}:
                f = self.host.file(path)
                if "contents" in wanted:
                    info["contents"] = f.content_string
                if "md5" in wanted:
                    info["md5"] = f.md5sum
                if "sha256" in wanted:
                    info["sha256"] = f.sha256sum
        return info

    def command(self, cmd: str, timeout: float) -> tuple[int, str, str]:
        result = self.host.run("timeout %s /bin/sh -c %s", f"{max(timeout, 1):g}", cmd)
        return int(result.rc), str(result.stdout), str(result.stderr)

    def user(self, name: str) -> dict[str, Any]:
        u = self.host.user(name)
        if not u.exists:
            return {"exists": False}
        return {
            "exists": True,
            "uid": u.uid,
            "gid": u.gid,
            "groups": list(u.groups),
            "home": u.home,
            "shell": u.shell,
        }

    def group(self, name: str) -> dict[str, Any]:
        g = self.host.group(name)
        if not g.exists:
            return {"exists": False}
        return {"exists": True, "gid": g.gid}
