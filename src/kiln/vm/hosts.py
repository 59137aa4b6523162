"""Per-host boot media from one build and an inventory (`kiln hosts`, `kiln serve --hosts`).

A host's identity is its NoCloud seed: meta-data (hostname, an instance id derived from the seed),
user-data (kiln's cloud-config merged with the host's `user_data`) and network-config v2 matched by MAC.
cloud-init 22.4 (Debian 12) reads network-config from a seed device but not from a `seedfrom` URL, so the
live ISO and netboot also carry it on the kernel command line (`network-config=` base64 of gzip).

The per-host ISO is the build's live ISO with three fixed-size files overwritten in place
(formats.ISO_SLOTS): nothing is re-mastered. Its copy shares the base's extents where the file system can
(copy_file_range reflinks on XFS and btrfs); `kiln serve` does not copy at all: it streams the base with
the host's bytes laid over it.
"""

from __future__ import annotations

import base64
import collections
import copy
import gzip
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kiln.artifacts import compare, formats
from kiln.config.inventory import Host, Inventory
from kiln.core import inputs, tempdirs
from kiln.core.builddir import BuildDir
from kiln.core.errors import InputError
from kiln.vm import cidata

MAX_CMDLINE = 1800  # of the kernel's 2048, leaving room for what the boot loader adds


LIVE = {"growpart": {"mode": "off"}, "resize_rootfs": False}  # a live root is a squashfs under a tmpfs


@dataclass(frozen=True)
class Seed:
    files: dict[str, str]  # meta-data, user-data, network-config: for a disk image (cidata.iso)
    live: dict[str, str]  # the same for a live boot (ISO, netboot): no root to grow
    network_b64: str  # network-config for the kernel command line
    digest: str


def network_config(host: Host) -> dict[str, Any]:
    """network-config v2: the first NIC (by MAC) carries the addresses, gateway and name servers; without
    addresses every NIC asks DHCP. NICs keep their names (no set-name)."""
    ethernets: dict[str, Any] = {}
    for i, mac in enumerate(host.macs):
        nic: dict[str, Any] = {"match": {"macaddress": mac}}
        nic["dhcp4"] = host.dhcp
        if i == 0 and not host.dhcp:
            nic["addresses"] = [str(a) for a in host.addresses]
            if host.gateway is not None:
                nic["gateway6" if host.gateway.version == 6 else "gateway4"] = str(host.gateway)
        if i == 0 and host.nameservers:
            nic["nameservers"] = {"addresses": [str(n) for n in host.nameservers]}
        ethernets[f"nic{i}"] = nic
    return {"version": 2, "ethernets": ethernets}


def merge(base: Any, extra: Any) -> Any:
    """The host's user_data over kiln's cloud-config: maps merge, lists append, scalars are replaced."""
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for key, value in extra.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(extra, list):
        return base + copy.deepcopy(extra)
    return copy.deepcopy(extra)


def seed(
    host: Host,
    *,
    values: Mapping[str, Any],
    keys: Sequence[str],
    user: str,
    templates: str | os.PathLike[str],
) -> Seed:
    net = network_config(host)
    # the instance id follows the seed's content: the same inputs make the same bytes, and a changed seed
    # is a new instance to cloud-init
    basis = hashlib.sha256(f"{host.digest()}\0{user}\0{sorted(keys)}\0{sorted(values.items())}".encode())
    instance = f"kiln-{host.name}-{basis.hexdigest()[:12]}"
    files = cidata.render_seed(
        keys, user=user, hostname=host.name, instance_id=instance, values=values, templates=templates
    )
    user_data = merge(yaml.safe_load(files["user-data"]) or {}, host.user_data)
    files["user-data"] = _cloud_config(user_data)
    files["network-config"] = yaml.safe_dump(net, sort_keys=False)
    live = {**files, "user-data": _cloud_config(merge(user_data, LIVE))}
    packed = gzip.compress(files["network-config"].encode(), mtime=0)
    digest = hashlib.sha256("\0".join(f"{k}={v}" for k, v in sorted(live.items())).encode()).hexdigest()
    return Seed(files, live, base64.b64encode(packed).decode(), digest)


