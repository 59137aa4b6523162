"""A strict renderer for the subset of Go's text/template that kiln's goss specs use.

goss renders every gossfile with Go's text/template before parsing the YAML. kiln evaluates the same
files without goss, so it renders them the same way, but strictly: a variable missing from the vars file
is an error naming the file, the line and the variable (Go would print `<no value>` and goss would fail
late, or pass a test that compares against the literal text `<no value>`).

Supported: text, `{{ pipeline }}`, `{{- ... -}}` whitespace trimming, comments `{{/* ... */}}`,
`{{ if P }}` / `{{ else if P }}` / `{{ else }}` / `{{ end }}`, `{{ range P }}` (lists and maps; `.` is the
element) with `{{ else }}`, and pipelines made of `.`, field chains (`.Vars.a.b`, `.Env.X`), string/number/
bool literals and the functions `eq`, `ne`, `not`, `and`, `or`, `lt`, `le`, `gt`, `ge`, `len`, `index`,
`printf` (with %s/%d/%v only) plus `| toLower`, `| toUpper`. Anything else is an error, never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError


class TemplateError(InputError):
    """A template that does not parse, or that refers to a variable that is not defined."""


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<field>(?:\$)?(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
    | (?P<pipe>\|)
    | (?P<lparen>\()
    | (?P<rparen>\))
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<dollar>\$)
    )""",
    re.X,
)


@dataclass
class _Node:
    kind: str  # text | expr | if | range
    line: int
    text: str = ""
    expr: str = ""
    body: list[_Node] = field(default_factory=list)
    # for `if`: list of (condition, body); the final else has condition ""
    branches: list[tuple[str, list[_Node]]] = field(default_factory=list)
    else_body: list[_Node] = field(default_factory=list)


def _tokenize(source: str) -> list[tuple[str, str, int]]:
    """Split into ("text", s, line) and ("action", inner, line) tokens, applying {{- -}} trimming."""
    out: list[tuple[str, str, int]] = []
    pos = 0
    for m in _ACTION.finditer(source):
        text = source[pos : m.start()]
        if m.group(1):
            text = text.rstrip()
        if out and out[-1][0] == "trim-next":
            out.pop()
            text = text.lstrip()
        line = source.count("\n", 0, m.start()) + 1
        out.append(("text", text, line))
        out.append(("action", m.group(2).strip(), line))
        if m.group(3):
            out.append(("trim-next", "", line))
        pos = m.end()
    tail = source[pos:]
    if out and out[-1][0] == "trim-next":
        out.pop()
        tail = tail.lstrip()
    out.append(("text", tail, source.count("\n") + 1))
    return out


def _parse(tokens: list[tuple[str, str, int]], name: str) -> list[_Node]:
    root: list[_Node] = []
    stack: list[tuple[_Node, list[_Node]]] = []  # (control node, current body being filled)
    current = root
    for kind, value, line in tokens:
        if kind == "text":
            if value:
                current.append(_Node("text", line, text=value))
            continue
        if value.startswith("/*"):
            continue
        word = value.split(None, 1)
        head = word[0] if word else ""
        rest = word[1] if len(word) > 1 else ""
        if head == "if":
            node = _Node("if", line)
            node.branches.append((rest, []))
            current.append(node)
            stack.append((node, node.branches[-1][1]))
            current = node.branches[-1][1]
        elif head == "range":
            if ":=" in rest:
                raise TemplateError(
                    f"{name}:{line}: range with variable assignment is not supported: {value}"
                )
            node = _Node("range", line, expr=rest)
            current.append(node)
            stack.append((node, node.body))
            current = node.body
        elif head == "else":
            if not stack:
                raise TemplateError(f"{name}:{line}: {{{{else}}}} without if/range")
            node, _ = stack[-1]
            if rest.startswith("if "):
                if node.kind != "if":
                    raise TemplateError(f"{name}:{line}: else if inside range")
                node.branches.append((rest[3:].strip(), []))
                current = node.branches[-1][1]
            elif rest:
                raise TemplateError(f"{name}:{line}: unsupported else clause: {value}")
            else:
                current = node.else_body
            stack[-1] = (node, current)
        elif head == "end":
            if not stack:
                raise TemplateError(f"{name}:{line}: {{{{end}}}} without if/range")
            stack.pop()
            current = stack[-1][1] if stack else root
        elif head in ("with", "define", "template", "block", "break", "continue"):
            raise TemplateError(
                f"{name}:{line}: template action {head!r} is not supported by kiln's renderer"
            )
        elif not value:
            raise TemplateError(f"{name}:{line}: empty action {{{{}}}}")
        else:
            current.append(_Node("expr", line, expr=value))
    if stack:
        raise TemplateError(
            f"{name}:{stack[-1][0].line}: {stack[-1][0].kind} is never closed with {{{{end}}}}"
        )
    return root


