"""`kiln conformance`: the Kubernetes node e2e conformance run on a booted image.

The steps of image-builder's "Testing Images" section, as one command:
1. CNI: write a `bridge` network (cni0, gateway, IP masquerade, host-local IPAM on 10.22.0.0/16 with a
   default route) and a `loopback` network into /etc/cni/net.d, for the plugins the image carries
   (bridge, host-local, loopback must exist in cni_bin_dir; the config's cniVersion is one they support),
   and prove it works: a CNI ADD in a scratch network namespace must get an address in 10.22.0.0/16.
2. Copy kubernetes/platforms/linux/amd64/{ginkgo,e2e_node.test} from kubernetes-test.tar.gz.
3. Run ginkgo with the conformance focus and skip flags (GINKGO_FLAGS, E2E_NODE_FLAGS: data, tested).
4. Bring the JUnit results (and the full output) back into BUILD_DIR/conformance/.
"""

from __future__ import annotations

import json
import logging
import posixpath
import shlex
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kiln.core.errors import InputError, KilnError

log = logging.getLogger(__name__)

TARBALL_DIR = "kubernetes/platforms/linux/amd64"
BINARIES = ("ginkgo", "e2e_node.test")

# The command line of "Run the e2e node conformance tests" in image-builder's docs, split into data.
# Placeholders: {k8s_bin_dir} (where kubelet is), {containerd} (the containerd binary in the image).
GINKGO_FLAGS: tuple[str, ...] = (
    "--nodes=8",
    "--flakeAttempts=2",
    "--focus=\\[Conformance\\]",
    "--skip=\\[Flaky\\]|\\[Serial\\]|\\[sig-network\\]|Container Lifecycle Hook",
)
E2E_NODE_FLAGS: tuple[str, ...] = (
    "--k8s-bin-dir={k8s_bin_dir}",
    "--container-runtime=remote",
    "--container-runtime-endpoint",
    "unix:///var/run/containerd/containerd.sock",
    "--container-runtime-process-name",
    "{containerd}",
    "--container-runtime-pid-file=",
    "--kubelet-flags=--cgroups-per-qos=true --cgroup-root=/"
    " --runtime-cgroups=/system.slice/containerd.service",
    '--extra-log={"name": "containerd.log", "journalctl": ["-u", "containerd"]}',
)
# Added by kiln so that the JUnit files land where kiln collects them (an e2e framework flag).
REPORT_FLAG = "--report-dir={report_dir}"

CNI_PLUGINS = ("bridge", "host-local", "loopback")
CNI_PREFERRED_VERSION = "0.2.0"  # what the upstream instructions use, when the plugins still support it
CNI_BIN_DIRS = ("/opt/cni/bin", "/usr/lib/cni", "/usr/libexec/cni")


def bridge_network(cni_version: str) -> dict[str, Any]:
    return {
        "cniVersion": cni_version,
        "name": "mynet",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": True,
        "ipMasq": True,
        "ipam": {"type": "host-local", "subnet": "10.22.0.0/16", "routes": [{"dst": "0.0.0.0/0"}]},
    }


def loopback_network(cni_version: str) -> dict[str, Any]:
    return {"cniVersion": cni_version, "name": "lo", "type": "loopback"}


def cni_configs(cni_version: str) -> dict[str, str]:
    """File name -> JSON text for /etc/cni/net.d."""
    return {
        "10-mynet.conf": json.dumps(bridge_network(cni_version), indent=4) + "\n",
        "99-loopback.conf": json.dumps(loopback_network(cni_version), indent=4) + "\n",
    }


def pick_cni_version(supported: Sequence[str]) -> str:
    """The upstream 0.2.0 when the plugins support it, else the highest version they report."""
    if not supported:
        raise KilnError("CNI plugins reported no supported spec versions")
    if CNI_PREFERRED_VERSION in supported:
        return CNI_PREFERRED_VERSION

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) if p.isdigit() else 0 for p in v.split("."))

    return max(supported, key=key)


@dataclass(frozen=True)
class Flags:
    """The ginkgo command line. Defaults are image-builder's; the CLI may override nodes/focus/skip."""

    ginkgo: tuple[str, ...] = GINKGO_FLAGS
    e2e_node: tuple[str, ...] = E2E_NODE_FLAGS
    extra: tuple[str, ...] = field(default=())

    def with_overrides(
        self, *, nodes: int | None = None, focus: str | None = None, skip: str | None = None
    ) -> Flags:
        out = []
        for flag in self.ginkgo:
            name = flag.split("=", 1)[0]
            if name == "--nodes" and nodes is not None:
                flag = f"--nodes={nodes}"
            elif name == "--focus" and focus is not None:
                flag = f"--focus={focus}"
            elif name == "--skip" and skip is not None:
                flag = f"--skip={skip}"
            out.append(flag)
        return Flags(tuple(out), self.e2e_node, self.extra)

    def argv(self, *, k8s_bin_dir: str, containerd: str, report_dir: str) -> list[str]:
        """`./ginkgo FLAGS ./e2e_node.test -- TEST_FLAGS`, placeholders filled in."""
        values = {"k8s_bin_dir": k8s_bin_dir, "containerd": containerd, "report_dir": report_dir}
        test_flags = [_fill(f, values) for f in (*self.e2e_node, REPORT_FLAG, *self.extra)]
        return ["./ginkgo", *self.ginkgo, "./e2e_node.test", "--", *test_flags]


