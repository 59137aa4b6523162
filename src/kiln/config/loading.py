"""Config loading: layering, coercion, derived values, validation, origins.

The layering rule (lowest to highest; a later layer overrides an earlier one key by key):

  1. built-in defaults (kiln.config.settings.SETTINGS)
  2. config/common.json
  3. the OS file, config/<target>.json
  4. config/kubernetes.json, then config/containerd.json, then config/cni.json
  5. each file in PACKER_VAR_FILES, in the order given (JSON, or HCL for *.hcl such as *.pkrvars.hcl)
  6. `-var key=value` on the command line (PACKER_FLAGS in make)

Then derived keys that no layer set are computed from kubernetes_semver (origin "derived"). Every
problem in every layer is collected and reported at once as a ConfigError (exit 2), each as
`FILE: KEY: problem`. Nothing here writes files.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kiln.config.derive import (
    DEFAULT,
    DERIVED,
    derive,
    derived_kubernetes,
    packer_spellings,
    select_versioned_sums,
)
from kiln.config.fit import check_fit
from kiln.config.hints import hint_for, suggest
from kiln.config.imagebuilder import ALIASES, IGNORED_DEFAULTS, IMAGE_BUILDER_IGNORED, SPELLINGS
from kiln.config.model import Config, freeze
from kiln.config.readers import json_type, read_layer
from kiln.config.settings import BY_NAME, SETTINGS, SHARED_FILES, Setting
from kiln.config.typed import Settings
from kiln.config.validators import unprintable
from kiln.core import inputs, paths
from kiln.core.errors import ConfigError, InputError

CLI = "-var"


def repo_root() -> Path:
    """kiln's data root (see kiln.core.paths): KILN_REPO_ROOT, else the checkout, else the wheel's data."""
    return paths.find_root(os.environ.get("KILN_REPO_ROOT"))


_default_root = repo_root  # load() has a parameter of the same name


def targets(root: Path | None = None) -> list[str]:
    """The OS files in config/: every *.json except the shared layer files, sorted."""
    config_dir = (root or repo_root()) / "config"
    return sorted(p.stem for p in config_dir.glob("*.json") if p.stem not in SHARED_FILES)


def _label(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except (ValueError, OSError, RuntimeError):  # outside the repo; a symlink loop; a name too long
        return inputs.clip(str(path), 200).strip("'\"")


TARGET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}", re.ASCII)


def check_target(target: str, root: Path | None = None) -> str:
    """`target` if it names an OS file in config/ (a name from `kiln list`, never a path), else InputError."""
    known = targets(root)
    if target in known:
        return target
    hint = f"known targets: {', '.join(known) or 'none'}"
    if not TARGET_RE.fullmatch(target):
        raise InputError(
            f"{inputs.clip(target)}: not a target name (a target is a name from `kiln list`, not a path)",
            hint=hint,
        )
    close = difflib.get_close_matches(target, known, n=1)
    if close:
        hint = f"did you mean '{close[0]}'? {hint}"
    raise InputError(f"config/{target}.json: no such target", hint=hint)


# --- types ---------------------------------------------------------------------------------------------


def _check_type(setting: Setting, value: Any) -> str | None:
    """None if `value` has the setting's type, else a problem ('wrong type: ...')."""
    want = setting.type
    if want is int and isinstance(value, float):
        return f"wrong type: want a whole number, got {value}"
    if want is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif want is list:
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    elif want is dict:
        ok = isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values())
    else:
        ok = isinstance(value, want)
    if ok:
        return None
    return f"wrong type: want {setting.type_name}, got {json_type(value)} {json.dumps(value)[:60]}"


_INT_RE = re.compile(r"-?[0-9]{1,30}", re.ASCII)


def coerce(setting: Setting, raw: Any) -> Any:
    """A `-var key=value` string to the setting's type. ValueError names what was expected."""
    if not isinstance(raw, str) or setting.type is str:
        return raw
    text = raw.strip()
    if setting.type is int:
        if not _INT_RE.fullmatch(text):
            raise ValueError(f"wrong type: want a number (ASCII digits), got {inputs.clip(raw)}")
        return int(text)
    if setting.type is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"wrong type: want bool (true/false), got {inputs.clip(raw)}")
    if text.startswith("[") or text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"malformed JSON value {inputs.clip(raw)}: {exc.msg}") from None
        except RecursionError:
            raise ValueError("JSON value nested too deeply") from None
    if setting.type is list:
        return [part for part in text.replace(",", " ").split() if part]
    raise ValueError(f"wrong type: want a JSON object, got {raw!r}")


