"""cloud-init NoCloud seeds: an ISO9660 volume labelled `cidata` holding user-data, meta-data and,
optionally, network-config. Written with pycdlib (pure Python, no root, no xorriso)."""

from __future__ import annotations

import base64
import io
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pycdlib

from kiln.core import inputs
from kiln.core.errors import InputError

SEED_FILES = ("user-data", "meta-data", "network-config", "vendor-data")


def write_iso(path: str | os.PathLike[str], files: Mapping[str, str | bytes], label: str = "cidata") -> Path:
    """Write `files` (name -> content) into an ISO at `path`, atomically (temp file, then rename).

    An existing file is replaced only when it is itself an ISO labelled `label` (a seed kiln or
    `make -C cloudinit` wrote); anything else there is refused with InputError.
    """
    out = Path(path)
    if str(path) in ("", "."):
        raise InputError("cidata -o: an empty path is not a file name")
    _check_replaceable_iso(out, label)
    iso = pycdlib.PyCdlib()
    # Joliet and Rock Ridge carry the real lower-case names with dashes that cloud-init looks for.
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=label)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        for index, (name, content) in enumerate(sorted(files.items())):
            data = content.encode() if isinstance(content, str) else content
            iso_name = f"/F{index:07d}.;1"  # ISO9660 level-3 8.3 name; readers use Joliet/RR names
            iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path=f"/{name}")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            iso.write(str(tmp))
            os.replace(tmp, out)
        except OSError as exc:
            if tmp.parent.is_dir():
                tmp.unlink(missing_ok=True)
            raise InputError(f"{out}: cannot write the seed ISO: {exc.strerror or exc}") from None
    finally:
        iso.close()
    return out


def _check_replaceable_iso(out: Path, label: str) -> None:
    try:
        exists = out.exists() or out.is_symlink()
    except OSError as exc:
        raise InputError(f"{out}: cannot use this path ({exc.strerror or exc})") from None
    if not exists:
        return
    if out.is_symlink() or not out.is_file():
        raise InputError(f"{out}: exists and is not a regular file; kiln will not replace it")
    try:
        with out.open("rb") as fh:
            fh.seek(32768)
            descriptor = fh.read(72)
    except OSError as exc:
        raise InputError(f"{out}: cannot read the existing file ({exc.strerror or exc})") from None
    if descriptor[1:6] != b"CD001" or descriptor[40:72].decode("ascii", "replace").strip() != label:
        raise InputError(
            f"{out}: exists and is not a {label} seed ISO; kiln will not replace it",
            hint="choose another -o, or remove the file yourself",
        )


# --- rendering seeds from the templates in cloudinit/templates ---------------------------------------

