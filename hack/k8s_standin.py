#!/usr/bin/env python3
"""TEST FIXTURE: what an offline build cannot download, served over local HTTP with sha256 sums.

Kubernetes' and containerd's release servers (dl.k8s.io, github.com) cannot be reached from the machines kiln
is tested on, so builds that must work offline point kiln's http sources at this server. It answers:

    /VERSION/bin/linux/amd64/NAME          kubelet, kubeadm, kubectl for ANY version: a small shell script
                                           (NOT the real binary) that answers `kubelet --version`,
                                           `kubeadm version -o short`, `kubectl version --client` with VERSION
    /VERSION/bin/linux/amd64/NAME.sha256   its sha256, bare hex (as dl.k8s.io serves it)
    /containerd/vV/containerd-V-linux-amd64.tar.gz(.sha256sum)
                                           the REAL containerd of the build host's Debian (its .deb, fetched
                                           with apt-get download), repackaged in the layout of containerd's
                                           release tarball (bin/containerd, bin/containerd-shim-runc-v2,
                                           bin/ctr); V is that package's upstream version
    /runc/vV/runc.amd64, /runc/vV/runc.sha256sum
                                           the REAL runc of the host's Debian, as runc's release names it
    /cri-tools/vV/crictl-vV-linux-amd64.tar.gz(.sha256)
                                           crictl for ANY version: a stand-in script answering
                                           `crictl --version`

The same kiln code paths (kubernetes_http_source, containerd_url, runc_url, crictl_url) download real
releases from a user's own mirror.

    k8s_standin.py serve [--host 127.0.0.1] [--port 8088]
    k8s_standin.py sums --version V              print {"kubelet": HEX, ...} for version V
    k8s_standin.py vars --version V [--version V2 ...] [--url URL]
                                                 print the var file `run` writes (URL default http://10.0.2.2:1)
    k8s_standin.py run --version V [--version V2 ...] [--port 0] -- COMMAND...
        serve while COMMAND runs. COMMAND gets KILN_K8S_STANDIN_URL=http://10.0.2.2:PORT (the host as the
        QEMU guest sees it) in its environment; in its arguments "{url}" becomes that URL and "{varfile}"
        a kiln var file (JSON) selecting this server: kubernetes_source_type=http,
        kubernetes_http_source=URL, kubernetes_semver=V (the first), kubernetes_http_sha256 for every
        version given (keys VERSION/NAME; kiln picks the build's own); containerd (http source), runc and
        crictl (the Kubernetes minor's, VMINOR.0) with their URLs and sums.

Repackaged Debian binaries are cached under $XDG_CACHE_HOME/kiln/standin (default ~/.cache); the tarball is
made byte-for-byte the same every time, so its sha256 (part of kiln's stage IDs) is stable.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

from kiln.core import proc, tempdirs
from kiln.core.builddir import sha256_file  # the project's one file hasher (the fixture runs in kiln's venv)

NAMES = ("kubelet", "kubeadm", "kubectl")
PATH_RE = re.compile(
    r"^/(v\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?)/bin/linux/amd64/(kubelet|kubeadm|kubectl)(\.sha256)?$"
)
RUNTIME_RE = re.compile(
    r"^/(?:containerd/v(?P<cv>[0-9][0-9A-Za-z.]*)/containerd-(?P=cv)-linux-amd64\.tar\.gz(?P<csum>\.sha256sum)?"
    r"|runc/v(?P<rv>[0-9][0-9A-Za-z.]*)/runc(?:\.amd64|(?P<rsum>\.sha256sum))"
    r"|cri-tools/v(?P<tv>[0-9][0-9A-Za-z.-]*)/crictl-v(?P=tv)-linux-amd64\.tar\.gz(?P<tsum>\.sha256)?)$"
)
GUEST_HOST = "10.0.2.2"  # the build host as a QEMU user-networking guest reaches it
CONTAINERD_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr")


def standin_script(name: str, version: str) -> bytes:
    """The stand-in program for `name` at `version`: prints what the real one prints for version queries."""
    doc = json.dumps({"clientVersion": {"gitVersion": version, "platform": "linux/amd64"}})
    answers = {
        "kubelet": f'case "$*" in *--version*) echo "Kubernetes {version}"; exit 0;; esac',
        "kubeadm": (
            'case "$*" in "version -o short"|"version --output short"|"version --output=short")'
            f' echo "{version}";'
            f' exit 0;; "version -o json"|"version --output json"|"version --output=json") echo \'{doc}\';'
            f" exit 0;; version*) echo 'kubeadm version: &version.Info{{GitVersion:\"{version}\"}}';"
            " exit 0;; esac"
        ),
        "kubectl": (
            'case "$*" in *version*--client*-o*json*|*version*--client*--output*json*)'
            f" echo '{doc}'; exit 0;; *version*--client*|*version*--short*)"
            f' echo "Client Version: {version}"; exit 0;; esac'
        ),
    }
    return (
        "#!/bin/sh\n"
        f"# kiln TEST FIXTURE: stand-in {name} {version} (not the real Kubernetes binary)\n"
        f"{answers[name]}\n"
        f'echo "{name} {version}: kiln test stand-in; only version queries are answered" >&2\n'
        "exit 1\n"
    ).encode()


def crictl_script(version: str) -> bytes:
    return (
        "#!/bin/sh\n"
        f"# kiln TEST FIXTURE: stand-in crictl {version} (not the real cri-tools binary)\n"
        f'case "$*" in *--version*) echo "crictl version v{version}"; exit 0;; esac\n'
        f'echo "crictl {version}: kiln test stand-in; only --version is answered" >&2\n'
        "exit 1\n"
    ).encode()


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kiln" / "standin"


def upstream_version(deb_version: str) -> str:
    """1.6.20~ds1-1+deb12u3 -> 1.6.20: the epoch, the Debian suffix and the revision dropped."""
    return re.split(r"[~+-]", deb_version.split(":", 1)[-1], maxsplit=1)[0]


def _candidate(package: str) -> str:
    """The version apt would install; the package lists are fetched once if this host has none yet."""
    for attempt in range(2):
        out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True).stdout
        match = re.search(r"Candidate:\s*(\S+)", out)
        if match and match.group(1) != "(none)":
            return match.group(1)
        if attempt == 0 and os.geteuid() == 0:
            subprocess.run(["apt-get", "update", "-qq"], check=False)
    raise SystemExit(f"k8s-standin: apt knows no {package} package on this host (run apt-get update)")


def _debian_files(package: str, wanted: dict[str, str]) -> tuple[str, dict[str, Path]]:
    """Files of the host Debian's `package` (name -> path inside the .deb), extracted into the cache once.
    Returns the package's upstream version and name -> cached path."""
    deb_version = _candidate(package)
    root = cache_root() / f"{package}_{deb_version}"
    if not (root / ".complete").exists():
        cache_root().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_root(), prefix=".fetch-") as tmp:
            subprocess.run(["apt-get", "download", f"{package}={deb_version}"], cwd=tmp, check=True,
                           capture_output=True)  # fmt: skip
            (deb,) = Path(tmp).glob("*.deb")
            subprocess.run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"], check=True)
            out = Path(tmp) / "out"
            out.mkdir()
            for name, inside in wanted.items():
                shutil.copy2(Path(tmp) / "x" / inside, out / name)
            (out / ".complete").touch()
            try:
                os.rename(out, root)
            except OSError:  # a stand-in started alongside made it first
                if not (root / ".complete").exists():
                    raise
    return upstream_version(deb_version), {name: root / name for name in wanted}


