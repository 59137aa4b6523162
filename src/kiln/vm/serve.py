"""`kiln serve BUILD_DIR`: the netboot set over HTTP, for labs and tests.

    /boot.ipxe             the iPXE script, its `base` set to the URL the client reaches this server at
                           (--advertise; default http://ADDRESS:PORT, or http://10.0.2.2:PORT for QEMU guests
                           when ADDRESS is a loopback or wildcard address)
    /vmlinuz, /initrd, /filesystem.squashfs
    /seed/user-data, /seed/meta-data (--cidata ISO|DIR): a NoCloud seed; the kernel command line then says
                           ds=nocloud;s=BASE/seed/ (nocloud-net for a cloud-init before 24.1)

With --hosts INVENTORY (hosts.py), per host, to the addresses --allow permits (default: the subnet of the
address served on; seeds may carry join tokens):
    /boot.ipxe             a chain that picks the host by ${net0/mac}
    /hosts/NAME/boot.ipxe, /hosts/01-MAC: the host's iPXE script
    /hosts/NAME/{user-data,meta-data,network-config,vendor-data}: its NoCloud seed
    /hosts/NAME.iso, /hosts/NAME/NAME.iso: its live ISO, the base ISO streamed with the host's slots laid
                           over it; the slots are made on the first request, cached by the seed's content
                           hash, one generation for concurrent requests
    /hosts/NAME/cidata.iso: the seed as an ISO, for the disk images
A changed inventory file is read again on the next request; an unknown host, MAC or path is a 404 that
names nothing.

Production netboot serves the same files from any HTTP server (docs/live.md: nginx, dnsmasq + iPXE).
"""

from __future__ import annotations

import http.server
import ipaddress
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln.artifacts import compare
from kiln.artifacts.formats import NETBOOT_DIR, ipxe_script, netboot_images
from kiln.artifacts.layers import NETBOOT_CPIO
from kiln.config.inventory import normal_mac
from kiln.core.builddir import BuildDir
from kiln.core.errors import InputError, KilnError
from kiln.vm import hosts
from kiln.vm.hosts import Factory

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FILES = ("vmlinuz", "initrd", "filesystem.squashfs")
QEMU_HOST = "10.0.2.2"  # the host as a QEMU user-networking guest sees it


@dataclass(frozen=True)
class Answer:
    size: int
    body: bytes | None = None  # the whole answer, or
    path: Path | None = None  # a file to send, or
    chunks: Callable[[], Iterator[bytes]] | None = None  # the bytes of a per-host ISO
    status: int = 200