# --- loading -------------------------------------------------------------------------------------------


def load(
    target: str,
    var_files: Iterable[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
    repo_root: Path | None = None,
    override_origin: str = CLI,
) -> Config:
    """Resolve and validate the config of `target` (an OS file name such as "ubuntu-2204").

    `var_files` are PACKER_VAR_FILES entries, `overrides` are `-var key=value` pairs (strings are coerced
    to each key's type). Raises InputError for an unknown target and ConfigError listing every problem.
    """
    root = (repo_root or _default_root()).resolve()
    check_target(target, root)
    os_file = root / "config" / f"{target}.json"

    problems: list[str] = []
    values: dict[str, Any] = {s.name: s.default for s in SETTINGS}
    origins: dict[str, str] = {s.name: DEFAULT for s in SETTINGS}

    layers: list[Path] = [root / "config" / "common.json", os_file]
    layers += [root / "config" / f"{name}.json" for name in SHARED_FILES if name != "common"]
    var_paths = [Path(p) for p in var_files]
    layering = _Layering()
    # each layer's view of what lies beneath it: what removing a key it empties would give
    beneath: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}
    for path in layers:
        if path.is_file() or path == os_file:
            beneath[_label(path, root)] = (dict(values), dict(origins))
            _apply_file(path, _label(path, root), values, origins, problems, layering)
    os_values = dict(values)
    layering.raw = []  # from here on: the user's layers, checked against the target's identity
    for path in var_paths:
        full = path if path.is_absolute() else Path.cwd() / path
        label = _label(full, root)
        if _absent(full):
            problems.append(f"{label}: var file not found (from PACKER_VAR_FILES / --var-file)")
            continue
        beneath.setdefault(label, (dict(values), dict(origins)))
        _apply_file(full, label, values, origins, problems, layering)
    beneath[override_origin] = (dict(values), dict(origins))
    for key, raw in (overrides or {}).items():
        setting = BY_NAME.get(key) or ALIASES.get(key)
        if setting is None:
            problems.append(f"{override_origin} {key}: unknown key{suggest(key)}")
            continue
        try:
            value = coerce(setting, raw)
        except ValueError as exc:
            problems.append(f"{override_origin} {key}: {exc}")
            continue
        layering.pending.pop(setting.name, None)
        _set(setting, value, override_origin, values, origins, problems)
    user_layers = list(layering.raw)
    if overrides:
        user_layers.append((override_origin, dict(overrides)))
    check_fit(root, target, os_values, user_layers, problems)

    _resolve_templates(values, origins, problems, layering)
    packer_spellings(values, origins)
    derive(values, origins)
    select_versioned_sums(values)
    _check_values(values, origins, problems, beneath)
    _check_consistency(root, values, origins, problems)
    if problems:
        raise ConfigError(problems, hint=hint_for(problems, target))
    frozen = MappingProxyType({k: freeze(v) for k, v in values.items()})
    return Config(
        target=target,
        values=frozen,
        settings=Settings.from_values(frozen),
        origins=MappingProxyType(dict(origins)),
        repo_root=root,
        var_files=tuple(str(p) for p in var_paths),
        warnings=tuple(
            f"{label}: image-builder keys kiln does not use, ignored: {', '.join(keys)} "
            "(docs/image-builder.md)"
            for label, keys in layering.ignored.items()
        )
        + tuple(
            f"{label}: comment keys (a leading _) skipped: {', '.join(keys)}"
            for label, keys in layering.comments.items()
        )
        + _network_warnings(values, origins),
    )


# Debian suites whose cloud-init (24.1 and later) asks for DHCPv6 in its fallback network config
DHCPV6_SUITES = frozenset({"trixie", "forky", "duke", "stable", "testing", "unstable", "sid"})


def _network_warnings(values: dict[str, Any], origins: dict[str, str]) -> tuple[str, ...]:
    """A bootstrap base with ifupdown on a suite whose cloud-init asks for DHCPv6: its first boot waits five
    minutes for a DHCPv6 server where none answers (docs/building.md, the bootstrap base disk)."""
    suite = str(values.get("bootstrap_suite") or "")
    if values.get("install_method") != "bootstrap" or values.get("bootstrap_network") != "ifupdown":
        return ()
    if suite not in DHCPV6_SUITES:
        return ()
    return (
        f"{origins['bootstrap_suite']}: bootstrap_suite: {suite} with bootstrap_network ifupdown "
        f"({origins['bootstrap_network']}): its cloud-init asks for DHCPv6, and ifupdown's dhclient waits "
        "five minutes for it where no DHCPv6 server answers (QEMU's user network has none), so the verify "
        "boot fails no-unit-failed-in-the-boot; set bootstrap_network to networkd, as "
        "config/debian-13.json does",
    )


