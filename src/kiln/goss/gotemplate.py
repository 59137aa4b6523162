"""A strict renderer for the subset of Go's text/template that kiln's goss specs use.

goss renders every gossfile with Go's text/template before parsing the YAML. kiln evaluates the same
files without goss, so it renders them the same way, but strictly: a variable missing from the vars file
is an error naming the file, the line and the variable (Go would print `<no value>` and goss would fail
late, or pass a test that compares against the literal text `<no value>`).

Supported: text, `{{ pipeline }}`, `{{- ... -}}` whitespace trimming, comments `{{/* ... */}}`,
`{{ if P }}` / `{{ else if P }}` / `{{ else }}` / `{{ end }}`, `{{ with P }}` / `{{ else with P }}`,
`{{ range P }}`, `{{ range $v := P }}` and `{{ range $k, $v := P }}` (lists, maps in key order, integers;
nil iterates zero times) with `{{ else }}`, variables (`{{ $x := P }}`, `{{ $x = P }}`, `$x.field`, `$` for
the root) scoped as in Go, and pipelines made of `.`, field chains (`.Vars.a.b`, `.Env.X`), string/number/
bool literals, Go's functions (`eq` with several operands, `ne`, `not`, `and`, `or`, `lt`, `le`, `gt`, `ge`,
`len`, `index`, `slice`, `print`, `println`, `printf`) and the sprig functions goss offers and real specs
call (`contains`, `hasPrefix`, `hasSuffix`, `semverCompare`, `regexMatch`, `toLower`/`lower`,
`toUpper`/`upper`, `trim`, `trimPrefix`, `trimSuffix`, `replace`, `splitList`, `split`, `join`, `default`,
`empty`, `toString`, `quote`, `list`, `dict`, `ternary`). Anything else is an error, never a guess.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kiln.core.errors import InputError
from kiln.goss.gofuncs import FUNCTIONS, go_kind, go_text, truthy


class TemplateError(InputError):
    """A template that does not parse, or that refers to a variable that is not defined."""


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<var>\$[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    | (?P<field>(?:\$)?(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
    | (?P<comma>,)
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
    kind: str  # text | expr | if | range | with | assign
    line: int
    names: list[str] = field(default_factory=list)  # range $k, $v := ...; assign target; with $x := ...
    declare: bool = True  # assign: := (declare) or = (assign to an existing variable)
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
            names, expr = _declaration(rest, name, line, value)
            if len(names) > 2:
                raise TemplateError(f"{name}:{line}: range declares at most two variables: {value}")
            node = _Node("range", line, expr=expr, names=names)
            current.append(node)
            stack.append((node, node.body))
            current = node.body
        elif head == "with":
            names, expr = _declaration(rest, name, line, value)
            node = _Node("with", line, names=names)
            node.branches.append((expr, []))
            current.append(node)
            stack.append((node, node.branches[-1][1]))
            current = node.branches[-1][1]
        elif _ASSIGN.match(value):
            m = _ASSIGN.match(value)
            assert m is not None
            current.append(
                _Node("assign", line, expr=m.group(3), names=[m.group(1)], declare=m.group(2) == ":=")
            )
        elif head == "else":
            if not stack:
                raise TemplateError(f"{name}:{line}: {{{{else}}}} without if/range")
            node, _ = stack[-1]
            if rest.startswith("if ") or rest.startswith("with "):
                want = "if" if rest.startswith("if ") else "with"
                if node.kind != want:
                    raise TemplateError(f"{name}:{line}: else {want} inside {node.kind}")
                node.branches.append((rest[len(want) + 1 :].strip(), []))
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
        elif head in ("define", "template", "block", "break", "continue"):
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


_ASSIGN = re.compile(r"^(\$[A-Za-z_][A-Za-z0-9_]*)\s*(:=|=)\s*(.+)$", re.S)
_DECL = re.compile(r"^(\$[A-Za-z_][A-Za-z0-9_]*)(?:\s*,\s*(\$[A-Za-z_][A-Za-z0-9_]*))?\s*:=\s*(.+)$", re.S)


def _declaration(rest: str, name: str, line: int, action: str) -> tuple[list[str], str]:
    """`$k, $v := P` / `$v := P` / `P` -> (variable names, pipeline)."""
    m = _DECL.match(rest.strip())
    if m:
        return [n for n in (m.group(1), m.group(2)) if n], m.group(3)
    if ":=" in rest:
        raise TemplateError(f"{name}:{line}: malformed variable declaration in {{{{{action}}}}}")
    return [], rest


def _format(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if value is None:
        raise TemplateError(f"{where}: value is null")
    if isinstance(value, list | tuple | Mapping):
        return go_text(value)  # as Go prints them: [a b], map[k:v] (a flow list reads back as YAML)
    raise TemplateError(f"{where}: cannot print a {type(value).__name__} into the spec")


class _Renderer:
    def __init__(self, name: str, data: Mapping[str, Any]) -> None:
        self.name = name
        self.data = data
        self.scopes: list[dict[str, Any]] = [{"$": data}]

    def render(self, nodes: list[_Node], dot: Any) -> str:
        self.scopes.append({})
        try:
            return self._render(nodes, dot)
        finally:
            self.scopes.pop()

    def _render(self, nodes: list[_Node], dot: Any) -> str:
        out: list[str] = []
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "expr":
                where = f"{self.name}:{node.line}: {{{{{node.expr}}}}}"
                out.append(_format(self.eval(node.expr, dot, node.line), where))
            elif node.kind == "assign":
                value = self.eval(node.expr, dot, node.line)
                var = node.names[0]
                if node.declare:
                    self.scopes[-1][var] = value
                else:
                    for scope in reversed(self.scopes):
                        if var in scope:
                            scope[var] = value
                            break
                    else:
                        raise TemplateError(f"{self.name}:{node.line}: {var} is assigned but never declared")
            elif node.kind == "if":
                for cond, body in node.branches:
                    if truthy(self.eval(cond, dot, node.line)):
                        out.append(self.render(body, dot))
                        break
                else:
                    out.append(self.render(node.else_body, dot))
            elif node.kind == "with":
                for cond, body in node.branches:
                    value = self.eval(cond, dot, node.line)
                    if truthy(value):
                        self.scopes.append({n: value for n in node.names})
                        try:
                            out.append(self.render(body, value))
                        finally:
                            self.scopes.pop()
                        break
                else:
                    out.append(self.render(node.else_body, dot))
            elif node.kind == "range":
                seq = self.eval(node.expr, dot, node.line)
                pairs: list[tuple[Any, Any]]
                if seq is None:
                    pairs = []  # Go: range over nil iterates zero times
                elif isinstance(seq, Mapping):
                    pairs = [(k, seq[k]) for k in sorted(seq, key=str)]
                elif isinstance(seq, list | tuple):
                    pairs = list(enumerate(seq))
                elif isinstance(seq, int) and not isinstance(seq, bool):
                    pairs = [(i, i) for i in range(seq)]
                else:
                    raise TemplateError(f"{self.name}:{node.line}: range over a {type(seq).__name__}")
                if not pairs:
                    out.append(self.render(node.else_body, dot))
                for key, item in pairs:
                    bound = (
                        {node.names[0]: key, node.names[1]: item}
                        if len(node.names) == 2
                        else {node.names[0]: item}
                        if node.names
                        else {}
                    )
                    self.scopes.append(bound)
                    try:
                        out.append(self.render(node.body, item))
                    finally:
                        self.scopes.pop()
        return "".join(out)

    def _variable(self, token: str, line: int) -> Any:
        name, _, path = token.partition(".")
        for scope in reversed(self.scopes):
            if name in scope:
                value = scope[name]
                break
        else:
            raise TemplateError(f"{self.name}:{line}: variable {name} is not defined")
        return self._field("." + path, value, line) if path else value

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
        if kind == "var":
            return self._variable(text, line), pos + 1
        if kind == "dollar":
            return self.data, pos + 1
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
                    hint="add it to the goss vars (goss/vars.yaml.j2) or fix the spec",
                )
            value = value[part]
        return value

    def _call(self, name: str, args: list[Any], line: int, expr: str) -> Any:
        where = f"{self.name}:{line}: {{{{{expr}}}}}"

        def need(n: int) -> None:
            if len(args) != n:
                raise TemplateError(f"{where}: {name} takes {n} argument(s), got {len(args)}")

        if name == "eq" and len(args) > 2:  # Go: eq a b c == (a == b || a == c)
            return any(self._call("eq", [args[0], other], line, expr) for other in args[1:])
        if name in ("eq", "ne", "lt", "le", "gt", "ge"):
            need(2)
            a, b = _comparable(args[0], args[1], name, where)
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
            return not truthy(args[0])
        if name == "and":
            for arg in args:
                if not truthy(arg):
                    return arg
            return args[-1] if args else True
        if name == "or":
            for arg in args:
                if truthy(arg):
                    return arg
            return args[-1] if args else False
        if name == "len":
            need(1)
            return len(args[0])
        if name == "index":
            if len(args) < 2:
                raise TemplateError(f"{where}: index needs a collection and a key")
            # Go: a key a map lacks gives the zero value (nil, which `range` iterates zero times); indexing
            # nil, a list out of range or a scalar is an error
            value = args[0]
            for key in args[1:]:
                if value is None:
                    raise TemplateError(f"{where}: index {key!r} of a nil value")
                if isinstance(value, Mapping):
                    value = value.get(key)
                    continue
                try:
                    value = value[key]
                except (KeyError, IndexError, TypeError) as exc:
                    raise TemplateError(f"{where}: index {key!r} is not defined") from exc
            return value
        if name == "printf":
            if not args or not isinstance(args[0], str) or re.search(r"%[^sdvq%]", args[0]):
                raise TemplateError(f"{where}: printf supports only %s, %d, %v and %q")
            fmt = args[0].replace("%v", "%s").replace("%q", "%s")
            specs = re.findall(r"%([sdvq])", args[0])
            # %q as Go quotes: a double-quoted string with backslash escapes (JSON's are the same for text)
            quoted = [
                json.dumps(go_text(a), ensure_ascii=False) if spec == "q" else a
                for spec, a in zip(specs, args[1:], strict=False)
            ]
            try:
                return fmt % tuple(go_text(a) if not isinstance(a, int | float) else a for a in quoted)
            except (TypeError, ValueError) as exc:
                raise TemplateError(f"{where}: printf: {exc}") from exc
        if name in FUNCTIONS:
            try:
                return FUNCTIONS[name](*args)
            except TemplateError:
                raise
            except (TypeError, ValueError, re.error, IndexError, KeyError) as exc:
                raise TemplateError(f"{where}: {name}: {exc}") from exc
        raise TemplateError(f"{where}: function {name!r} is not supported by kiln's renderer")


def _comparable(a: Any, b: Any, name: str, where: str) -> tuple[Any, Any]:
    """Go's comparison rules: numbers of any kind compare by value; otherwise both sides must have the same
    basic kind, or the template errors (as Go does with 'incompatible types for comparison')."""
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        return a, b
    if a is None or b is None:
        if name in ("eq", "ne"):
            return a, b
    elif type(a) is type(b) or (isinstance(a, str) and isinstance(b, str)):
        return a, b
    raise TemplateError(f"{where}: incompatible types for comparison ({go_kind(a)} and {go_kind(b)})")


def render(source: str, data: Mapping[str, Any], name: str = "<template>") -> str:
    """Render Go-template `source` with `data` (e.g. {"Vars": {...}, "Env": {...}}), strictly."""
    nodes = _parse(_tokenize(source), name)
    return _Renderer(name, data).render(nodes, data)


def referenced_vars(source: str) -> set[str]:
    """Every `.Vars.x...` path mentioned in `source` (for diagnostics)."""
    return set(re.findall(r"\.Vars((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", source))