class _Dumper(yaml.SafeDumper):
    pass


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None  # write_files content stays readable
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def _cloud_config(doc: Mapping[str, Any]) -> str:
    return "#cloud-config\n" + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1 << 16)


def check_cmdline(line: str, host: Host) -> str:
    """The kernel takes 2048 bytes and cuts the rest silently, network-config's base64 with it."""
    if len(line.encode()) > MAX_CMDLINE:
        raise InputError(
            f"host {host.name}: its kernel command line would be {len(line.encode())} bytes, more than the "
            f"{MAX_CMDLINE} kiln allows (the kernel keeps 2048): fewer addresses or a shorter "
            "extra_kernel_boot_params"
        )
    return line


def kernel_args(seed_url: str, host_seed: Seed, host: Host) -> str:
    return f"'ds=nocloud;s={seed_url}' network-config={host_seed.network_b64}"


# --- the per-host live ISO ---------------------------------------------------------------------------


def iso_patch(build_name: str, kernel_params: str, host: Host, host_seed: Seed) -> dict[str, bytes]:
    """ISO path -> the bytes that replace that slot's content."""
    where = f"host {host.name}"
    url = f"file://{formats.ISO_MEDIUM}/{formats.ISO_SEED_DIR}/"
    # nonetworking: live-boot would otherwise write a DHCP stanza for every NIC into /etc/network/interfaces,
    # and ifupdown would bring them up before cloud-init's own config (static addresses) is looked at
    extra = f"nonetworking {kernel_args(url, host_seed, host)}"
    check_cmdline(f"{formats.live_cmdline(kernel_params)} {extra}", host)
    # grub.cfg: the ds argument holds a `;`, which GRUB's script reads as a command separator unquoted
    out = {formats.ISO_GRUB_CFG: formats.grub_cfg(f"{build_name} ({host.name})", kernel_params, extra)}
    for name in ("meta-data", "user-data"):
        out[f"{formats.ISO_SEED_DIR}/{name}"] = host_seed.live[name]
    return {p: formats.padded(t, formats.ISO_SLOTS[p], f"{where}: {p}") for p, t in out.items()}


def slots(iso: Path) -> dict[str, tuple[int, int]]:
    """ISO path -> (byte offset, size) of each slot in `iso`; InputError when the ISO has none (built by
    a kiln before per-host slots) or they are not the size kiln writes."""
    import pycdlib

    found: dict[str, tuple[int, int]] = {}
    reader = pycdlib.PyCdlib()
    try:
        reader.open(str(iso))
    except (pycdlib.pycdlibexception.PyCdlibException, OSError) as exc:
        raise InputError(f"{iso}: not a readable ISO9660 image ({exc})") from None
    try:
        for path, size in formats.ISO_SLOTS.items():
            try:
                rec = reader.get_record(rr_path=f"/{path}")
            except pycdlib.pycdlibexception.PyCdlibException:
                rec = None
            if rec is None or rec.get_data_length() != size:
                raise InputError(
                    f"{iso}: no {size}-byte /{path} to write a host's seed into",
                    hint="rebuild with this kiln (FORMATS including iso): its live ISO has the slots",
                )
            found[path] = (rec.extent_location() * 2048, size)
    finally:
        reader.close()
    return found


Slots = Mapping[str, tuple[int, int]]  # ISO path -> (byte offset, size)