TEMPLATES = {"user-data": "user-data.j2", "meta-data": "meta-data.j2", "network-config": "network-config.j2"}
DEFAULT_USER = "kiln"
KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
_KEY_RE = re.compile(r"^(?P<type>\S+)\s+(?P<blob>[A-Za-z0-9+/]+={0,3})(?:\s+(?P<comment>.*))?$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_HOSTNAME_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def template_dir(root: Path) -> Path:
    """cloudinit/templates under kiln's data root (data users may edit, not Python strings)."""
    return root / "cloudinit" / "templates"


def parse_public_key(line: str, source: str) -> str:
    """One `TYPE BASE64 [comment]` line, checked; InputError names `source` if it is not a public key."""
    text = line.strip()
    match = _KEY_RE.match(text)
    if not match or match["type"] not in KEY_TYPES:
        what = "a private key" if "PRIVATE KEY" in text else "not an OpenSSH public key"
        raise InputError(f"{source}: {what} (want one line like 'ssh-ed25519 AAAA... comment')")
    try:
        blob = base64.b64decode(match["blob"], validate=True)
    except ValueError as exc:
        raise InputError(f"{source}: public key data is not valid base64") from exc
    fields = _wire_strings(blob)
    if fields is None or not fields or fields[0] != match["type"].encode():
        raise InputError(f"{source}: key data does not match its type {match['type']}")
    if len(fields) < 2 or not any(fields[1:]):
        raise InputError(f"{source}: public key holds no key material (only its type {match['type']})")
    return text


def _wire_strings(blob: bytes) -> list[bytes] | None:
    """The length-prefixed strings of an SSH wire-format key blob, or None if it is not one."""
    out: list[bytes] = []
    i = 0
    while i < len(blob):
        if i + 4 > len(blob):
            return None
        n = int.from_bytes(blob[i : i + 4], "big")
        if i + 4 + n > len(blob):
            return None
        out.append(blob[i + 4 : i + 4 + n])
        i += 4 + n
    return out


def _keys_from_file(path: Path) -> list[str]:
    text = inputs.read_text(path, "public key file", inputs.KEY_LIMIT)
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise InputError(f"{path}: empty public key file")
    return [parse_public_key(ln, str(path)) for ln in lines]


def discover_public_keys(
    explicit: Sequence[str | os.PathLike[str]] = (),
    env_value: str | None = None,
    home: str | os.PathLike[str] | None = None,
) -> tuple[list[str], str]:
    """The public keys for ssh_authorized_keys and where they came from, first match wins:

    1. `explicit` files (`--ssh-public-key`);
    2. `env_value` (the SSH_PUBLIC_KEY variable, passed in by the CLI): key text, or a path to a .pub file;
    3. every `~/.ssh/*.pub` under `home`.

    InputError (exit 2) saying where kiln looked when none is found.
    """
    if explicit:
        keys: list[str] = []
        for item in explicit:
            keys += _keys_from_file(Path(item))
        return keys, ", ".join(os.fspath(p) for p in explicit)
    if env_value and env_value.strip():
        value = env_value.strip()
        if _KEY_RE.match(value.splitlines()[0]):
            return [parse_public_key(ln, "SSH_PUBLIC_KEY") for ln in value.splitlines() if ln.strip()], (
                "SSH_PUBLIC_KEY"
            )
        path = Path(value).expanduser()
        if not path.exists():
            raise InputError(
                f"SSH_PUBLIC_KEY: {inputs.clip(value)} is neither a public key nor an existing file"
            )
        return _keys_from_file(path), f"{path} (SSH_PUBLIC_KEY)"
    looked = ["--ssh-public-key (not given)", "SSH_PUBLIC_KEY (not set)"]
    if home is not None:
        ssh_dir = Path(home) / ".ssh"
        pubs = sorted(ssh_dir.glob("*.pub"))
        if pubs:
            keys = []
            for pub in pubs:
                keys += _keys_from_file(pub)
            return keys, ", ".join(str(p) for p in pubs)
        looked.append(f"{ssh_dir}/*.pub (no files)")
    raise InputError(
        "no SSH public key found; looked in: " + "; ".join(looked),
        hint="pass --ssh-public-key FILE, set SSH_PUBLIC_KEY, or create one with ssh-keygen -t ed25519",
    )


def seed_values(config_values: Mapping[str, Any]) -> dict[str, str]:
    """The config values the templates use (from a resolved config or a build's config.json)."""
    return {
        "build_name": str(config_values.get("build_name") or "kiln"),
        "kubernetes_semver": str(config_values.get("kubernetes_semver") or ""),
        "os_name": str(config_values.get("os_name") or ""),
        "os_version": str(config_values.get("os_version") or ""),
    }


def default_hostname(build_name: str) -> str:
    """A valid host name from a build name ("ubuntu-2204" -> "ubuntu-2204", "a_b.c" -> "a-b-c")."""
    name = re.sub(r"[^A-Za-z0-9-]+", "-", build_name).strip("-")[:63].strip("-")
    return name or "kiln"


def render_seed(
    public_keys: Sequence[str],
    *,
    user: str = DEFAULT_USER,
    hostname: str | None = None,
    instance_id: str | None = None,
    values: Mapping[str, Any] | None = None,
    network_config: bool = False,
    templates: str | os.PathLike[str],
    build: bool = False,
) -> dict[str, str]:
    """Render user-data, meta-data (and network-config) from cloudinit/templates.

    `values` come from the resolved config (see seed_values). The instance id is new on every call
    unless given, so cloud-init treats each boot of a seed as a first boot. `build`: the seed of a build VM,
    which leaves nothing of itself in the image (no marker file, no image default user, hostname localhost).
    """
    import jinja2

    if not public_keys:
        raise InputError("cidata: at least one SSH public key is needed (password login is disabled)")
    keys = [parse_public_key(k, "cidata public key") for k in public_keys]
    if not _USER_RE.match(user):
        raise InputError(f"cidata: user {user!r} is not a valid login name")
    vals = seed_values(values or {})
    host = "localhost" if build else hostname or default_hostname(vals["build_name"])
    if not _HOSTNAME_RE.match(host):
        raise InputError(f"cidata: hostname {host!r} is not a valid host name (letters, digits, dashes)")
    context = {
        **vals,
        "user": user,
        "hostname": host,
        "instance_id": instance_id or f"kiln-{host}-{uuid.uuid4().hex[:12]}",
        "ssh_authorized_keys": keys,
        "build": build,
    }
    root = Path(templates)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    names = ["user-data", "meta-data"] + (["network-config"] if network_config else [])
    files: dict[str, str] = {}
    for name in names:
        try:
            files[name] = env.get_template(TEMPLATES[name]).render(context)
        except jinja2.TemplateNotFound as exc:
            raise InputError(f"{root / TEMPLATES[name]}: cloud-init template missing") from exc
        except jinja2.TemplateError as exc:
            raise InputError(f"{root / TEMPLATES[name]}: {exc}") from exc
    return files


def write_seed(path: str | os.PathLike[str], public_keys: Sequence[str], **kwargs: Any) -> Path:
    """render_seed(...) written as a `cidata` ISO at `path` (atomically)."""
    return write_iso(path, render_seed(public_keys, **kwargs))


def read_iso(path: str | os.PathLike[str]) -> tuple[str, dict[str, bytes]]:
    """(volume label, {Joliet name: content}) of a seed ISO; for tests and `kiln cidata --show`."""
    iso = pycdlib.PyCdlib()
    try:
        iso.open(os.fspath(path))
    except (pycdlib.pycdlibexception.PyCdlibException, OSError) as exc:
        raise InputError(f"{path}: not a readable ISO9660 image ({exc})") from exc
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        files: dict[str, bytes] = {}
        for child in iso.list_children(joliet_path="/"):
            name = child.file_identifier().decode("utf-16_be")
            if name in (".", "..", "\x00", "\x01") or child.is_dir():
                continue
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
            files[name] = out.getvalue()
        return label, files
    finally:
        iso.close()
