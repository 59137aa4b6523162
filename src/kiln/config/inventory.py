"""The host inventory of `kiln hosts` and `kiln serve --hosts`: one entry per machine, validated like every
input. A problem is an InputError (exit 2) that names the file, the host and the key.

    hosts:
      - name: node-a                      # the hostname
        mac: "52:54:00:12:34:56"          # or macs: [...] for several NICs (the first carries the addresses)
        addresses: ["192.0.2.10/24"]      # static; omit for DHCP
        gateway: "192.0.2.1"
        nameservers: ["192.0.2.1"]
        user_data: {...}                  # merged into the cloud-config
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.config.readers import json_type, parse_yaml
from kiln.core import inputs
from kiln.core.errors import InputError

HOST_KEYS = ("name", "mac", "macs", "addresses", "gateway", "nameservers", "user_data")
TOP_KEYS = ("hosts",)
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
MAX_HOSTS = 10000

Address = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Host:
    name: str
    macs: tuple[str, ...]  # lower case, colon separated
    addresses: tuple[Address, ...] = ()
    gateway: IP | None = None
    nameservers: tuple[IP, ...] = ()
    user_data: dict[str, Any] = field(default_factory=dict)

    @property
    def dhcp(self) -> bool:
        return not self.addresses

    def digest(self) -> str:
        """A content hash of everything that makes this host's seed."""
        doc = {
            "name": self.name, "macs": self.macs, "addresses": [str(a) for a in self.addresses],
            "gateway": str(self.gateway or ""), "nameservers": [str(n) for n in self.nameservers],
            "user_data": self.user_data,
        }  # fmt: skip
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: tuple[Host, ...]

    def host(self, name: str) -> Host | None:
        return next((h for h in self.hosts if h.name == name), None)

    def by_mac(self, mac: str) -> Host | None:
        want = normal_mac(mac)
        return next((h for h in self.hosts if want in h.macs), None) if want else None


def normal_mac(text: str) -> str | None:
    """`52-54-00-AB-CD-EF` or `52:54:00:ab:cd:ef` -> `52:54:00:ab:cd:ef`; None when not a MAC."""
    low = text.strip().lower()
    return low.replace("-", ":") if _MAC_RE.match(low) else None


def load(path: str | Path) -> Inventory:
    """Read and validate an inventory file (.yaml, .yml or .json)."""
    file = Path(path)
    text = inputs.read_text(file, "inventory")
    if file.suffix == ".json":
        data = inputs.loads_json(text, str(file), "inventory")
    elif file.suffix in (".yaml", ".yml"):
        data = parse_yaml(text, str(file))
    else:
        raise InputError(f"{file}: an inventory is YAML (.yaml, .yml) or JSON (.json)")
    if not isinstance(data, dict):
        raise InputError(f"{file}: must hold a mapping with hosts:, not {json_type(data)}")
    problem = inputs.check_data(data)
    if problem:
        raise InputError(f"{file}: inventory {problem}")
    return parse(data, file)


def parse(data: dict[str, Any], file: Path) -> Inventory:
    unknown = sorted(str(k) for k in set(data) - set(TOP_KEYS))
    if unknown:
        key = unknown[0][:60] if unknown[0].isprintable() else inputs.clip(unknown[0])
        raise InputError(f"{file}: {key}: unknown key (an inventory holds hosts:)")
    raw = data.get("hosts")
    if not isinstance(raw, list) or not raw:
        got = "nothing" if raw is None else json_type(raw)
        raise InputError(f"{file}: hosts: must be a non-empty list of hosts, not {got}")
    if len(raw) > MAX_HOSTS:
        raise InputError(f"{file}: hosts: {len(raw)} hosts, more than the {MAX_HOSTS} kiln takes")
    hosts = [_host(file, i, entry) for i, entry in enumerate(raw)]
    _check_unique(file, hosts)
    return Inventory(file, tuple(hosts))


def _where(file: Path, index: int, name: object) -> str:
    label = f" ({name[:40]})" if isinstance(name, str) and name.isprintable() and name else ""
    return f"{file}: hosts[{index}]{label}"