def tarball(members: dict[str, bytes]) -> bytes:
    """A .tar.gz of executables, byte-for-byte the same for the same members (no times, no owners)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime, info.uname, info.gname = len(data), 0o755, 0, "root", "root"
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


_LOCK = threading.Lock()
_MEMO: dict[str, tuple[str, Path]] = {}


def containerd() -> tuple[str, Path]:
    """(version, path) of the repackaged containerd release tarball."""
    with _LOCK:
        if "containerd" not in _MEMO:
            version, files = _debian_files("containerd", {n: f"usr/bin/{n}" for n in CONTAINERD_BINARIES})
            target = files["containerd"].parent / f"containerd-{version}-linux-amd64.tar.gz"
            if not target.exists():
                data = tarball({f"bin/{n}": files[n].read_bytes() for n in CONTAINERD_BINARIES})
                tmp = target.with_name(f".{target.name}.{os.getpid()}")
                tmp.write_bytes(data)
                os.replace(tmp, target)
            _MEMO["containerd"] = (version, target)
        return _MEMO["containerd"]


def runc() -> tuple[str, Path]:
    """(version, path) of the host Debian's runc, named as runc's release names it."""
    with _LOCK:
        if "runc" not in _MEMO:
            version, files = _debian_files("runc", {"runc.amd64": "usr/sbin/runc"})
            _MEMO["runc"] = (version, files["runc.amd64"])
        return _MEMO["runc"]


def crictl_version_for(kubernetes: str) -> str:
    """crictl follows the Kubernetes minor release: v1.36.1 -> 1.36.0."""
    match = re.match(r"v?(\d+)\.(\d+)", kubernetes)
    if not match:
        raise SystemExit(f"k8s-standin: not a Kubernetes version: {kubernetes}")
    return f"{match.group(1)}.{match.group(2)}.0"


def var_values(versions: list[str], url: str) -> dict[str, object]:
    """The kiln var file selecting this server at `url` for the Kubernetes `versions` (the first is built)."""
    cv, cpath = containerd()
    rv, rpath = runc()
    tv = crictl_version_for(versions[0])
    return {
        "kubernetes_semver": versions[0],
        "kubernetes_source_type": "http",
        "kubernetes_http_source": url,
        "kubernetes_http_sha256": {f"{v}/{n}": h for v in versions for n, h in sums(v).items()},
        "containerd_source_type": "http",
        "containerd_version": cv,
        "containerd_url": f"{url}/containerd/v{cv}/containerd-{cv}-linux-amd64.tar.gz",
        "containerd_sha256": sha256_file(cpath),
        "runc_version": rv,
        "runc_url": f"{url}/runc/v{rv}/runc.amd64",
        "runc_sha256": sha256_file(rpath),
        "crictl_version": tv,
        "crictl_url": f"{url}/cri-tools/v{tv}/crictl-v{tv}-linux-amd64.tar.gz",
        "crictl_sha256": hashlib.sha256(tarball({"crictl": crictl_script(tv)})).hexdigest(),
    }


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self._answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        match = PATH_RE.match(path)
        runtime = RUNTIME_RE.match(path)
        body: bytes | Path
        summed = False  # a sum file was asked for: bare hex, or "HEX  NAME" (sum_name) as sha256sum writes
        sum_name = ""
        if match:
            version, name, sha_suffix = match.groups()
            body, summed = standin_script(name, version), bool(sha_suffix)
        elif runtime and runtime["tv"]:
            body, summed = tarball({"crictl": crictl_script(runtime["tv"])}), bool(runtime["tsum"])
        elif runtime and (runtime["cv"] or runtime["rv"]):
            version, body = containerd() if runtime["cv"] else runc()
            if version != (runtime["cv"] or runtime["rv"]):
                self.send_error(404, f"kiln k8s stand-in: only version {version} (the host's Debian package)")
                return
            summed = bool(runtime["csum"] or runtime["rsum"])
            sum_name = f"containerd-{version}-linux-amd64.tar.gz" if runtime["cv"] else "runc.amd64"
        else:
            self.send_error(404, "kiln k8s stand-in: unknown path")
            return
        if summed:
            digest = hashlib.sha256(body).hexdigest() if isinstance(body, bytes) else sha256_file(body)
            body = (f"{digest}  {sum_name}" if sum_name else digest).encode() + b"\n"
        size = len(body) if isinstance(body, bytes) else body.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if not send_body:
            return
        if isinstance(body, bytes):
            self.wfile.write(body)
        else:
            with open(body, "rb") as fh:
                shutil.copyfileobj(fh, self.wfile, 1 << 20)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        sys.stderr.write(f"k8s-standin: {self.address_string()} {format % args}\n")


def sums(version: str) -> dict[str, str]:
    return {name: hashlib.sha256(standin_script(name, version)).hexdigest() for name in NAMES}


def start(host: str = "127.0.0.1", port: int = 0) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="serve until interrupted")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8088)
    sums_p = sub.add_parser("sums", help="print the stand-ins' sha256 sums for a version, as JSON")
    sums_p.add_argument("--version", required=True)
    vars_p = sub.add_parser("vars", help="print the var file `run` writes, as JSON")
    vars_p.add_argument("--version", required=True, action="append")
    vars_p.add_argument("--url", default=f"http://{GUEST_HOST}:1")
    run = sub.add_parser("run", help="serve while a command runs")
    run.add_argument(
        "--version", required=True, action="append", help="Kubernetes version(s) the var file has sums for"
    )
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=0)
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.cmd == "sums":
        print(json.dumps(sums(args.version), indent=2))
        return 0
    if args.cmd == "vars":
        print(json.dumps(var_values(args.version, args.url), indent=2))
        return 0
    server = start(args.host, args.port)
    port = server.server_address[1]
    if args.cmd == "serve":
        print(
            f"k8s-standin: serving stand-in kubelet/kubeadm/kubectl on http://{args.host}:{port}", flush=True
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            return 0
    command = [a for a in args.command if a != "--"] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("run: a command is required after --")
    url = f"http://{GUEST_HOST}:{port}"
    print(
        f"k8s-standin: TEST FIXTURE serving stand-in Kubernetes binaries at {url} (host port {port})",
        flush=True,
    )
    env = dict(os.environ, KILN_K8S_STANDIN_URL=url)
    child: subprocess.Popen[bytes] | None = None
    early: list[int] = []  # a signal that came before the command started: passed on once it has

    def pass_on(signum: int, frame: object) -> None:
        """SIGTERM or SIGHUP to the wrapper (make passes SIGTERM to its child) goes to the command, which
        then cleans up and ends; the wrapper waits for it and only then stops serving."""
        if child is None:
            early.append(signum)
        else:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup's ignored SIGHUP stays ignored
            signal.signal(sig, pass_on)
    # make killed outright (kill -9, a CI runner's timeout) sends no signal on: started by make (MAKELEVEL),
    # the wrapper takes make's end as a SIGTERM (make outlives its recipes, `nohup make &` included; run by
    # hand under nohup, the wrapper goes on when its shell ends). The command takes the wrapper's end as a
    # SIGTERM: it cannot build on without the server. Either way kiln cleans up and ends.
    if os.environ.get("MAKELEVEL"):
        parent = os.getppid()
        proc.parent_death_signal(signal.SIGTERM)()
        if os.getppid() != parent:  # make ended before the request was made
            early.append(signal.SIGTERM)
    with_wrapper = proc.parent_death_signal(signal.SIGTERM)
    # in a kiln temp dir (locked while the wrapper lives): after a kill -9 of the wrapper, the next kiln
    # build removes it with the other leftovers of runs that died
    owned = tempdirs.create(Path(tempfile.gettempdir()), "kiln-standin")
    varfile = owned.path / "k8s-standin.json"
    try:
        varfile.write_text(json.dumps(var_values(args.version, url), indent=2))
        if early:
            return 128 + early[0]
        child = subprocess.Popen(
            [a.replace("{url}", url).replace("{varfile}", str(varfile)) for a in command], env=env,
            preexec_fn=with_wrapper,
        )  # fmt: skip
        for signum in early:
            child.send_signal(signum)
        return child.wait()
    except KeyboardInterrupt:
        if child is None:
            return 130
        child.send_signal(signal.SIGINT)
        return child.wait() or 130
    finally:
        server.shutdown()
        shutil.rmtree(owned.path, ignore_errors=True)
        owned.release()


if __name__ == "__main__":
    sys.exit(main())
