"""goss specs: vars rendering, spec loading, the evaluator over testinfra (reports are kiln.goss.reports).

The specs in `goss/` are real goss files: `goss -g goss/goss.yaml --vars vars.yaml validate`
gives the same verdict as kiln. kiln renders them itself (strict Go templates, `gotemplate`), follows the
`gossfile` includes, checks every resource type, attribute and matcher up front (`GossSpecError`, exit 2,
for anything it does not support) and then evaluates each resource on a host through a Probe:
kiln.goss.probe answers with pytest-testinfra (one command per file, one `dpkg-query` for every package,
testinfra's modules for the rest), over SSH through kiln.goss.rootshell's root shells, in a chroot, or on a
`local://` host in the tests. A few resources are checked at once; the results keep the spec's order.

Phases: `build` (goss/goss.yaml) runs inside the build (the VM runner's build VM before sysprep, the chroot
runner's tree after it: kiln.goss.treephase); `final` (goss/goss-final.yaml: everything in build plus
hygiene.yaml) runs on the finished image.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jinja2
import yaml

from kiln.core.errors import InputError
from kiln.goss import gotemplate
from kiln.goss.matchers import GossSpecError, Matcher, compile_matcher, stream_matcher

log = logging.getLogger(__name__)

VARS_TEMPLATE = "vars.yaml.j2"


def spec_dir(root: Path) -> Path:
    """kiln's own goss specs under the data root (kiln.core.paths)."""
    return root / "goss"


ENTRY = {"build": "goss.yaml", "final": "goss-final.yaml"}

# Per resource type: attributes that are checked (and whether goss reads them as a stream), plus the ones
# that only configure the check. Anything else in a spec is an error.
_COMMON = {"skip", "title", "meta"}
ATTRIBUTES: dict[str, dict[str, str]] = {
    # attribute -> "value" | "stream" | "config"
    "package": {"installed": "value", "versions": "value", "name": "config"},
    "service": {"enabled": "value", "running": "value", "name": "config"},
    "kernel-param": {"value": "value", "name": "config"},
    "file": {
        "exists": "value",
        "mode": "value",
        "size": "value",
        "owner": "value",
        "group": "value",
        "filetype": "value",
        "contents": "stream",
        "md5": "value",
        "sha256": "value",
        "linked-to": "value",
        "path": "config",
    },
    "command": {
        "exit-status": "value",
        "stdout": "stream",
        "stderr": "stream",
        "exec": "config",
        "timeout": "config",
    },
    "user": {
        "exists": "value",
        "uid": "value",
        "gid": "value",
        "groups": "value",
        "home": "value",
        "shell": "value",
        "username": "config",
    },
    "group": {"exists": "value", "gid": "value", "groupname": "config"},
    "matching": {"matches": "value", "content": "config"},
}
REQUIRED = {"kernel-param": "value", "command": "exit-status", "matching": "matches"}
# goss's type names in its JSON output
GOSS_TYPE = {
    "package": "Package",
    "service": "Service",
    "kernel-param": "KernelParam",
    "file": "File",
    "command": "Command",
    "user": "User",
    "group": "Group",
    "matching": "Matching",
}


# --- vars --------------------------------------------------------------------------------------------


def _words(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return value.replace(",", " ").split()
    return [str(v) for v in value]


class GoYamlLoader(yaml.SafeLoader):
    """YAML as goss reads specs (Go's gopkg.in/yaml.v3): a tag it does not know (`!vault`) keeps the plain
    value under it instead of failing; a date-like scalar stays the text it is (Go decodes it into a string
    for an untyped field; PyYAML would make it a date); only true/false are booleans (YAML 1.1's yes/no/on/
    off are strings, as in Go)."""


def _untagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


# Go's YAML (v3, as goss uses it) reads only true/false as booleans; yes/no/on/off stay strings
GoYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
GoYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
GoYamlLoader.add_multi_constructor("!", _untagged)
GoYamlLoader.add_multi_constructor("tag:", _untagged)  # unknown global tags; the standard ones are exact
GoYamlLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)  # type: ignore[type-var]


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=GoYamlLoader)  # noqa: S506 - a SafeLoader subclass