def _fill(flag: str, values: Mapping[str, str]) -> str:
    for name, value in values.items():
        flag = flag.replace("{" + name + "}", value)
    return flag


# --- the tarball -----------------------------------------------------------------------------------


def extract_binaries(tarball: Path, dest: Path) -> dict[str, Path]:
    """Pull ginkgo and e2e_node.test out of kubernetes-test.tar.gz into `dest` (nothing else is written).

    InputError (exit 2) names the tarball and what is wrong with it."""
    if not tarball.is_file():
        raise InputError(f"{tarball}: test tarball not found (from --tests)")
    wanted = {f"{TARBALL_DIR}/{name}": name for name in BINARIES}
    found: dict[str, Path] = {}
    try:
        with tarfile.open(tarball, "r:*") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if name not in wanted:
                    continue
                if not member.isfile():
                    raise InputError(f"{tarball}: {name} is not a regular file")
                src = tar.extractfile(member)
                assert src is not None
                dest.mkdir(parents=True, exist_ok=True)
                out = dest / wanted[name]
                with src, open(out, "wb") as fh:
                    while chunk := src.read(1 << 20):
                        fh.write(chunk)
                out.chmod(0o755)
                found[wanted[name]] = out
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InputError(
            f"{tarball}: not a readable tar.gz ({exc})", hint="pass kubernetes-test.tar.gz"
        ) from exc
    missing = [f"{TARBALL_DIR}/{n}" for n in BINARIES if n not in found]
    if missing:
        raise InputError(
            f"{tarball}: missing {', '.join(missing)}; is this kubernetes-test.tar.gz?",
            hint="download https://dl.k8s.io/KUBERNETES_VERSION/kubernetes-test-linux-amd64.tar.gz",
        )
    return found


# --- the run ---------------------------------------------------------------------------------------


class Remote(Protocol):
    """What the run needs from the guest: kiln.vm.ssh.Session has exactly this."""

    def run(
        self, cmd: str | Sequence[str], *, check: bool = ..., timeout: float | None = ...,
        on_line: Callable[[str], None] | None = ..., input_text: str | None = ...,
    ) -> tuple[int, str, str]: ...  # fmt: skip

    def put(self, local: str | Path, remote: str, mode: int | None = ...) -> None: ...

    def get(self, remote: str, local: str | Path) -> Path: ...


class ConformanceFailed(KilnError):
    """ginkgo reported failures (exit 1); the JUnit results were still collected."""


@dataclass
class Result:
    returncode: int
    results_dir: Path
    junit_files: list[Path]
    log_file: Path
    argv: list[str]
    cni_version: str
    cni_bin_dir: str


def find_cni_bin_dir(remote: Remote, candidates: Sequence[str]) -> str:
    """The first directory that holds every plugin in CNI_PLUGINS; KilnError lists what was searched."""
    for directory in candidates:
        test = " && ".join(f"test -x {shlex.quote(posixpath.join(directory, p))}" for p in CNI_PLUGINS)
        rc, _, _ = remote.run(test, check=False, timeout=30)
        if rc == 0:
            return directory
    raise KilnError(
        f"the image carries no complete set of CNI plugins ({', '.join(CNI_PLUGINS)}); "
        f"looked in {', '.join(candidates)}",
        hint="build the image with CNI plugins (cni_source_type pkg or http)",
    )