def _host(file: Path, index: int, entry: object) -> Host:
    if not isinstance(entry, dict):
        raise InputError(
            f"{_where(file, index, None)}: must be a mapping with name and mac, not {json_type(entry)}"
        )
    where = _where(file, index, entry.get("name"))

    def bad(key: str, why: str) -> InputError:
        return InputError(f"{where}: {key}: {why}")

    unknown = sorted(str(k) for k in set(entry) - set(HOST_KEYS))
    if unknown:
        key = unknown[0][:60] if unknown[0].isprintable() else inputs.clip(unknown[0], 40)
        raise bad(key, f"unknown key (a host takes {', '.join(HOST_KEYS)})")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise bad("name", f"{inputs.clip(name)} is not a host name (lower-case letters, digits and dashes, "
                          "at most 63, no leading or trailing dash)")  # fmt: skip
    if "mac" in entry and "macs" in entry:
        raise bad("macs", "give mac or macs, not both")
    mac_key = "macs" if "macs" in entry else "mac"
    raw_macs = entry["macs"] if "macs" in entry else [entry.get("mac")] if "mac" in entry else []
    if not isinstance(raw_macs, list) or not raw_macs:
        raise bad(mac_key, 'every host needs its MAC address (mac: "52:54:00:12:34:56", or macs: [...])')
    macs = []
    for mac in raw_macs:
        if isinstance(mac, int) and not isinstance(mac, bool):
            raise bad(mac_key, f"YAML reads this MAC as the number {mac} (base 60): quote it, "
                             f'mac: "{_sexagesimal(mac)}"')  # fmt: skip
        norm = normal_mac(mac) if isinstance(mac, str) else None
        if norm is None:
            raise bad(mac_key, f"{inputs.clip(mac)} is not a MAC address (six hex pairs: 52:54:00:12:34:56)")
        first = int(norm[:2], 16)
        if first & 1 or norm == "00:00:00:00:00:00":
            raise bad(mac_key, f"{norm} is a multicast or null address, never a NIC's")
        if norm in macs:
            raise bad("macs", f"{norm} is listed twice")
        macs.append(norm)
    addresses = _addresses(entry.get("addresses"), bad)
    gateway = _ip(entry.get("gateway"), bad, "gateway") if entry.get("gateway") is not None else None
    if gateway is not None:
        if not addresses:
            raise bad("gateway", "a gateway needs static addresses (without addresses the host uses DHCP)")
        same = [a for a in addresses if a.version == gateway.version]
        link_local_v6 = gateway.version == 6 and gateway.is_link_local and bool(same)
        if not link_local_v6 and not any(gateway in a.network for a in same):
            nets = ", ".join(str(a.network) for a in same) or f"no IPv{gateway.version} address"
            raise bad("gateway", f"{gateway} is outside the host's subnet ({nets})")
        if any(gateway == a.ip for a in addresses):
            raise bad("gateway", f"{gateway} is the host's own address")
    servers = entry.get("nameservers")
    if servers is None:
        nameservers: tuple[IP, ...] = ()
    elif isinstance(servers, list):
        nameservers = tuple(_ip(s, bad, "nameservers") for s in servers)
    else:
        raise bad("nameservers", f"must be a list of addresses, not {json_type(servers)}")
    user_data = entry.get("user_data")
    if user_data is None:
        user_data = {}
    if not isinstance(user_data, dict):
        raise bad("user_data", f"must be a mapping (cloud-config keys), not {json_type(user_data)}")
    user_data = _plain(user_data, lambda why: bad("user_data", why))
    return Host(name, tuple(macs), addresses, gateway, nameservers, user_data)


def _plain(value: Any, bad: Any, depth: int = 0) -> Any:
    """user_data as JSON holds it: string keys; YAML's dates and other scalars as their text."""
    if depth > 64:
        raise bad("nested too deeply")
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise bad(f"key {inputs.clip(key)} is not a string (quote it)")
            out[key] = _plain(item, bad, depth + 1)
        return out
    if isinstance(value, list):
        return [_plain(v, bad, depth + 1) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, bytes):
        raise bad("binary values are not cloud-config")
    return str(value)


def _sexagesimal(number: int) -> str:
    """What YAML 1.1 read as a base-60 number, as it was written: 52:54:00:12:34:56."""
    digits = []
    while number:
        number, digit = divmod(number, 60)
        digits.append(f"{digit:02d}")
    return ":".join(reversed(digits)) or "0"


def _ip(value: object, bad: Any, key: str) -> IP:
    try:
        if not isinstance(value, str):
            raise ValueError
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise bad(key, f"{inputs.clip(value)} is not an IP address") from None


def _addresses(value: object, bad: Any) -> tuple[Address, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad("addresses", f"must be a list of ADDRESS/PREFIX, not {json_type(value)}")
    out: list[Address] = []
    for item in value:
        if not isinstance(item, str) or "/" not in item:
            raise bad("addresses", f"{inputs.clip(item)} needs its prefix length (192.0.2.10/24)")
        try:
            iface = ipaddress.ip_interface(item.strip())
        except ValueError:
            raise bad(
                "addresses", f"{inputs.clip(item)} is not an address with a valid CIDR prefix"
            ) from None
        net = iface.network
        if iface.ip.is_loopback or iface.ip.is_multicast or iface.ip.is_unspecified:
            raise bad("addresses", f"{item} is a loopback, multicast or unspecified address, not a host's")
        if (
            iface.version == 4
            and net.prefixlen < 31
            and iface.ip in (net.network_address, net.broadcast_address)
        ):
            raise bad("addresses", f"{item} is the network or broadcast address of {net}, not a host's")
        out.append(iface)
    return tuple(out)


def _check_unique(file: Path, hosts: list[Host]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, host in enumerate(hosts):
        keys = [("name", host.name)] + [("mac", m) for m in host.macs]
        keys += [("addresses", str(a.ip)) for a in host.addresses]
        for key, value in keys:
            first = seen.setdefault((key, value), i)
            if first != i:
                raise InputError(
                    f"{_where(file, i, host.name)}: {key}: {value} is already hosts[{first}] "
                    f"({hosts[first].name})'s"
                )