def _truthy(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, str | list | tuple | dict):
        return len(value) > 0
    return True


def _format(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if value is None:
        raise TemplateError(f"{where}: value is null")
    raise TemplateError(f"{where}: cannot print a {type(value).__name__} into the spec; index into it")


class _Renderer:
    def __init__(self, name: str, data: Mapping[str, Any]) -> None:
        self.name = name
        self.data = data

    def render(self, nodes: list[_Node], dot: Any) -> str:
        out: list[str] = []
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "expr":
                where = f"{self.name}:{node.line}: {{{{{node.expr}}}}}"
                out.append(_format(self.eval(node.expr, dot, node.line), where))
            elif node.kind == "if":
                for cond, body in node.branches:
                    if _truthy(self.eval(cond, dot, node.line)):
                        out.append(self.render(body, dot))
                        break
                else:
                    out.append(self.render(node.else_body, dot))
            elif node.kind == "range":
                seq = self.eval(node.expr, dot, node.line)
                items: list[Any]
                if isinstance(seq, Mapping):
                    items = [seq[k] for k in sorted(seq)]
                elif isinstance(seq, list | tuple):
                    items = list(seq)
                else:
                    raise TemplateError(f"{self.name}:{node.line}: range over a {type(seq).__name__}")
                if not items:
                    out.append(self.render(node.else_body, dot))
                for item in items:
                    out.append(self.render(node.body, item))
        return "".join(out)

    # --- expressions --------------------------------------------------------------------------------

    def eval(self, expr: str, dot: Any, line: int) -> Any:
        tokens = self._lex(expr, line)
        value, pos = self._pipeline(tokens, 0, dot, line, expr)
        if pos != len(tokens):
            raise TemplateError(f"{self.name}:{line}: unexpected {tokens[pos][1]!r} in {{{{{expr}}}}}")
        return value

    def _lex(self, expr: str, line: int) -> list[tuple[str, str]]:
        tokens: list[tuple[str, str]] = []
        pos = 0
        expr = expr.rstrip()
        while pos < len(expr):
            m = _TOKEN.match(expr, pos)
            if not m or m.end() == pos:
                raise TemplateError(f"{self.name}:{line}: cannot parse {expr[pos:]!r} in {{{{{expr}}}}}")
            kind = m.lastgroup or ""
            tokens.append((kind, m.group(kind)))
            pos = m.end()
        return tokens

    def _pipeline(
        self, tokens: list[tuple[str, str]], pos: int, dot: Any, line: int, expr: str
    ) -> tuple[Any, int]:
        value, pos = self._command(tokens, pos, dot, line, expr, piped=None)
        while pos < len(tokens) and tokens[pos][0] == "pipe":
            value, pos = self._command(tokens, pos + 1, dot, line, expr, piped=(value,))
        return value, pos

    def _command(
        self,
        tokens: list[tuple[str, str]],
        pos: int,
        dot: Any,
        line: int,
        expr: str,
        piped: tuple[Any] | None,
    ) -> tuple[Any, int]:
        if pos >= len(tokens):
            raise TemplateError(f"{self.name}:{line}: incomplete expression {{{{{expr}}}}}")
        kind, text = tokens[pos]
        if kind == "ident" and text not in ("true", "false", "nil"):
            args: list[Any] = []
            pos += 1
            while pos < len(tokens) and tokens[pos][0] not in ("pipe", "rparen"):
                arg, pos = self._operand(tokens, pos, dot, line, expr)
                args.append(arg)
            if piped is not None:
                args.append(piped[0])
            return self._call(text, args, line, expr), pos
        if piped is not None:
            raise TemplateError(f"{self.name}:{line}: can only pipe into a function in {{{{{expr}}}}}")
        value, pos = self._operand(tokens, pos, dot, line, expr)
        if pos < len(tokens) and tokens[pos][0] not in ("pipe", "rparen"):
            raise TemplateError(f"{self.name}:{line}: {text!r} is not a function in {{{{{expr}}}}}")
        return value, pos

    def _operand(
        self, tokens: list[tuple[str, str]], pos: int, dot: Any, line: int, expr: str
    ) -> tuple[Any, int]:
        kind, text = tokens[pos]
        if kind == "str":
            if text.startswith("`"):
                return text[1:-1], pos + 1
            return bytes(text[1:-1], "utf-8").decode("unicode_escape"), pos + 1
        if kind == "num":
            return (float(text) if "." in text else int(text)), pos + 1
        if kind == "ident" and text in ("true", "false"):
            return text == "true", pos + 1
        if kind == "ident" and text == "nil":
            return None, pos + 1
        if kind == "field":
            return self._field(text, dot, line), pos + 1
        if kind == "lparen":
            value, pos = self._pipeline(tokens, pos + 1, dot, line, expr)
            if pos >= len(tokens) or tokens[pos][0] != "rparen":
                raise TemplateError(f"{self.name}:{line}: missing ) in {{{{{expr}}}}}")
            return value, pos + 1
        if kind == "ident":
            return self._call(text, [], line, expr), pos + 1
        raise TemplateError(f"{self.name}:{line}: unexpected {text!r} in {{{{{expr}}}}}")

    def _field(self, path: str, dot: Any, line: int) -> Any:
        if path == ".":
            return dot
        root: Any = self.data if path.startswith("$") else dot
        parts = path.lstrip("$").strip(".").split(".")
        value = root
        walked = "$" if path.startswith("$") else ""
        for part in parts:
            walked += "." + part
            if not isinstance(value, Mapping) or part not in value:
                raise TemplateError(
                    f"{self.name}:{line}: {walked} is not defined",
                    hint="add it to the goss vars (packer/goss/vars.yaml.j2) or fix the spec",
                )
            value = value[part]
        return value

    def _call(self, name: str, args: list[Any], line: int, expr: str) -> Any:
        where = f"{self.name}:{line}: {{{{{expr}}}}}"

        def need(n: int) -> None:
            if len(args) != n:
                raise TemplateError(f"{where}: {name} takes {n} argument(s), got {len(args)}")

        if name in ("eq", "ne", "lt", "le", "gt", "ge"):
            need(2)
            a, b = args
            try:
                result = {
                    "eq": lambda: a == b,
                    "ne": lambda: a != b,
                    "lt": lambda: a < b,
                    "le": lambda: a <= b,
                    "gt": lambda: a > b,
                    "ge": lambda: a >= b,
                }[name]()
            except TypeError as exc:
                raise TemplateError(f"{where}: incompatible types for {name}") from exc
            return bool(result)
        if name == "not":
            need(1)
            return not _truthy(args[0])
        if name == "and":
            for arg in args:
                if not _truthy(arg):
                    return arg
            return args[-1] if args else True
        if name == "or":
            for arg in args:
                if _truthy(arg):
                    return arg
            return args[-1] if args else False
        if name == "len":
            need(1)
            return len(args[0])
        if name == "index":
            if len(args) < 2:
                raise TemplateError(f"{where}: index needs a collection and a key")
            value = args[0]
            for key in args[1:]:
                try:
                    value = value[key]
                except (KeyError, IndexError, TypeError) as exc:
                    raise TemplateError(f"{where}: index {key!r} is not defined") from exc
            return value
        if name == "printf":
            if not args or not isinstance(args[0], str) or re.search(r"%[^sdv%]", args[0]):
                raise TemplateError(f"{where}: printf supports only %s, %d and %v")
            return args[0].replace("%v", "%s") % tuple(args[1:])
        if name in ("toLower", "toUpper"):
            need(1)
            return str(args[0]).lower() if name == "toLower" else str(args[0]).upper()
        raise TemplateError(f"{where}: function {name!r} is not supported by kiln's renderer")


def render(source: str, data: Mapping[str, Any], name: str = "<template>") -> str:
    """Render Go-template `source` with `data` (e.g. {"Vars": {...}, "Env": {...}}), strictly."""
    nodes = _parse(_tokenize(source), name)
    return _Renderer(name, data).render(nodes, data)


def referenced_vars(source: str) -> set[str]:
    """Every `.Vars.x...` path mentioned in `source` (for diagnostics)."""
    return set(re.findall(r"\.Vars((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", source))