def cni_supported_versions(remote: Remote, bin_dir: str) -> list[str]:
    """Ask the image's bridge plugin which CNI spec versions it speaks (CNI_COMMAND=VERSION)."""
    plugin = shlex.quote(posixpath.join(bin_dir, "bridge"))
    _, out, _ = remote.run(f"CNI_COMMAND=VERSION {plugin} </dev/null", timeout=30)
    try:
        return [str(v) for v in json.loads(out)["supportedVersions"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise KilnError(f"{bin_dir}/bridge: unexpected VERSION answer {out.strip()!r}") from exc


def check_cni(remote: Remote, bin_dir: str, conf_dir: str, sudo: str = "sudo -n") -> str:
    """Prove the written bridge config works with the image's plugins: CNI ADD in a scratch network
    namespace must hand out an address in 10.22.0.0/16; then DEL and remove the namespace. Returns it."""
    q = shlex.quote
    netns = "kiln-cni-check"
    conf = posixpath.join(conf_dir, "10-mynet.conf")
    env = (
        f"{sudo} env CNI_CONTAINERID={netns} CNI_NETNS=/var/run/netns/{netns} CNI_IFNAME=eth0 "
        f"CNI_PATH={q(bin_dir)}"
    )
    plugin = q(posixpath.join(bin_dir, "bridge"))
    remote.run(f"{sudo} ip netns del {netns} 2>/dev/null; {sudo} ip netns add {netns}", timeout=60)
    try:
        rc, out, err = remote.run(f"{env} CNI_COMMAND=ADD {plugin} < {q(conf)}", check=False, timeout=60)
        try:
            answer = json.loads(out)
            ips = [answer["ip4"]["ip"]] if "ip4" in answer else [i["address"] for i in answer.get("ips", [])]
        except (ValueError, KeyError, TypeError):
            ips = []
        address = next((ip for ip in ips if ip.startswith("10.22.")), "")
        if rc != 0 or not address:
            answer_text = (out + err).strip()
            raise KilnError(f"{conf}: the bridge plugin in {bin_dir} rejected it (exit {rc}): {answer_text}")
    finally:
        remote.run(f"{env} CNI_COMMAND=DEL {plugin} < {q(conf)}", check=False, timeout=60)
        remote.run(f"{sudo} ip netns del {netns}", check=False, timeout=60)
    return address


def run(
    remote: Remote,
    binaries: Mapping[str, Path],
    results_dir: Path,
    *,
    flags: Flags = Flags(),
    cni_bin_dirs: Sequence[str] = CNI_BIN_DIRS,
    cni_conf_dir: str = "/etc/cni/net.d",
    remote_dir: str = "/var/tmp/kiln-conformance",
    sudo: str = "sudo -n",
    timeout: float | None = 4 * 3600,
    on_line: Callable[[str], None] | None = None,
    cni_check: bool = True,
) -> Result:
    """Run the whole conformance flow over `remote`; see the module docstring."""
    q = shlex.quote
    bin_dir = find_cni_bin_dir(remote, cni_bin_dirs)
    version = pick_cni_version(cni_supported_versions(remote, bin_dir))
    log.info("CNI: plugins in %s, cniVersion %s, writing %s", bin_dir, version, cni_conf_dir)
    staging = posixpath.join(remote_dir, "staging")
    remote.run(
        f"{sudo} rm -rf {q(remote_dir)} && {sudo} mkdir -p {q(staging)} && {sudo} chmod 1777 {q(staging)}"
    )
    remote.run(f"{sudo} mkdir -p {q(cni_conf_dir)}")
    for name, text in cni_configs(version).items():
        target = posixpath.join(cni_conf_dir, name)
        remote.run(f"{sudo} tee {q(target)} >/dev/null && {sudo} chmod 0644 {q(target)}", input_text=text)
    if cni_check:
        log.info("CNI: bridge ADD in a scratch netns got %s", check_cni(remote, bin_dir, cni_conf_dir, sudo))

    work = posixpath.join(remote_dir, TARBALL_DIR)
    report_dir = posixpath.join(remote_dir, "results")
    remote.run(f"{sudo} mkdir -p {q(work)} {q(report_dir)}")
    for name, local in binaries.items():
        staged = posixpath.join(staging, name)
        log.info("copying %s (%d MiB) into the guest", name, local.stat().st_size >> 20)
        remote.put(local, staged, mode=0o755)
        remote.run(f"{sudo} mv {q(staged)} {q(posixpath.join(work, name))}")

    _, kubelet, _ = remote.run("command -v kubelet || true", timeout=30)
    k8s_bin_dir = posixpath.dirname(kubelet.strip()) if kubelet.strip() else "/usr/bin"
    _, containerd, _ = remote.run("command -v containerd || true", timeout=30)
    argv = flags.argv(
        k8s_bin_dir=k8s_bin_dir,
        containerd=containerd.strip() or "/usr/local/bin/containerd",
        report_dir=report_dir,
    )
    command = f"cd {q(work)} && {sudo} {shlex.join(argv)}"
    log.info("running: %s", command)

    results_dir.mkdir(parents=True, exist_ok=True)
    log_file = results_dir / "conformance.log"
    with open(log_file, "w") as fh:
        fh.write(f"$ {command}\n")

        def line(text: str) -> None:
            fh.write(text + "\n")
            fh.flush()
            if on_line is not None:
                on_line(text)

        rc, _, err = remote.run(command, check=False, timeout=timeout, on_line=line)
        if err:
            fh.write(err)

    _, listing, _ = remote.run(f"{sudo} find {q(report_dir)} -maxdepth 2 -type f -name '*.xml'", timeout=60)
    junit: list[Path] = []
    for path in sorted(p for p in listing.splitlines() if p.strip()):
        staged = posixpath.join(staging, posixpath.basename(path))
        remote.run(f"{sudo} install -m 0644 {q(path)} {q(staged)}")
        junit.append(remote.get(staged, results_dir / posixpath.basename(path)))
    return Result(rc, results_dir, junit, log_file, argv, version, bin_dir)