def _absent(path: Path) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False  # the reader names what is wrong (a name too long, a NUL byte)
    return False


@dataclass
class _Layering:
    """What layering collects besides values: templated values waiting for {{user}} resolution, the values
    of image-builder keys kiln ignores (a {{user}} reference may name one), and which keys were ignored."""

    pending: dict[str, tuple[Any, str]] = field(default_factory=dict)  # key -> (raw value, origin)
    extra: dict[str, tuple[Any, str]] = field(default_factory=dict)  # ignored key -> (value, origin)
    ignored: dict[str, list[str]] = field(default_factory=dict)  # origin label -> ignored keys
    raw: list[tuple[str, dict[str, Any]]] | None = None  # (label, data) of each user layer, once collected
    comments: dict[str, list[str]] = field(default_factory=dict)  # origin label -> "_..." keys skipped


_USER_REF = re.compile(r"\{\{\s*user\s+`([^`]*)`\s*\}\}")
_PACKER_FUNC = re.compile(r"\{\{\s*(env|timestamp|isotime|uuid|template_dir|pwd|build_name|split|replace)\b")


def _templated(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value and bool(_USER_REF.search(value) or _PACKER_FUNC.search(value))
    if isinstance(value, list):
        return any(_templated(v) for v in value)
    return False


def _apply_file(
    path: Path,
    label: str,
    values: dict[str, Any],
    origins: dict[str, str],
    problems: list[str],
    layering: _Layering | None = None,
) -> None:
    data = read_layer(path, label, problems)
    if data is None:
        return
    layering = layering if layering is not None else _Layering()
    if layering.raw is not None:
        layering.raw.append((label, data))
    for key, value in data.items():
        setting = BY_NAME.get(key)
        origin = label
        if setting is None and key in ALIASES:
            setting = ALIASES[key]
            origin = f"{label} (image-builder: {key})"
        if setting is None and key in SPELLINGS and value is not None:
            kiln_key, convert = SPELLINGS[key]
            setting, value = BY_NAME[kiln_key], convert(value)
            origin = f"{label} (image-builder: {key})"
        if setting is None and key.startswith("_"):
            layering.comments.setdefault(label, []).append(key)  # "_comment": JSON's only comment
            continue
        if setting is None:
            if key in IMAGE_BUILDER_IGNORED:
                layering.ignored.setdefault(label, []).append(key)
                if value is not None:
                    layering.extra[key] = (value, label)
                continue
            problems.append(f"{label}: {key}: unknown key{suggest(key)}")
            continue
        if value is None:
            continue  # null: "not set here", as in Packer
        if _templated(value):
            layering.pending[setting.name] = (value, origin)  # resolved after layering
            continue
        layering.pending.pop(setting.name, None)
        _set_coerced(setting, value, origin, values, origins, problems)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True)
    return "" if value is None else str(value)


def _resolve_templates(
    values: dict[str, Any], origins: dict[str, str], problems: list[str], layering: _Layering
) -> None:
    """Resolve Packer's {{user `KEY`}} references after layering (the highest layer's value of KEY wins),
    with cycle detection; each error names the file and the key that holds the reference."""
    done: dict[str, str] = {}

    def lookup(name: str, stack: tuple[str, ...], origin: str, key: str) -> str | None:
        setting = BY_NAME.get(name) or ALIASES.get(name)
        target = setting.name if setting is not None else name
        if target in stack:
            chain = " -> ".join((*stack, target))
            problems.append(f"{origin}: {key}: {{{{user `{name}`}}}} refers back to itself ({chain})")
            return None
        if target in done:
            return done[target]
        if setting is not None:
            if target in layering.pending:
                raw, where = layering.pending[target]
                text = expand(raw if isinstance(raw, str) else _as_text(raw), (*stack, target), where, target)
            else:
                text = _as_text(values[target])
        elif name in layering.extra:
            raw, where = layering.extra[name]
            text = expand(_as_text(raw), (*stack, target), where, name)
        elif name in IGNORED_DEFAULTS:
            text = IGNORED_DEFAULTS[name]
        else:
            problems.append(f"{origin}: {key}: {{{{user `{name}`}}}} names no variable any layer sets")
            return None
        if text is not None:
            done[target] = text
        return text

    def expand(text: str, stack: tuple[str, ...], origin: str, key: str) -> str | None:
        func = _PACKER_FUNC.search(text)
        if func:
            problems.append(
                f"{origin}: {key}: Packer function {{{{{func.group(1)}}}}} is not supported in var files "
                "(only {{user `KEY`}} references are)"
            )
            return None
        failed = False

        def sub(m: re.Match[str]) -> str:
            nonlocal failed
            got = lookup(m.group(1), stack, origin, key)
            if got is None:
                failed = True
                return ""
            return got

        out = _USER_REF.sub(sub, text)
        return None if failed else out

    for key, (raw, origin) in list(layering.pending.items()):
        setting = BY_NAME[key]
        if isinstance(raw, list):
            items = [expand(v, (key,), origin, key) if isinstance(v, str) else v for v in raw]
            if any(v is None for v in items):
                continue
            resolved: Any = items
        else:
            text = lookup(key, (), origin, key) if key not in done else done[key]
            if text is None:
                continue
            resolved = text
        _set_coerced(
            setting, resolved, origin, values, origins, problems, " (after resolving {{user}} references)"
        )