def read_vars_file(path: Path, what: str = "goss vars file") -> dict[str, Any]:
    """A YAML (or JSON) file of goss vars, as `goss --vars` reads it; InputError names the file."""
    from kiln.core import inputs

    text = inputs.read_text(path, what)
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: {what} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is not None and not isinstance(data, dict):
        raise InputError(f"{path}: {what} must hold a mapping")
    return dict(data or {})


def render_vars(
    values: Mapping[str, Any], extra: Mapping[str, Any] | None = None, *, spec_dir: Path
) -> dict[str, Any]:
    """Render `vars.yaml.j2` from the resolved config values (strict: a missing key is an error)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(spec_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["words"] = _words
    env.filters["regex_escape"] = lambda s: _regex_escape(str(s))
    env.filters["yaml"] = _to_yaml
    context = dict(values)
    context.update(extra or {})
    path = spec_dir / VARS_TEMPLATE
    try:
        text = env.get_template(VARS_TEMPLATE).render(**context)
    except jinja2.UndefinedError as exc:
        raise InputError(
            f"{path}: {exc.message}", hint="the resolved config lacks a key the goss vars need"
        ) from exc
    except jinja2.TemplateError as exc:
        raise InputError(f"{path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: rendered vars are not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: rendered vars must be a mapping")
    return data


def _to_yaml(value: Any) -> str:
    """A scalar or list as YAML (JSON is YAML); an undefined value raises instead of printing."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _regex_escape(text: str) -> str:
    """Escape for Go's RE2 (a subset of what re.escape does, and all of it valid in RE2)."""
    return "".join("\\" + c if c in r".^$*+?()[]{}|\/" else c for c in text)


