"""The small parsers of a pipeline's own syntax: Harness durations (`10m`, `1m30s`) and
`when.condition` expressions (a JEXL-like comparison of `<+...>` values and literals).
Pure functions: no file, no AWS."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

DURATION = re.compile(r"^(?:\d+(?:w|d|h|m|s|ms))+$")
DURATION_PART = re.compile(r"(\d+)(ms|w|d|h|m|s)")
UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}


def parse_duration(text: Any) -> float:
    """Seconds in a Harness duration: 10m, 30s, 1h, 1m30s, 1d, 500ms. ValueError otherwise."""
    t = str(text).strip().replace(" ", "")
    if isinstance(text, bool) or not DURATION.match(t):
        raise ValueError(f"'{text}' is not a duration like 10m, 30s, 1h or 1m30s")
    return sum(int(n) * UNIT_SECONDS[u] for n, u in DURATION_PART.findall(t))


_TOKEN = re.compile(
    r"""\s*(?:(?P<expr><\+)|(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<num>-?\d+(?:\.\d+)?(?![\w.]))|(?P<op>==|!=|<=|>=|&&|\|\||[!()<>])|(?P<word>[A-Za-z_][\w.\-]*))"""
)


def _tokens(text: str, value_of: Callable[[str], Any]) -> list[tuple[str, Any]]:
    out, i = [], 0
    while i < len(text):
        if text[i:].strip() == "":
            break
        m = _TOKEN.match(text, i)
        if not m:
            raise ValueError(f"cannot read the condition at '{text[i:].strip()[:30]}'")
        if m.group("expr"):
            start, depth, j = m.start("expr"), 0, m.start("expr")
            while j < len(text):  # the whole <+...>, nested ones included
                if text.startswith("<+", j):
                    depth += 1
                    j += 2
                    continue
                if text[j] == ">":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if depth:
                raise ValueError("an expression <+... is not closed")
            out.append(("val", value_of(text[start : j + 1])))
            i = j + 1
            continue
        i = m.end()
        if m.group("str"):
            out.append(("val", _unescape(m.group("str")[1:-1])))
        elif m.group("num"):
            out.append(("val", m.group("num")))
        elif m.group("op"):
            out.append(("op", m.group("op")))
        else:
            w = m.group("word")
            out.append(("val", {"true": True, "false": False, "null": None}.get(w, w)))
    return out


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def _unescape(text: str) -> str:
    """A quoted literal's text: \\n, \\t, \\r and \\0 are characters, a backslash before
    anything else stands for that character; everything else (non-ASCII included) is as written."""
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), text)


def evaluate_condition(text: Any, value_of: Callable[[str], Any]) -> bool:
    """A `when.condition`: true/false, or a JEXL-like comparison of expressions and literals
    with == != < > <= >= && || ! and parentheses. `value_of` resolves one `<+...>`."""
    if isinstance(text, bool):
        return text
    toks = _tokens(str(text), value_of)
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else ("end", None)

    def take():
        nonlocal pos
        pos += 1
        return toks[pos - 1] if pos <= len(toks) else ("end", None)

    def atom():
        kind, v = take()
        if kind == "op" and v == "!":
            return not _truth(atom())
        if kind == "op" and v == "(":
            got = disj()
            if take() != ("op", ")"):
                raise ValueError("a '(' is not closed")
            return got
        if kind != "val":
            raise ValueError(f"unexpected {v or 'end of condition'}")
        return v

    def comparison():
        left = atom()
        kind, op = peek()
        if kind == "op" and op in ("==", "!=", "<", ">", "<=", ">="):
            take()
            return _compare(left, op, atom())
        return left

    def conj():
        v = comparison()
        while peek() == ("op", "&&"):
            take()
            right = comparison()
            v = _truth(v) and _truth(right)
        return v

    def disj():
        v = conj()
        while peek() == ("op", "||"):
            take()
            right = conj()
            v = _truth(v) or _truth(right)
        return v

    result = disj()
    if pos != len(toks):
        raise ValueError(f"unexpected {toks[pos][1]!r}")
    return _truth(result)


def _truth(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise ValueError(f"{v!r} is not true or false")


def _compare(a: Any, op: str, b: Any) -> bool:
    def num(x):
        try:
            return float(x)
        except (TypeError, ValueError):
            return None

    if op in ("==", "!="):
        same = (num(a) == num(b)) if num(a) is not None and num(b) is not None else text_of(a) == text_of(b)
        return same if op == "==" else not same
    x, y = num(a), num(b)
    if x is None or y is None:
        x, y = text_of(a), text_of(b)
    return {"<": x < y, ">": x > y, "<=": x <= y, ">=": x >= y}[op]


def text_of(v: Any) -> str:
    """A value as a condition and a script see it: true, false, "" for null, else its text."""
    return "true" if v is True else "false" if v is False else "" if v is None else str(v)