FORBIDDEN = Answer(0, status=403)
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Server:
    def __init__(
        self,
        build: BuildDir,
        *,
        address: str = "127.0.0.1",
        port: int = 0,
        advertise: str | None = None,
        seed: Mapping[str, bytes] | None = None,
        hosts: Factory | None = None,
        allow: Sequence[Network] | None = None,
        say: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.dir = build.path / NETBOOT_DIR
        self.images = netboot_images(self.dir)  # a base + overlay set: the images it stacks
        self.files = FILES if self.images is None else ("vmlinuz", "initrd", NETBOOT_CPIO, *self.images)
        missing = [n for n in self.files if not (self.dir / n).is_file()]
        if missing:
            raise InputError(
                f"{self.dir}: no netboot set ({', '.join(missing)} missing)",
                hint="build with the netboot format: make build-qemu-debian-12 FORMATS='qcow2 ova netboot'",
            )
        self.name = build.name
        self.kernel_params = str(build.values().get("extra_kernel_boot_params") or "")
        # cloud-init's name for a seed over HTTP, asked of the image only where there is a seed to serve
        self.datasource = compare.seed_datasource(build) if (seed or hosts is not None) else ""
        self.seed = dict(seed or {})
        self.hosts = hosts
        self.say = say
        # the allow-list guards seeds only; a server with none asks no interface for its subnets
        if allow is not None:
            self.allow = list(allow)
        else:
            self.allow = served_networks(address) if (self.seed or hosts is not None) else []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: object) -> None:  # quiet: the caller logs what it needs
                return

            def do_HEAD(self) -> None:
                self._answer(head=True)

            def do_GET(self) -> None:
                self._answer(head=False)

            def _answer(self, head: bool) -> None:
                try:
                    answer = server.lookup(self.path.split("?", 1)[0], self.client_address[0])
                except KilnError as err:  # a host whose media cannot be made: say why here, 500 there
                    server.say(f"kiln serve: {self.path}: {err.message}")
                    self.send_error(500)
                    return
                if answer is None or answer.status != 200:
                    self.send_error(answer.status if answer else 404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(answer.size))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if head:
                    return
                try:
                    if answer.body is not None:
                        self.wfile.write(answer.body)
                    elif answer.chunks is not None:
                        for block in answer.chunks():
                            self.wfile.write(block)
                    elif answer.path is not None:
                        with open(answer.path, "rb") as fh:
                            while block := fh.read(1 << 20):
                                self.wfile.write(block)
                except (BrokenPipeError, ConnectionResetError):
                    return

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
        if self.hosts is not None:
            macs = {m: h.name for h in self.hosts.inventory().hosts for m in h.macs}
            return hosts.ipxe_chain(self.base, macs).encode()
        extra = f"ds={self.datasource};s={self.base}/seed/" if self.seed else ""
        return ipxe_script(self.name, self.base, extra, self.kernel_params, self.images).encode()

    def allowed(self, client: str) -> bool:
        try:
            ip = ipaddress.ip_address(client)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allow if net.version == ip.version)

    def lookup(self, path: str, client: str = "127.0.0.1") -> Answer | None:
        try:
            name = urllib.parse.unquote(path, errors="strict").lstrip("/")
        except UnicodeDecodeError:
            return None
        if name == "boot.ipxe":
            if self.hosts is not None and not self.allowed(client):  # the chain lists hosts and MACs
                return FORBIDDEN
            body = self.script()
            return Answer(len(body), body=body)
        if name in self.files:
            file = self.dir / name
            return Answer(file.stat().st_size, path=file)
        parts = name.split("/")
        if not all(_SEGMENT.match(p) for p in parts):  # no .., no empty or hidden segments, no odd bytes
            return None
        if parts[0] == "seed" and len(parts) == 2 and parts[1] in self.seed:
            if not self.allowed(client):
                return FORBIDDEN
            return Answer(len(self.seed[parts[1]]), body=self.seed[parts[1]])
        if parts[0] == "hosts" and self.hosts is not None and len(parts) in (2, 3):
            if not self.allowed(client):  # before any lookup: which names exist is not told either
                return FORBIDDEN
            return self._host_asset(parts[1:])
        return None

    def _host_asset(self, parts: list[str]) -> Answer | None:
        factory = self.hosts
        assert factory is not None
        if len(parts) == 1:
            first = parts[0]
            if first.startswith("01-") and (host := factory.by_mac(first[3:])) is not None:
                asset = "boot.ipxe"
            elif first.endswith(".iso") and (host := factory.host(first[:-4])) is not None:
                asset = f"{host.name}.iso"
            else:
                return None
        else:
            host = factory.host(parts[0])
            if host is None:
                return None
            asset = parts[1]
            if asset.startswith("01-"):
                asset = "boot.ipxe" if normal_mac(asset[3:]) in host.macs else ""
        seed = factory.seed(host)
        body: bytes | None = None
        if asset == "boot.ipxe":
            body = hosts.ipxe_host(self.name, self.base, host, seed, self.kernel_params, self.images,
                                   datasource=self.datasource).encode()  # fmt: skip
        elif asset in seed.live:  # the seed netboot fetches
            body = seed.live[asset].encode()
        elif asset == "vendor-data":
            body = b""
        elif asset == "cidata.iso":
            body = hosts.seed_iso_bytes(seed)
        elif asset == f"{host.name}.iso" and factory.iso is not None:
            patch = factory.iso_patch(host)
            where = factory.slots()
            iso = factory.iso
            return Answer(iso.stat().st_size, chunks=lambda: hosts.stream(iso, patch, where))
        if body is None:
            return None
        return Answer(len(body), body=body)

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


def served_networks(address: str) -> list[Network]:
    """The subnets a server on `address` serves: its own, or every local interface's for a wildcard."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ip = None
    if ip is not None and not ip.is_unspecified:
        found = [n for n in local_networks() if ip in n]
        return found or [ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")]
    return local_networks()


def local_networks() -> list[Network]:
    """Every local interface's subnet (loopback included: QEMU user networking connects from there)."""
    import json
    import subprocess

    nets: list[Network] = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=10).stdout
        for link in json.loads(out or "[]"):
            for addr in link.get("addr_info", []):
                nets.append(ipaddress.ip_interface(f"{addr['local']}/{addr['prefixlen']}").network)
    except (OSError, ValueError, KeyError, subprocess.SubprocessError):
        pass
    return list(dict.fromkeys(nets))


def parse_allow(values: Sequence[str]) -> list[Network]:
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise InputError(f"--allow {value!r}: not an address or CIDR (10.0.2.0/24)") from None
    return out


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