def write_iso(base: Path, out: Path, patch: Mapping[str, bytes], where: Slots) -> None:
    """A copy of `base` at `out` (shared extents where the file system can) with `patch` laid over it."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(base, "rb") as src, os.fdopen(fd, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        done = 0
        try:
            while done < size:
                n = os.copy_file_range(src.fileno(), dst.fileno(), size - done)
                if n == 0:
                    break
                done += n
        except OSError:
            done = 0
        if done != size:  # no copy_file_range across these file systems
            src.seek(0)
            dst.seek(0)
            dst.truncate()
            shutil.copyfileobj(src, dst, 1 << 22)
        for path, data in patch.items():
            offset, length = where[path]
            assert len(data) == length
            dst.seek(offset)
            dst.write(data)


def stream(base: Path, patch: Mapping[str, bytes], where: Slots) -> Iterator[bytes]:
    """The per-host ISO's bytes without writing it: the base, with the host's slots laid over it."""
    spans = sorted((where[p][0], data) for p, data in patch.items())
    with open(base, "rb") as fh:
        pos = 0
        for offset, data in spans:
            while pos < offset:
                block = fh.read(min(1 << 20, offset - pos))
                if not block:
                    return
                pos += len(block)
                yield block
            fh.seek(offset + len(data))
            pos = offset + len(data)
            yield data
        while block := fh.read(1 << 20):
            yield block


# --- iPXE ----------------------------------------------------------------------------------------------

NO_BASE = """isset ${{base}} || goto nobase
{body}
:nobase
echo kiln: set base to the URL the netboot set is served at (kiln hosts --base-url URL, or kiln serve)
shell
"""


def ipxe_host(
    build_name: str,
    base: str,
    host: Host,
    host_seed: Seed,
    kernel_params: str = "",
    images: Sequence[str] | None = None,
    *,
    datasource: str,
) -> str:
    """The host's iPXE script: the build's netboot set (`images`: a base + overlay set's), the host's seed
    at BASE/hosts/NAME/ through cloud-init's `datasource` (kiln.artifacts.compare.seed_datasource)."""
    args = f"ds={datasource};s=${{base}}/hosts/{host.name}/ network-config={host_seed.network_b64}"
    # A base + overlay set's images come as initrds, with no network in the initramfs: as on the ISO
    # (iso_patch), live-boot must not write a DHCP stanza per NIC for ifupdown to bring up before
    # cloud-init's own config is read.
    if images:
        args = f"nonetworking {args}"
    text = formats.ipxe_script(f"{build_name} ({host.name})", base or "", args, kernel_params, images)
    line = next(ln for ln in text.splitlines() if ln.startswith("kernel "))
    # iPXE expands ${base} before the kernel sees the line: count it at the length it will have
    check_cmdline(line.replace("${base}", base or "http://" + "x" * 60), host)
    if not base:
        text = text.replace("isset ${base} || set base\n", "")
        head, _, body = text.partition("\nkernel ")
        text = head + "\n" + NO_BASE.format(body="kernel " + body.rstrip("\n"))
    return text


def ipxe_chain(base: str, macs: Mapping[str, str]) -> str:
    """One script for every host: picks the host by the MAC of the NIC that booted (`${netX/mac}`); an
    unknown MAC, or a host script that cannot be fetched, stops with a message saying which."""
    lines = ["#!ipxe", "# kiln: per-host boot by MAC (kiln hosts / kiln serve --hosts)"]
    if base:
        lines.append(f"isset ${{base}} || set base {base}")
    names = sorted(set(macs.values()))
    label = {name: f"host{i}" for i, name in enumerate(names)}
    for mac, name in sorted(macs.items()):
        lines.append(f"iseq ${{netX/mac}} {mac} && goto {label[name]} ||")
    lines += ["echo kiln: no host in the inventory has MAC ${netX/mac}", "shell", "exit 1"]
    for name in names:
        lines += [
            f":{label[name]}",
            f"set host {name}",
            f"chain ${{base}}/hosts/{name}/boot.ipxe || goto failed",
        ]
    lines += [":failed", "echo kiln: cannot fetch ${base}/hosts/${host}/boot.ipxe (is this client allowed?)",
              "shell", ""]  # fmt: skip
    return "\n".join(lines)


def pxe_name(mac: str) -> str:
    """The name PXE loaders look a host's config up by: 01- (Ethernet) and the MAC with dashes."""
    return "01-" + mac.replace(":", "-")


def seed_iso_bytes(host_seed: Seed) -> bytes:
    """The seed as a `cidata` ISO, for the disk images (network-config included: NoCloud reads it there)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix=".kiln-seed-") as tmp:
        path = cidata.write_iso(Path(tmp) / "cidata.iso", host_seed.files)
        return path.read_bytes()


# --- kiln hosts: every host's media in OUT ----------------------------------------------------------


@dataclass(frozen=True)
class Written:
    host: str
    seconds: float
    unique_bytes: int  # what this host adds beyond what hosts share (its slots, seed files and scripts)


@dataclass(frozen=True)
class Media:
    """What a host's files are made of, checked: its seed, its iPXE script and, with a live ISO, its
    ISO slots."""

    seed: Seed
    script: str
    patch: dict[str, bytes] | None


def media(
    build_name: str,
    kernel_params: str,
    base_url: str,
    host: Host,
    host_seed: Seed,
    iso: bool,
    images: Sequence[str] | None = None,
    *,
    datasource: str,
) -> Media:
    """A host's media; InputError when its seed outgrows a slot or a kernel command line is too long.
    `images`: the images a base + overlay netboot set stacks; `datasource`: cloud-init's name for a seed
    over HTTP."""
    patch = iso_patch(build_name, kernel_params, host, host_seed) if iso else None
    script = ipxe_host(build_name, base_url, host, host_seed, kernel_params, images, datasource=datasource)
    return Media(host_seed, script, patch)


def write_host(out: Path, host: Host, made: Media, *, iso: Path | None, where: Slots | None) -> int:
    """The host's files in the (new, empty) directory `out`; returns the bytes that are the host's own."""
    own = 0

    def put(name: str, data: bytes) -> None:
        nonlocal own
        fd = os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        own += len(data)

    for name, text in made.seed.live.items():  # served over HTTP for netboot
        put(name, text.encode())
    put("cidata.iso", seed_iso_bytes(made.seed))
    script = made.script.encode()
    put("boot.ipxe", script)
    for mac in host.macs:
        put(pxe_name(mac), script)
    if iso is not None and where is not None and made.patch is not None:
        write_iso(iso, out / f"{host.name}.iso", made.patch, where)
        own += sum(len(d) for d in made.patch.values())
    return own


def live_iso(build: BuildDir) -> Path | None:
    iso = build.path / f"{build.name}.iso"
    return iso if iso.is_file() else None


@dataclass(frozen=True)
class Plan:
    media: dict[str, Media]  # by host name
    base_url: str
    iso: Path | None
    where: Slots | None


def prepare(
    inventory: Inventory,
    build: BuildDir,
    out: Path,
    *,
    keys: Sequence[str],
    user: str,
    base_url: str,
    templates: str | os.PathLike[str],
) -> Plan:
    """Everything `kiln hosts` checks and makes before it writes (a dry run stops here): OUT may be
    written, every host's seed fits its slots and every kernel command line fits."""
    inputs.check_replaceable(out, "kiln hosts output directory")
    values = build.values()
    params = str(values.get("extra_kernel_boot_params") or "")
    iso = live_iso(build)
    where = slots(iso) if iso is not None else None
    images = formats.netboot_images(build.path / formats.NETBOOT_DIR)
    datasource = compare.seed_datasource(build)
    made = {
        h.name: media(build.name, params, base_url, h, seed(h, values=values, keys=keys, user=user,
                      templates=templates), iso is not None, images, datasource=datasource)
        for h in inventory.hosts
    }  # fmt: skip
    return Plan(made, base_url, iso, where)


def write_all(
    inventory: Inventory, build: BuildDir, out: Path, plan: Plan, *, say: Callable[[str], None]
) -> list[Written]:
    """Every host's media of `plan` (prepare) under OUT/NAME (each written to a temp dir, then renamed
    into place), and the chain script OUT/boot.ipxe."""
    if plan.iso is None:
        say(f"{build.path}: no live ISO (build with FORMATS including iso): per-host ISOs not written")
    out.mkdir(parents=True, exist_ok=True)
    inputs.mark(out, f"kiln hosts {inventory.path} {build.path}")
    written = []
    for host in inventory.hosts:
        started = time.monotonic()
        tmp = tempdirs.create(out, host.name)  # 0700: seeds carry keys and may carry join tokens
        try:
            own = write_host(tmp.path, host, plan.media[host.name], iso=plan.iso, where=plan.where)
            final = out / host.name
            if final.is_dir() and not final.is_symlink():
                old = tempdirs.create(out, f"{host.name}.old")
                os.replace(final, old.path / host.name)
                os.replace(tmp.path, final)
                shutil.rmtree(old.path)
            else:
                os.replace(tmp.path, final)
        except BaseException:
            shutil.rmtree(tmp.path, ignore_errors=True)
            raise
        finally:
            tmp.release()
        done = Written(host.name, time.monotonic() - started, own)
        written.append(done)
        say(f"{host.name}: {final}/ ({len(host.macs)} MAC(s), {'DHCP' if host.dhcp else 'static'}) "
            f"in {done.seconds:.2f} s, {inputs.human(own)} of its own")  # fmt: skip
    macs = {m: h.name for h in inventory.hosts for m in h.macs}
    (out / "boot.ipxe").write_text(ipxe_chain(plan.base_url, macs))
    return written


# --- kiln serve --hosts: the same media made on request ---------------------------------------------


class Factory:
    """Per-host assets of one build, made on the first request and cached by the seed's content hash.

    The inventory file is read again when it changes (a broken edit keeps the last good inventory and is
    reported through `say`). Concurrent requests for one asset wait for a single generation.
    """

    CACHE = 256  # per-host ISO patches kept (about 270 KiB each)

    def __init__(
        self,
        inventory_path: Path,
        build: BuildDir,
        *,
        keys: Sequence[str],
        user: str,
        templates: str | os.PathLike[str],
        say: Callable[[str], None],
    ) -> None:
        from kiln.config import inventory as inv

        self._load = inv.load
        self.path = inventory_path
        self.build = build
        self.keys = list(keys)
        self.user = user
        self.templates = templates
        self.say = say
        self.values = build.values()
        self.kernel_params = str(self.values.get("extra_kernel_boot_params") or "")
        self.iso = live_iso(build)
        self._where: Slots | None = None
        self._iso_stamp: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._inventory = self._load(inventory_path)  # a bad file at start is exit 2
        self._stamp = self._stat()
        self._seeds: dict[str, Seed] = {}
        self._patches: collections.OrderedDict[str, dict[str, bytes]] = collections.OrderedDict()
        self._making: dict[str, threading.Event] = {}
        self.generations = 0

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def inventory(self) -> Inventory:
        stamp = self._stat()
        with self._lock:
            if stamp is not None and stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._inventory = self._load(self.path)
                    self.say(f"{self.path}: read again ({len(self._inventory.hosts)} hosts)")
                except InputError as err:
                    self.say(f"{err.message} (serving the inventory as it was)")
            return self._inventory

    def host(self, name: str) -> Host | None:
        return self.inventory().host(name)

    def by_mac(self, mac: str) -> Host | None:
        return self.inventory().by_mac(mac)

    def seed(self, host: Host) -> Seed:
        key = host.digest()
        with self._lock:
            found = self._seeds.get(key)
        if found is None:
            found = seed(host, values=self.values, keys=self.keys, user=self.user, templates=self.templates)
            with self._lock:
                self._seeds[key] = found
        return found

    def slots(self) -> Slots:
        if self.iso is None:
            raise InputError(f"{self.build.path}: no live ISO (build with FORMATS including iso)")
        st = self.iso.stat()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._where is None or stamp != self._iso_stamp:  # an ISO rebuilt in place: read its slots again
            self._where = slots(self.iso)
            self._iso_stamp = stamp
        return self._where

    def iso_patch(self, host: Host) -> dict[str, bytes]:
        """The host's ISO slots: made once per seed content, however many requests ask at once."""
        host_seed = self.seed(host)
        key = host_seed.digest
        while True:
            with self._lock:
                if key in self._patches:
                    self._patches.move_to_end(key)
                    return self._patches[key]
                waiting = self._making.get(key)
                if waiting is None:
                    self._making[key] = threading.Event()
                    break
            waiting.wait()
        try:
            patch = iso_patch(self.build.name, self.kernel_params, host, host_seed)
            self.slots()
            with self._lock:
                self.generations += 1
                self._patches[key] = patch
                while len(self._patches) > self.CACHE:
                    self._patches.popitem(last=False)
            self.say(f"{host.name}: made its ISO slots ({key[:12]})")
            return patch
        finally:
            with self._lock:
                self._making.pop(key).set()