def _set_coerced(
    setting: Setting,
    value: Any,
    origin: str,
    values: dict[str, Any],
    origins: dict[str, str],
    problems: list[str],
    note: str = "",
) -> None:
    """A Packer-style string ('40960', 'true', 'a b c') coerced to the key's type, then set."""
    if isinstance(value, str) and setting.type is not str:
        try:
            value = coerce(setting, value)
        except ValueError as exc:
            problems.append(f"{origin}: {setting.name}: {exc}{note}")
            return
    _set(setting, value, origin, values, origins, problems)


def _set(
    setting: Setting,
    value: Any,
    origin: str,
    values: dict[str, Any],
    origins: dict[str, str],
    problems: list[str],
) -> None:
    if setting.type is int and isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)  # "cpus": 4.0 is 4, as Packer reads it
    wrong = _check_type(setting, value)
    if wrong:
        problems.append(f"{origin}: {setting.name}: {wrong}")
        return
    values[setting.name] = value
    origins[setting.name] = origin


def _text_problem(value: Any, multiline: bool = False) -> str | None:
    """Every string in a value (list items, map keys and values too) must be printable, with no control
    characters: a newline in a duration or a NUL in a path ends up in a template or a command line."""
    items: list[Any] = []
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list | tuple):
        items = list(value)
    elif isinstance(value, Mapping):
        items = [*value.keys(), *value.values()]
    for item in items:
        if isinstance(item, str):
            problem = unprintable(item.replace("\n", " ").replace("\t", " ") if multiline else item)
            if problem:
                return f"{problem}: {inputs.clip(item)}"
    return None


def _check_values(
    values: dict[str, Any],
    origins: dict[str, str],
    problems: list[str],
    beneath: Mapping[str, tuple[Mapping[str, Any], Mapping[str, str]]],
) -> None:
    """`beneath`: for each layer (its label), the values and origins before it was applied."""
    for setting in SETTINGS:
        value = values[setting.name]
        origin = origins[setting.name]
        if setting.type is not bool and setting.type is not int:
            text_problem = _text_problem(value, setting.multiline)
            if text_problem:
                problems.append(f"{origin}: {setting.name}: {text_problem}")
                continue
        if value == "" and origin != DEFAULT and (setting.derived or setting.default != ""):
            problems.append(
                f"{origin}: {setting.name}: must not be empty"
                + (
                    ""
                    if setting.derived
                    else f" ({_fallback(setting, origin, beneath)}; remove the key to use it)"
                )
            )
            continue
        if setting.validator is None or value in ("", [], {}):
            continue  # empty = unset; required keys are checked in _check_consistency
        problem = setting.validator(value)
        if problem:
            problems.append(f"{origin}: {setting.name}: {problem}")


def _fallback(
    setting: Setting, origin: str, beneath: Mapping[str, tuple[Mapping[str, Any], Mapping[str, str]]]
) -> str:
    """What the key would be without the layer that emptied it: a lower layer's value (an OS file's
    `provisioner: chroot`, a var file's under a `-var`), or the default."""
    values, origins = beneath.get(origin.split(" (image-builder: ")[0], ({}, {}))
    below, where = values.get(setting.name), origins.get(setting.name, DEFAULT)
    if where != DEFAULT and below not in ("", None):
        return f"without it: {inputs.clip(below)}, from {where}"
    return f"the default is {inputs.clip(setting.default)}"


