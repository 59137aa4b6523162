"""The functions goss specs call in templates: Go's text/template builtins that need no renderer state,
sprig's (semverCompare, regexMatch, ...) and goss's own (mkSlice), with Go's printing and truth rules."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any


def truthy(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, str | list | tuple | dict):
        return len(value) > 0
    return True


def go_kind(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


def go_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, list | tuple):
        return "[" + " ".join(go_text(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        return "map[" + " ".join(f"{k}:{go_text(v)}" for k, v in items) + "]"
    return str(value)


def go_regex(pattern: str) -> str:
    """A Go (RE2) pattern as a Python one: \\Q...\\E quotes literally; the rest of RE2 is a Python subset."""
    out: list[str] = []
    pos = 0
    while True:
        start = pattern.find("\\Q", pos)
        if start < 0:
            out.append(pattern[pos:])
            break
        out.append(pattern[pos:start])
        end = pattern.find("\\E", start + 2)
        literal = pattern[start + 2 :] if end < 0 else pattern[start + 2 : end]
        out.append(re.escape(literal))
        if end < 0:
            break
        pos = end + 2
    return "".join(out)


def _version_tuple(text: str) -> tuple[tuple[int, ...], bool]:
    """'v1.30.2-rc.1' -> ((1, 30, 2), True: has a pre-release); missing parts are 0; 'x'/'*' count as 0."""
    m = re.match(
        r"^\s*v?([0-9xX*]+)(?:\.([0-9xX*]+))?(?:\.([0-9xX*]+))?(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?\s*$",
        text,
    )
    if not m:
        raise ValueError(f"{text!r} is not a semantic version")
    parts = tuple(int(p) if p and p.isdigit() else 0 for p in m.group(1, 2, 3))
    return parts, bool(m.group(4))


def semver_compare(constraint: str, version: str) -> bool:
    """sprig's semverCompare: `>=1.30.0`, `< 1.31`, `~1.30`, `^1.2`, `1.30.x`, `!=1.2.3`, `a, b` (and),
    `a || b` (or). A pre-release version satisfies a range only when the range itself names one."""
    ver, ver_pre = _version_tuple(version)
    for alternative in constraint.split("||"):
        ok = True
        terms = [t for t in re.split(r"\s*,\s*|\s+(?=[<>=!~^])", alternative.strip()) if t]
        if not terms:
            continue
        allows_pre = "-" in alternative
        if ver_pre and not allows_pre:
            ok = False
        for term in terms:
            m = re.match(r"^(>=|<=|!=|=|>|<|~|\^)?\s*(.+)$", term.strip())
            if not m:
                raise ValueError(f"malformed constraint {term!r}")
            op, want_text = m.group(1) or "=", m.group(2)
            want, _ = _version_tuple(want_text)
            given = len(
                [
                    p
                    for p in re.split(r"[.-]", want_text.lstrip("v").split("+")[0].split("-")[0])
                    if p and p not in "xX*"
                ]
            )
            if op == "=" and given < 3:  # 1.30 / 1.30.x: any patch
                op = "~"
            if op == "~":
                upper = (want[0] + 1, 0, 0) if given <= 1 else (want[0], want[1] + 1, 0)
                ok = ok and want <= ver < upper
            elif op == "^":
                upper = (want[0] + 1, 0, 0) if want[0] else (0, want[1] + 1, 0)
                ok = ok and want <= ver < upper
            else:
                ok = ok and {
                    "=": ver == want, "!=": ver != want, ">": ver > want, "<": ver < want,
                    ">=": ver >= want, "<=": ver <= want,
                }[op]  # fmt: skip
        if ok:
            return True
    return False


def _default(default: Any, *value: Any) -> Any:
    return value[0] if value and truthy(value[0]) else default


FUNCTIONS: dict[str, Any] = {
    "contains": lambda sub, s: str(sub) in go_text(s),
    "hasPrefix": lambda pre, s: go_text(s).startswith(str(pre)),
    "hasSuffix": lambda suf, s: go_text(s).endswith(str(suf)),
    "semverCompare": lambda c, v: semver_compare(str(c), str(v)),
    "regexMatch": lambda pattern, s: re.search(go_regex(str(pattern)), go_text(s)) is not None,
    "toLower": lambda s: go_text(s).lower(),
    "toUpper": lambda s: go_text(s).upper(),
    "lower": lambda s: go_text(s).lower(),
    "upper": lambda s: go_text(s).upper(),
    "trim": lambda s: go_text(s).strip(),
    "trimPrefix": lambda pre, s: go_text(s).removeprefix(str(pre)),
    "trimSuffix": lambda suf, s: go_text(s).removesuffix(str(suf)),
    "replace": lambda old, new, s: go_text(s).replace(str(old), str(new)),
    "splitList": lambda sep, s: go_text(s).split(str(sep)),
    "split": lambda sep, s: {f"_{i}": p for i, p in enumerate(go_text(s).split(str(sep)))},
    "join": lambda sep, items: str(sep).join(go_text(i) for i in (items or [])),
    "default": _default,
    "empty": lambda v: not truthy(v),
    "toString": go_text,
    "quote": lambda *v: " ".join(f'"{go_text(x)}"' for x in v),
    "list": lambda *v: list(v),
    "dict": lambda *kv: {str(kv[i]): kv[i + 1] for i in range(0, len(kv) - 1, 2)},
    "ternary": lambda a, b, cond: a if truthy(cond) else b,
    "print": lambda *v: "".join(go_text(x) for x in v),
    "println": lambda *v: " ".join(go_text(x) for x in v) + "\n",
    "slice": lambda seq, *ix: seq[slice(*ix)] if ix else seq,
    "mkSlice": lambda *v: list(v),  # goss's own
    "has": lambda item, seq: item in (seq or []),
    "hasKey": lambda m, k: isinstance(m, Mapping) and k in m,
    "keys": lambda *maps: sorted(str(k) for m in maps for k in (m or {})),
    "toJson": lambda v: json.dumps(v, separators=(",", ":")),
    "regexReplaceAll": lambda pattern, s, repl: re.sub(
        go_regex(str(pattern)), re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", str(repl)), go_text(s)
    ),
    "regexFind": lambda pattern, s: (
        m.group(0) if (m := re.search(go_regex(str(pattern)), go_text(s))) else ""
    ),
}
