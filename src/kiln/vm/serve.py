"""`kiln serve BUILD_DIR`: the netboot set over HTTP, for labs and tests.

    /boot.ipxe             the iPXE script, its `base` set to the URL the client reaches this server at
                           (--advertise; default http://ADDRESS:PORT, or http://10.0.2.2:PORT for QEMU guests
                           when ADDRESS is a loopback or wildcard address)
    /vmlinuz, /initrd, /filesystem.squashfs
    /seed/user-data, /seed/meta-data (--cidata ISO|DIR): a NoCloud seed; the kernel command line then says
                           ds=nocloud-net;s=BASE/seed/

Production netboot serves the same files from any HTTP server (docs/live.md: nginx, dnsmasq + iPXE).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Mapping
from pathlib import Path

from kiln.artifacts.formats import NETBOOT_DIR, ipxe_script
from kiln.core.builddir import BuildDir
from kiln.core.errors import InputError

FILES = ("vmlinuz", "initrd", "filesystem.squashfs")
QEMU_HOST = "10.0.2.2"  # the host as a QEMU user-networking guest sees it


class Server:
    def __init__(
        self,
        build: BuildDir,
        *,
        address: str = "127.0.0.1",
        port: int = 0,
        advertise: str | None = None,
        seed: Mapping[str, bytes] | None = None,
    ) -> None:
        self.dir = build.path / NETBOOT_DIR
        missing = [n for n in FILES if not (self.dir / n).is_file()]
        if missing:
            raise InputError(
                f"{self.dir}: no netboot set ({', '.join(missing)} missing)",
                hint="build with the netboot format: make build-qemu-debian-12 FORMATS='qcow2 ova netboot'",
            )
        self.name = build.name
        self.kernel_params = str(build.values().get("extra_kernel_boot_params") or "")
        self.seed = dict(seed or {})
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: object) -> None:  # quiet: the caller logs what it needs
                return

            def do_HEAD(self) -> None:
                self._answer(head=True)

            def do_GET(self) -> None:
                self._answer(head=False)

            def _answer(self, head: bool) -> None:
                body, path = server.lookup(self.path.split("?", 1)[0])
                if body is None and path is None:
                    self.send_error(404)
                    return
                size = len(body) if body is not None else path.stat().st_size  # type: ignore[union-attr]
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if head:
                    return
                if body is not None:
                    self.wfile.write(body)
                    return
                with open(path, "rb") as fh:  # type: ignore[arg-type]
                    while block := fh.read(1 << 20):
                        self.wfile.write(block)

        try:
            self.httpd = http.server.ThreadingHTTPServer((address, port), Handler)
        except OSError as exc:
            why = exc.strerror or exc
            raise InputError(f"kiln serve: cannot listen on {address}:{port}: {why}") from None
        self.httpd.daemon_threads = True
        bound = self.httpd.server_address[1]
        host = QEMU_HOST if address in ("127.0.0.1", "0.0.0.0", "::", "localhost") else address
        self.base = (advertise or f"http://{host}:{bound}").rstrip("/")
        self.port = bound
        self._thread: threading.Thread | None = None

    def script(self) -> bytes:
        extra = f"ds=nocloud-net;s={self.base}/seed/" if self.seed else ""
        return ipxe_script(self.name, self.base, extra, self.kernel_params).encode()

    def lookup(self, path: str) -> tuple[bytes | None, Path | None]:
        name = path.lstrip("/")
        if name == "boot.ipxe":
            return self.script(), None
        if name in FILES:
            return None, self.dir / name
        if name.startswith("seed/") and name[5:] in self.seed:
            return self.seed[name[5:]], None
        return None, None

    def start(self) -> Server:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def seed_files(source: Path) -> dict[str, bytes]:
    """A NoCloud seed from a cidata ISO (as `make -C cloudinit` writes it) or a directory of seed files."""
    from kiln.vm.cidata import SEED_FILES, read_iso

    if source.is_dir():
        files = {n: (source / n).read_bytes() for n in SEED_FILES if (source / n).is_file()}
    elif source.is_file():
        _label, files = read_iso(source)
    else:
        raise InputError(
            f"{source}: --cidata must be a cidata ISO or a directory with user-data and meta-data"
        )
    if "user-data" not in files or "meta-data" not in files:
        raise InputError(f"{source}: a NoCloud seed needs user-data and meta-data")
    return files