def _need(
    key: str, because: str, values: dict[str, Any], origins: dict[str, str], problems: list[str]
) -> None:
    if values[key] in ("", [], {}, None):
        cause = because.split(" ")[0]
        where = origins.get(cause, origins[key])
        also = f" (emptied by {origins[key]})" if origins[key] not in (DEFAULT, DERIVED, where) else ""
        problems.append(f"{where}: {key}: required when {because} (set by {where}){also}")


_MUST_MATCH = ("kubernetes_series", "kubernetes_deb_version", "kubernetes_rpm_version")
_OTHER_PACKAGES = {"debian": "rpm", "redhat": "deb"}  # os_family -> the package kind it never installs


def _check_consistency(
    root: Path, values: dict[str, Any], origins: dict[str, str], problems: list[str]
) -> None:
    """Required keys and settings that contradict each other; each problem names the file that set it."""
    for key in ("build_name", "os_name", "os_version"):
        if not values[key]:
            problems.append(f"{origins[key]}: {key}: required (set it in the OS file)")
    method = values["install_method"]
    builder = values["builder"]
    if method == "installer":
        for key in ("iso_url", "iso_checksum", "boot_command", "boot_files"):
            _need(key, "install_method is installer", values, origins, problems)
        if values["firmware"] == "efi":
            problems.append(
                f"{origins['firmware']}: firmware: efi is not supported with install_method installer "
                "(boot_command drives the BIOS boot menu); use bios, or a cloudimg/bootstrap target"
            )
    elif method == "cloudimg":
        for key in ("cloudimg_url", "cloudimg_checksum", "boot_files"):
            _need(key, "install_method is cloudimg", values, origins, problems)
    elif method == "bootstrap":
        for key in ("bootstrap_suite", "bootstrap_mirror"):
            _need(key, "install_method is bootstrap", values, origins, problems)
        if values["os_family"] != "debian":
            problems.append(f"{origins['os_family']}: os_family: install_method bootstrap needs debian")
    if values["provisioner"] == "chroot" and (method != "bootstrap" or builder != "qemu"):
        problems.append(
            f"{origins['provisioner']}: provisioner: chroot needs install_method bootstrap and builder qemu "
            f"(this target: {method}, {builder}); use provisioner vm"
        )
    if "overlay" in values["formats"] and (values["provisioner"] != "chroot" or method != "bootstrap"):
        problems.append(
            f"{origins['formats']}: formats: overlay needs provisioner chroot (its base is the os stage's "
            f"root tree; this target: install_method {method}, provisioner {values['provisioner']})"
        )
    if method in ("cloudimg", "bootstrap") and builder == "vmware-iso":
        problems.append(
            f"{origins['builder']}: builder: vmware-iso cannot build install_method {method} "
            f"(set in {origins['install_method']}); use builder qemu"
        )
    for key in ("efi_firmware_code", "efi_firmware_vars"):
        if values[key] and values["firmware"] == "efi" and not Path(values[key]).is_file():
            problems.append(f"{origins[key]}: {key}: {values[key]}: no such file on this host")
    if values["efi_firmware_vars"] and not values["efi_firmware_code"]:
        problems.append(f"{origins['efi_firmware_vars']}: efi_firmware_vars: needs efi_firmware_code")
    for name in values["boot_files"]:
        path = root / "packer" / "http" / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            problems.append(f"{origins['boot_files']}: boot_files: {name}: must be a path under packer/http/")
        elif not path.is_file():
            problems.append(f"{origins['boot_files']}: boot_files: packer/http/{name}: no such file")
    # http sources: URLs and checksum files are derived from the release layouts (kiln.config.derive); a
    # binary without a sum in kubernetes_http_sha256 is checked against NAME.sha256 beside it
    semver = str(values["kubernetes_semver"])
    for key, want in derived_kubernetes(semver).items():
        if origins[key] == DERIVED or key not in _MUST_MATCH:
            continue
        if key == f"kubernetes_{_OTHER_PACKAGES.get(values['os_family'])}_version":
            continue  # the other family's package version: image-builder's shared files set both; unused here
        # an explicit series must equal the derived one; package versions must be of the same release
        # (1.30.2-2.1 or 1.30.2-150500.1.1 for v1.30.2: a different package revision is fine)
        ok = values[key] == want if key == "kubernetes_series" else str(values[key]).startswith(semver[1:])
        if not ok:
            problems.append(
                f"{origins[key]}: {key}: {values[key]} contradicts kubernetes_semver {semver} "
                f"(from {origins['kubernetes_semver']}); remove it to derive {want}"
            )