def write_vars(vars_: Mapping[str, Any], path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(
        "# goss vars rendered by kiln from the resolved config\n"
        + yaml.safe_dump(dict(vars_), sort_keys=True)
    )
    os.replace(tmp, path)
    return path


# --- spec loading --------------------------------------------------------------------------------------


@dataclass
class Check:
    """One attribute of one resource to check."""

    matcher: Matcher
    expected: Any


@dataclass
class Resource:
    type: str
    id: str
    attrs: dict[str, Any]
    source: str
    checks: dict[str, Check] = field(default_factory=dict)

    @property
    def skip(self) -> bool:
        return bool(self.attrs.get("skip", False))


@dataclass
class Spec:
    entry: Path
    files: list[Path]
    resources: list[Resource]

    def of_type(self, kind: str) -> list[Resource]:
        return [r for r in self.resources if r.type == kind]


def load_spec(entry: Path, vars_: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Spec:
    """Render and load `entry` and its gossfile includes; validate every resource and matcher."""
    data = {"Vars": dict(vars_), "Env": dict(env or {})}
    merged: dict[tuple[str, str], Resource] = {}
    files: list[Path] = []
    _load_file(entry.resolve(), data, merged, files, stack=())
    return Spec(entry, files, list(merged.values()))


def _load_file(
    path: Path,
    data: Mapping[str, Any],
    merged: dict[tuple[str, str], Resource],
    files: list[Path],
    stack: tuple[Path, ...],
) -> None:
    if path in stack:
        raise GossSpecError(f"{path}: gossfile include cycle via {' -> '.join(str(p) for p in stack)}")
    if not path.is_file():
        where = f"{stack[-1]}: gossfile" if stack else "goss spec"
        raise GossSpecError(f"{where}: {path} does not exist")
    files.append(path)
    text = gotemplate.render(path.read_text(), data, name=str(path))
    try:
        doc = load_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise GossSpecError(f"{path}: not valid YAML after rendering: {exc}") from exc
    if not isinstance(doc, dict):
        raise GossSpecError(f"{path}: a gossfile must be a mapping of resource types")
    for include_key, attrs in (doc.get("gossfile") or {}).items():
        attrs = attrs or {}
        if attrs.get("skip"):
            continue
        target = Path(attrs.get("file", include_key))
        if not target.is_absolute():
            target = path.parent / target
        matches = (
            sorted(target.parent.glob(target.name)) if any(c in target.name for c in "*?[") else [target]
        )
        for included in matches:
            _load_file(included.resolve(), data, merged, files, stack + (path,))
    for kind, resources in doc.items():
        if kind == "gossfile":
            continue
        if kind not in GOSS_TYPES:
            continue  # goss ignores top-level keys that are no resource type (e.g. YAML anchor holders)
        if kind not in ATTRIBUTES:
            raise GossSpecError(
                f"{path}: resource type {kind!r} is not supported by kiln's evaluator",
                hint=f"supported: {', '.join(sorted(ATTRIBUTES))}",
            )
        for rid, attrs in (resources or {}).items():
            rid = str(rid)
            merged[(kind, rid)] = _compile_resource(kind, rid, attrs or {}, path)


def _drop_nulls(value: Any, seen: dict[int, Any] | None = None) -> Any:
    """List items that rendered to nothing (`- ` under a range that produced no value) are left out, as goss
    leaves them out. A node YAML aliases many times is walked once (no "billion laughs" expansion)."""
    seen = {} if seen is None else seen
    if not isinstance(value, list | dict):
        return value
    if id(value) in seen:
        return seen[id(value)]
    if isinstance(value, list):
        out: Any = []
        seen[id(value)] = out
        out.extend(_drop_nulls(v, seen) for v in value if v is not None)
    else:
        out = {}
        seen[id(value)] = out
        out.update({k: _drop_nulls(v, seen) for k, v in value.items()})
    return out


# Every resource type goss knows; a top-level key outside this set is ignored, as goss ignores it.
GOSS_TYPES = frozenset(
    {
        "package", "file", "addr", "port", "service", "user", "group", "command", "dns", "process",
        "kernel-param", "mount", "interface", "http", "matching", "gossfile",
    }
)  # fmt: skip


def _compile_resource(kind: str, rid: str, attrs: Mapping[str, Any], path: Path) -> Resource:
    where = f"{path}: {kind}.{rid}"
    if kind == "file" and "contains" in attrs and "contents" not in attrs:
        # goss before 0.4 spelled it `contains`; goss still reads it as `contents`
        attrs = {("contents" if k == "contains" else k): v for k, v in attrs.items()}
    known = ATTRIBUTES[kind]
    resource = Resource(kind, rid, dict(attrs), str(path))
    meta = attrs.get("meta")
    phase = meta.get("kiln_phase") if isinstance(meta, dict) else None
    if phase is not None and phase not in ("tree", "boot"):  # kiln.goss.verify.RESOURCE_PHASES
        raise GossSpecError(
            f"{where}: meta.kiln_phase {phase!r} is not a phase",
            hint="tree (checked in the chroot) or boot (checked in the boot of the finished image)",
        )
    for name, expected in attrs.items():
        if name in _COMMON:
            continue
        if expected is None:
            continue  # `versions:` with nothing under it (a template that rendered empty): goss skips it
        expected = _drop_nulls(expected)
        role = known.get(name)
        if role is None:
            raise GossSpecError(
                f"{where}: attribute {name!r} is not supported for {kind}",
                hint=f"supported: {', '.join(sorted(set(known) | _COMMON))}",
            )
        if role == "config":
            continue
        matcher = (
            stream_matcher(expected, f"{where}.{name}")
            if role == "stream"
            else compile_matcher(expected, f"{where}.{name}")
        )
        resource.checks[name] = Check(matcher, expected)
    required = REQUIRED.get(kind)
    if required and required not in resource.checks:
        raise GossSpecError(f"{where}: required attribute {required!r} is missing")
    if (
        kind in ("package", "file", "user", "group")
        and "installed" not in resource.checks
        and "exists" not in resource.checks
    ):
        raise GossSpecError(
            f"{where}: required attribute {'installed' if kind == 'package' else 'exists'!r} is missing"
        )
    return resource


# --- evaluation ----------------------------------------------------------------------------------------


class Probe(Protocol):
    """What the evaluator asks of a host. `kiln.goss.probe.TestinfraProbe` answers through testinfra."""

    def package(self, name: str) -> tuple[bool, list[str]]: ...
    def service(self, name: str) -> tuple[bool, bool]: ...
    def kernel_param(self, name: str) -> str: ...
    def file(self, path: str, wanted: set[str]) -> dict[str, Any]: ...
    def command(self, cmd: str, timeout: float) -> tuple[int, str, str]: ...
    def user(self, name: str) -> dict[str, Any]: ...
    def group(self, name: str) -> dict[str, Any]: ...


@dataclass
class Result:
    resource_type: str
    resource_id: str
    property: str
    successful: bool
    skipped: bool
    expected: Any
    found: Any
    err: str = ""
    duration: float = 0.0
    source: str = ""

    def title(self) -> str:
        return f"{self.resource_type}: {self.resource_id}: {self.property}"


class ProbeError(Exception):
    """The host could not answer (e.g. a file that does not exist has no mode)."""


# Resources checked at once. Each probe question is a command in the host (under TCG a second or more of
# the guest's CPU), so a few at a time keep both emulated CPUs busy while another command's output travels;
# more would only queue on those CPUs and stretch each command towards its goss `timeout`. Results keep
# the spec's order.
WORKERS = 2


def evaluate(
    spec: Spec,
    probe: Probe,
    on_result: Callable[[Result], None] | None = None,
    *,
    workers: int = WORKERS,
) -> list[Result]:
    results: list[Result] = []
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="goss")
    try:
        pending = [pool.submit(_resource_results, r, probe) for r in spec.resources]
        for future in pending:
            for result in future.result():
                results.append(result)
                if on_result is not None:
                    on_result(result)
    except BaseException:  # an error, Ctrl-C or SIGTERM: the resources not started yet never start
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def _resource_results(res: Resource, probe: Probe) -> list[Result]:
    return list(_evaluate_resource(res, probe))


def _evaluate_resource(res: Resource, probe: Probe) -> Iterable[Result]:
    start = time.monotonic()
    if res.skip:
        for prop, check in res.checks.items():
            yield Result(res.type, res.id, prop, True, True, check.expected, None, source=res.source)
        return
    try:
        state = _observe(res, probe)
        observe_error = ""
    except ProbeError as exc:
        state, observe_error = {}, str(exc)
    for prop, check in res.checks.items():
        if prop not in state:
            err = observe_error or f"{prop}: {state.get('_missing', 'not available')}"
            yield Result(
                res.type,
                res.id,
                prop,
                False,
                False,
                check.expected,
                None,
                err,
                time.monotonic() - start,
                res.source,
            )
            continue
        found = state[prop]
        ok = check.matcher(found)
        yield Result(
            res.type, res.id, prop, ok, False, check.expected, found, "", time.monotonic() - start, res.source
        )


def _observe(res: Resource, probe: Probe) -> dict[str, Any]:
    a = res.attrs
    if res.type == "package":
        installed, versions = probe.package(str(a.get("name", res.id)))
        state: dict[str, Any] = {"installed": installed}
        if installed:
            state["versions"] = versions
        else:
            state["_missing"] = "package is not installed"
        return state
    if res.type == "service":
        enabled, running = probe.service(str(a.get("name", res.id)))
        return {"enabled": enabled, "running": running}
    if res.type == "kernel-param":
        return {"value": probe.kernel_param(str(a.get("name", res.id)))}
    if res.type == "file":
        info = probe.file(str(a.get("path", res.id)), set(res.checks))
        if not info.get("exists"):
            return {"exists": False, "_missing": "file does not exist"}
        return info
    if res.type == "command":
        timeout = float(a.get("timeout") or 10000) / 1000.0  # 0 or none: goss's 10 s
        rc, out, err = probe.command(str(a.get("exec", res.id)), timeout)
        return {"exit-status": rc, "stdout": out, "stderr": err}
    if res.type == "user":
        info = probe.user(str(a.get("username", res.id)))
        return info if info.get("exists") else {"exists": False, "_missing": "user does not exist"}
    if res.type == "group":
        info = probe.group(str(a.get("groupname", res.id)))
        return info if info.get("exists") else {"exists": False, "_missing": "group does not exist"}
    if res.type == "matching":
        return {"matches": a.get("content")}
    raise GossSpecError(f"{res.source}: {res.type}.{res.id}: resource type not supported")
