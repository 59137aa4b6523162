"""goss's matchers, evaluated in Python with goss's semantics (goss v0.4 `matchers/` and the manual).

`compile_matcher(expected, where)` checks a matcher from a spec up front (an unknown matcher is a
`GossSpecError`, never a silent pass) and returns a `Matcher` whose `match(actual)` says whether the
system value satisfies it. Conversions follow goss's transforms: strings for string matchers (lists are
joined with newlines), arrays for array matchers (strings are split on newlines), numbers for gt/ge/lt/le.

Attributes that goss reads as a stream (command stdout/stderr, file contents) use `patterns()` when the
expected value is a list of strings: goss's "have-patterns" (legacy contains) semantics, line by line:
`foo` some line contains foo, `!foo` no line contains foo, `/re/` some line matches, `!/re/` none does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kiln.core.errors import InputError
from kiln.goss.gofuncs import go_regex


class GossSpecError(InputError):
    """A spec uses a resource type, attribute or matcher kiln does not support, or is malformed."""


@dataclass(frozen=True)
class Matcher:
    describe: str
    match: Callable[[Any], bool]

    def __call__(self, actual: Any) -> bool:
        return self.match(actual)


# --- conversions (goss matchers/type_conversion.go) ----------------------------------------------------


def to_string(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "\n".join(to_string(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def to_array(value: Any) -> list[Any]:
    if isinstance(value, str):
        return value.split("\n")
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def to_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(to_string(value).strip())
    except ValueError:
        return None


def go_regexp(pattern: str, where: str) -> re.Pattern[str]:
    """Compile a Go (RE2) regexp: \\Q...\\E literals and \\z are translated; the rest is Python's syntax."""
    translated = go_regex(pattern).replace(r"\z", r"\Z")
    try:
        return re.compile(translated)
    except re.error as exc:
        raise GossSpecError(f"{where}: invalid regexp {pattern!r}: {exc}") from exc


# --- semver (blang/semver as goss uses it) -------------------------------------------------------------

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


def parse_semver(text: str) -> tuple[int, int, int, tuple[Any, ...]] | None:
    """Strict semver 2.0 (no leading v), as blang/semver's Parse; None if it is not one."""
    m = _SEMVER.match(text)
    if not m:
        return None
    pre: tuple[Any, ...] = ()
    if m.group(4):
        pre = tuple(int(p) if p.isdigit() else p for p in m.group(4).split("."))
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), pre


def _cmp_semver(a: tuple[int, int, int, tuple[Any, ...]], b: tuple[int, int, int, tuple[Any, ...]]) -> int:
    if a[:3] != b[:3]:
        return -1 if a[:3] < b[:3] else 1
    pa, pb = a[3], b[3]
    if pa == pb:
        return 0
    if not pa:
        return 1  # a release ranks above its pre-releases
    if not pb:
        return -1
    for x, y in zip(pa, pb, strict=False):
        if x == y:
            continue
        if isinstance(x, int) and isinstance(y, int):
            return -1 if x < y else 1
        if isinstance(x, int):
            return -1  # numeric identifiers rank below alphanumeric ones
        if isinstance(y, int):
            return 1
        return -1 if x < y else 1
    return -1 if len(pa) < len(pb) else 1


_OPS: dict[str, Callable[[int], bool]] = {
    ">=": lambda c: c >= 0,
    "<=": lambda c: c <= 0,
    "!=": lambda c: c != 0,
    "==": lambda c: c == 0,
    "=": lambda c: c == 0,
    ">": lambda c: c > 0,
    "<": lambda c: c < 0,
}


def semver_range(constraint: str, where: str) -> Callable[[str], bool]:
    """blang/semver ParseRange: `>1.0.0 <2.0.0 !=1.5.0` (AND, space separated) joined by `||` (OR)."""
    alternatives: list[list[tuple[Callable[[int], bool], tuple[int, int, int, tuple[Any, ...]]]]] = []
    for alt in constraint.split("||"):
        parts: list[str] = []
        for token in alt.split():  # "< 1.5.0": an operator alone joins the version after it
            if parts and parts[-1] in _OPS:
                parts[-1] += token
            else:
                parts.append(token)
        if not parts or parts[-1] in _OPS:
            raise GossSpecError(f"{where}: invalid semver constraint {constraint!r}")
        comparators = []
        for part in parts:
            m = re.match(r"^(>=|<=|!=|==|=|>|<)?\s*(.+)$", part)
            assert m is not None
            version = parse_semver(m.group(2))
            if version is None:
                raise GossSpecError(
                    f"{where}: invalid semver constraint {constraint!r}: {m.group(2)!r} is not X.Y.Z",
                    hint="wildcards such as 1.x are not supported (goss does not officially support them)",
                )
            comparators.append((_OPS[m.group(1) or "="], version))
        alternatives.append(comparators)

    def check(text: str) -> bool:
        v = parse_semver(text)
        if v is None:
            raise ValueError(f"{text!r} is not a semver version")
        return any(all(op(_cmp_semver(v, ver)) for op, ver in alt) for alt in alternatives)

    return check


