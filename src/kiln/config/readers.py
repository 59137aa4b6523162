"""Reading layer files: JSON, and Packer's .pkrvars.hcl (parsed with python-hcl2, located with a small lexer
for top-level names so that errors carry a line). Each reader appends `FILE: problem` lines and returns None
on failure; config loading collects them all before reporting."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kiln.core import inputs
from kiln.core.errors import InputError


def _read_text(path: Path, label: str, problems: list[str]) -> str | None:
    try:
        return inputs.read_text(path, "var file")
    except InputError as err:
        problems.append(err.message.replace(str(path), label, 1))
        return None


FORMATS = "var files are JSON objects (*.json), Packer HCL (*.pkrvars.hcl, *.hcl) or YAML (*.yaml, *.yml)"


def _read_json(path: Path, label: str, problems: list[str]) -> dict[str, Any] | None:
    text = _read_text(path, label, problems)
    if text is None:
        return None
    try:
        data = inputs.loads_json(text, label, "var file")
    except InputError as err:
        if "malformed JSON" not in err.message:
            problems.append(err.message)
        elif isinstance(_yaml_or_none(text), dict):
            problems.append(f"{err.message} (this file reads as YAML: name it .yaml or .yml; {FORMATS})")
        elif re.search(r"(?m)^\s*[A-Za-z_][A-Za-z0-9_-]*\s*=", text):
            problems.append(f"{err.message} (this file reads as HCL: name it .pkrvars.hcl; {FORMATS})")
        else:
            problems.append(f"{err.message} ({FORMATS})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{label}: must hold a JSON object of settings, not {json_type(data)}")
        return None
    return data


_HCL_ATTR = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def hcl_top_level_names(text: str) -> list[tuple[str, int]]:
    """(name, line) of each top-level `name = ...` attribute, in order, duplicates included.

    python-hcl2 keeps only the last of two equal attributes; Packer refuses them, and so does kiln.
    """
    names: list[tuple[str, int]] = []
    depth = 0
    line = 1
    i = 0
    at_line_start = True
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            at_line_start = True
            i += 1
            continue
        if c in " \t\r":
            i += 1
            continue
        if c == "#" or text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            line += text.count("\n", i, end)
            i = end
            continue
        if text.startswith("<<", i):  # heredoc: skip to its terminator line
            m = re.match(r"<<-?([A-Za-z_][A-Za-z0-9_]*)", text[i:])
            if m:
                tag = m.group(1)
                closing = re.compile(rf"^\s*{tag}\s*$", re.M).search(text, i + m.end())
                stop = n if closing is None else closing.end()
                line += text.count("\n", i, stop)
                i = stop
                at_line_start = False
                continue
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                elif text[i] == "\n":
                    line += 1
                i += 1
            i += 1
            at_line_start = False
            continue
        if depth == 0 and at_line_start:
            m = _HCL_ATTR.match(text, i)
            if m and re.match(r"\s*=(?!=)", text[m.end() :]):
                names.append((m.group(0), line))
        if c in "{[(":
            depth += 1
        elif c in "}])":
            depth = max(0, depth - 1)
        at_line_start = False
        i += 1
    return names


def _read_hcl(path: Path, label: str, problems: list[str]) -> dict[str, Any] | None:
    import hcl2  # python-hcl2; imported here so that plain JSON configs don't pay for lark

    text = _read_text(path, label, problems)
    if text is None:
        return None
    seen: dict[str, int] = {}
    duplicate = False
    for name, line in hcl_top_level_names(text):
        if name in seen:
            problems.append(f"{label}: line {line}: {name}: set twice (first on line {seen[name]})")
            duplicate = True
        seen.setdefault(name, line)
    if duplicate:
        return None
    try:
        options = hcl2.SerializationOptions(
            with_comments=False, explicit_blocks=False, strip_string_quotes=True, preserve_heredocs=False
        )
        data = hcl2.loads(text, serialization_options=options)
    except RecursionError:
        problems.append(f"{label}: var file is nested too deeply")
        return None
    except Exception as exc:  # lark raises many exception types; all carry line/column when known
        at_line = getattr(exc, "line", None)
        column = getattr(exc, "column", None)
        where = f"line {at_line} column {column}: " if at_line is not None else ""
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        problems.append(f"{label}: {where}malformed HCL: {first}")
        return None
    problem = inputs.check_data(data)
    if problem:
        problems.append(f"{label}: var file {problem}")
        return None
    out = {k: _unhcl(v) for k, v in data.items()}
    for key, value in list(out.items()):
        if "${" in json.dumps(value):
            problems.append(f"{label}: {key}: expressions (${{...}}) are not supported in var files")
            del out[key]
    return out


def _unhcl(value: Any) -> Any:
    """Undo python-hcl2's leftovers: '${...}' wrappers are not allowed in var files; keep plain data."""
    if isinstance(value, list):
        return [_unhcl(v) for v in value]
    if isinstance(value, dict):
        return {str(k).strip('"'): _unhcl(v) for k, v in value.items() if not str(k).startswith("__")}
    return value


def _yaml_or_none(text: str) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 - a safe loader without aliases
    except (yaml.YAMLError, RecursionError, ValueError):
        return None


def _no_alias_loader() -> Any:
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        """SafeLoader that refuses aliases: a var file has no use for them, and they make a few bytes
        expand into gigabytes ("billion laughs")."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, "YAML aliases are not allowed", event.start_mark
                )
            return super().compose_node(parent, index)

    return NoAliasLoader


@functools.cache
def _loader() -> Any:
    return _no_alias_loader()


def parse_yaml(text: str, label: str) -> Any:
    """YAML without aliases; malformed text is an InputError naming `label`, line and column."""
    import yaml

    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 - SafeLoader without aliases
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        raise InputError(f"{label}: {where}malformed YAML: {exc.problem or exc.context}") from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise InputError(f"{label}: malformed YAML: {inputs.clip(str(exc))}") from None


def _read_yaml(path: Path, label: str, problems: list[str]) -> dict[str, Any] | None:
    text = _read_text(path, label, problems)
    if text is None:
        return None
    try:
        data = parse_yaml(text, label)
    except InputError as err:
        problems.append(err.message)
        return None
    if not isinstance(data, dict):
        problems.append(f"{label}: must hold a YAML mapping of settings, not {json_type(data)}")
        return None
    problem = inputs.check_data(data)
    if problem:
        problems.append(f"{label}: var file {problem}")
        return None
    # YAML's own scalars (dates, floats) go in as the text a JSON file would hold
    return {str(k): _plain(v) for k, v in data.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def read_layer(path: Path, label: str, problems: list[str]) -> dict[str, Any] | None:
    if path.suffix == ".hcl":
        return _read_hcl(path, label, problems)
    if path.suffix in (".yaml", ".yml"):
        return _read_yaml(path, label, problems)
    return _read_json(path, label, problems)


def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "map"
    return "null" if value is None else type(value).__name__