# --- matcher compilation (goss resource/gomega.go) ---------------------------------------------------

SUPPORTED = (
    "equal",
    "have-prefix",
    "have-suffix",
    "match-regexp",
    "contain-substring",
    "have-len",
    "have-key",
    "contain-element",
    "contain-elements",
    "consist-of",
    "not",
    "and",
    "or",
    "gt",
    "ge",
    "lt",
    "le",
    "semver-constraint",
)


def _bipartite(matchers: Sequence[Matcher], elements: Sequence[Any]) -> int:
    """Size of the largest matching of matchers to distinct elements (gomega's ContainElements/ConsistOf)."""
    owner: dict[int, int] = {}

    def augment(mi: int, seen: set[int]) -> bool:
        for ei, element in enumerate(elements):
            if ei in seen or not matchers[mi](element):
                continue
            seen.add(ei)
            if ei not in owner or augment(owner[ei], seen):
                owner[ei] = mi
                return True
        return False

    return sum(1 for mi in range(len(matchers)) if augment(mi, set()))


def _deep_equal(expected: Any, actual: Any) -> bool:
    if isinstance(expected, list) and isinstance(actual, str):
        actual = to_array(actual)
    if isinstance(expected, list):
        return (
            isinstance(actual, list | tuple)
            and len(expected) == len(actual)
            and all(_deep_equal(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, str):
        return to_string(actual) == expected
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, int | float):
        number = to_number(actual)
        return number is not None and number == float(expected)
    return bool(expected == actual)


def compile_matcher(expected: Any, where: str) -> Matcher:
    """Turn a spec's expected value into a Matcher; GossSpecError names `where` for anything unsupported."""
    if isinstance(expected, str):
        return Matcher(repr(expected), lambda a: to_string(a) == expected)
    if isinstance(expected, bool):
        return Matcher(to_string(expected), lambda a: a is expected)
    if isinstance(expected, int | float):
        return Matcher(to_string(expected), lambda a: _deep_equal(expected, a))
    if isinstance(expected, list):
        subs = [compile_matcher(e, where) for e in expected]
        return _contain_elements(subs)
    if expected is None:
        raise GossSpecError(f"{where}: missing value (null)")
    if not isinstance(expected, Mapping):
        raise GossSpecError(f"{where}: unsupported matcher value {expected!r}")
    if len(expected) != 1:
        raise GossSpecError(f"{where}: a matcher map must have exactly one key, got {sorted(expected)}")
    ((name, value),) = expected.items()
    here = f"{where}.{name}"
    if name in ("have-prefix", "have-suffix", "contain-substring", "match-regexp"):
        if not isinstance(value, str):
            raise GossSpecError(f"{here}: expects a string, got {value!r}")
        if name == "have-prefix":
            return Matcher(f"have-prefix {value!r}", lambda a: to_string(a).startswith(value))
        if name == "have-suffix":
            return Matcher(f"have-suffix {value!r}", lambda a: to_string(a).endswith(value))
        if name == "contain-substring":
            return Matcher(f"contain-substring {value!r}", lambda a: value in to_string(a))
        rx = go_regexp(value, here)
        return Matcher(f"match-regexp {value!r}", lambda a: rx.search(to_string(a)) is not None)
    if name == "equal":
        return Matcher(f"equal {value!r}", lambda a: _deep_equal(value, a))
    if name == "have-len":
        if not isinstance(value, int) or isinstance(value, bool):
            raise GossSpecError(f"{here}: expects an integer, got {value!r}")
        return Matcher(
            f"have-len {value}", lambda a: isinstance(a, str | list | tuple | dict) and len(a) == value
        )
    if name == "have-key":
        sub = compile_matcher(value, here)
        return Matcher(
            f"have-key {sub.describe}", lambda a: isinstance(a, Mapping) and any(sub(k) for k in a)
        )
    if name == "contain-element":
        sub = compile_matcher(value, here)
        return Matcher(f"contain-element {sub.describe}", lambda a: any(sub(e) for e in to_array(a)))
    if name in ("contain-elements", "consist-of", "and", "or"):
        if not isinstance(value, list):
            raise GossSpecError(f"{here}: expects a list, got {value!r}")
        subs = [compile_matcher(v, f"{here}[{i}]") for i, v in enumerate(value)]
        if name == "contain-elements":
            return _contain_elements(subs)
        if name == "consist-of":

            def consist(a: Any) -> bool:
                elements = to_array(a)
                return len(elements) == len(subs) and _bipartite(subs, elements) == len(subs)

            return Matcher(f"consist-of [{', '.join(s.describe for s in subs)}]", consist)
        if name == "and":
            return Matcher(" and ".join(s.describe for s in subs), lambda a: all(s(a) for s in subs))
        return Matcher(" or ".join(s.describe for s in subs), lambda a: any(s(a) for s in subs))
    if name == "not":
        sub = compile_matcher(value, here)
        return Matcher(f"not {sub.describe}", lambda a: not sub(a))
    if name in ("gt", "ge", "lt", "le"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise GossSpecError(f"{here}: expects a number, got {value!r}")
        op = {"gt": float.__gt__, "ge": float.__ge__, "lt": float.__lt__, "le": float.__le__}[name]

        def numeric(a: Any) -> bool:
            number = to_number(a)
            return number is not None and bool(op(number, float(value)))

        return Matcher(f"{name} {value}", numeric)
    if name == "semver-constraint":
        if not isinstance(value, str):
            raise GossSpecError(f"{here}: expects a string, got {value!r}")
        check = semver_range(value, here)

        def semver(a: Any) -> bool:
            versions = [to_string(v) for v in a] if isinstance(a, list | tuple) else [to_string(a)]
            if not versions:
                return False
            try:
                return all(check(v) for v in versions)
            except ValueError:
                return False  # goss: "Expected a single or list of semver valid version(s)" -> fails

        return Matcher(f"semver-constraint {value!r}", semver)
    raise GossSpecError(
        f"{here}: matcher {name!r} is not supported by kiln's evaluator",
        hint=f"supported: {', '.join(SUPPORTED)}; run the real goss binary (--goss-binary) for others",
    )


def _contain_elements(subs: list[Matcher]) -> Matcher:
    def contains(a: Any) -> bool:
        return _bipartite(subs, to_array(a)) == len(subs)

    return Matcher(f"contain-elements [{', '.join(s.describe for s in subs)}]", contains)


# --- patterns (goss matchers/have_patterns.go) ---------------------------------------------------------


def _regex_test(rx: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda line: rx.search(line) is not None


def _substring_test(needle: str) -> Callable[[str], bool]:
    return lambda line: needle in line


def patterns(expected: Sequence[str], where: str) -> Matcher:
    """goss's line patterns for streamed attributes. Each must hold for the matcher to pass."""
    compiled: list[tuple[str, bool, Callable[[str], bool]]] = []
    for raw in expected:
        if not isinstance(raw, str):
            raise GossSpecError(f"{where}: patterns must be strings, got {raw!r}")
        inverse = raw.startswith("!")
        if (raw.startswith("/") or raw.startswith("!/")) and raw.endswith("/") and len(raw.lstrip("!")) > 1:
            body = raw[1:] if inverse else raw
            body = body[1:] if body[:1] in ("\\", "/") else body
            body = body[:-1] if body.endswith("/") else body
            rx = go_regexp(body, where)
            compiled.append((raw, inverse, _regex_test(rx)))
        else:
            clean = raw.lstrip("\\/!")
            compiled.append((raw, inverse, _substring_test(clean)))

    def match(actual: Any) -> bool:
        text = to_string(actual)
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # bufio.Scanner does not yield a final empty line
        for raw, inverse, test in compiled:
            hit = any(test(line) for line in lines)
            if inverse and hit:
                return False
            if not inverse and not hit and raw != "":
                return False
        return True

    return Matcher(f"patterns {list(expected)!r}", match)


def stream_matcher(expected: Any, where: str) -> Matcher:
    """Matcher for a streamed attribute: a list of strings is patterns; anything else a normal matcher."""
    if isinstance(expected, list) and all(isinstance(e, str) for e in expected):
        return patterns(expected, where)
    return compile_matcher(expected, where)
