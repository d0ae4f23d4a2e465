"""Harness `<+...>` expressions: variables, entity fields and runtime inputs."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import ConfigError, did_you_mean
from reconciler.util.yamlsrc import Doc, PathT

DEFAULT_INPUT = re.compile(r"""^input(?:\.[a-zA-Z]+\([^()]*\))*\.default\((?P<q>['"]?)(?P<v>.*?)(?P=q)\)""")
# Harness writes a runtime input's modifiers after it: `<+input>.default(x).allowedValues(x,y)`
INPUT_MODIFIERS = re.compile(r"<\+input>((?:\.[a-zA-Z]+\([^()]*\))+)")


# expressions that only a pipeline stage gives a value to
PIPELINE_ROOTS = ("pipeline", "stage", "repeat", "strategy", "matrix")


class NeedsInput(Exception):
    """A `<+input>` runtime input with no value supplied."""


@dataclass
class Scope:
    """What expressions can see while rendering one target."""

    fixed: dict[str, Any] = field(default_factory=dict)  # "env.name" → value
    service_variables: dict[str, Any] = field(default_factory=dict)
    env_variables: dict[str, Any] = field(default_factory=dict)
    # variable values may hold expressions themselves; resolve them lazily
    resolve_variable: Callable[[str, Any], Any] | None = None
    # `<+provisioner.NAME>`: the infrastructure's provisioner outputs (reconciler.provision)
    provisioner: Callable[[str], Any] | None = None
    # a pipeline stage deploys this target: `<+pipeline.*>`, `<+stage.*>`... are in `fixed`
    in_pipeline: bool = False

    def names(self) -> list[str]:
        return (
            sorted(self.fixed)
            + [f"serviceVariables.{n}" for n in sorted(self.service_variables)]
            + [f"env.variables.{n}" for n in sorted(self.env_variables)]
        )

    def lookup(self, expr: str) -> Any:
        """The value of one expression body (the text between `<+` and `>`)."""
        e = expr.strip()
        if e == "input" or e.startswith("input."):
            m = DEFAULT_INPUT.match(e)
            if m:
                return _typed(m.group("v"))
            raise NeedsInput(e)
        if e in self.fixed:
            return self.fixed[e]
        for prefix, table in (("serviceVariables.", self.service_variables), ("env.variables.", self.env_variables)):
            if e.startswith(prefix):
                name = e[len(prefix) :]
                if name not in table:
                    raise KeyError(f"<+{e}> names no variable", did_you_mean(name, table))
                value = table[name]
                return self.resolve_variable(name, value) if self.resolve_variable else value
        if e.startswith("provisioner."):
            if self.provisioner is None:
                raise KeyError(
                    f"<+{e}>: no provisioner outputs here",
                    "give them with --provisioner-outputs FILE or the infrastructure's spec.provisioner",
                )
            return self.provisioner(e[len("provisioner.") :])
        if e.startswith("secrets.getValue"):
            from reconciler.util.secrets import placeholder, reference_id

            sid = reference_id(e)
            if not sid:
                raise KeyError(
                    f'<+{e}>: a secret reference is <+secrets.getValue("ID")> (or "ID#key" for a key of a JSON secret)',
                    None,
                )
            return placeholder(sid)
        if not self.in_pipeline and e.split(".", 1)[0] in PIPELINE_ROOTS:
            raise KeyError(
                f"<+{e}> has a value only where a pipeline stage deploys this target, and no pipeline in the workspace does",
                "deploy it from a pipeline stage (reconciler run / plan --pipeline), or use a service or environment variable",
            )
        raise KeyError(f"unknown expression <+{e}>", did_you_mean(e, self.names()))


def _typed(text: str) -> Any:
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text


# the longest string an expression may expand to (a chain of variables that doubles each
# time would otherwise grow without bound)
MAX_EXPANDED = 1 << 20


@dataclass
class Expr:
    """One `<+...>` of a text: its source, and the parts of its body (text and inner expressions)."""

    source: str
    parts: list  # str | Expr
    start: int  # offset in the text it was found in


def split_expressions(text: str, where: Callable[[], tuple[str, int | None]] | None = None) -> list:
    """`text` as literal strings and Expr, outermost expressions first (an Expr's body may hold
    inner expressions: `<+pipeline.stages.<+stage.identifier>.name>`). Only `text` itself is
    scanned: what an expression resolves to is never read for expressions again. An `<+`
    that is not closed is an error."""
    text = _inline_modifiers(text)
    out: list = []
    stack: list[tuple[int, list]] = []  # (start, parts) of the open expressions
    lit_start = 0
    i, n = 0, len(text)
    while i < n:
        if text.startswith("<+", i):
            cur = stack[-1][1] if stack else out
            if i > lit_start:
                cur.append(text[lit_start:i])
            stack.append((i, []))
            i += 2
            lit_start = i
            continue
        if text[i] == ">" and stack:
            start, parts = stack.pop()
            if i > lit_start:
                parts.append(text[lit_start:i])
            e = Expr(text[start : i + 1], parts, start)
            (stack[-1][1] if stack else out).append(e)
            i += 1
            lit_start = i
            continue
        i += 1
    if stack:
        start = stack[0][0]
        file, line = where() if where else (None, None)
        raise ConfigError(f"expression '{_excerpt(text[start:])}' is not closed (no '>')", file, line)
    if lit_start < n:
        out.append(text[lit_start:])
    return out


def _excerpt(text: str, limit: int = 40) -> str:
    """The start of `text` for an error message: never a whole long value."""
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"


def resolve_expr(e: Expr, scope: Scope, where: Callable[[], tuple[str, int | None]]) -> Any:
    """The value of one expression; its inner expressions are resolved first and their
    values used as part of its name."""
    body = "".join(p if isinstance(p, str) else _text_of(resolve_expr(p, scope, where)) for p in e.parts)
    if len(body) > MAX_EXPANDED:
        file, line = where()
        raise ConfigError(f"expression '{_excerpt(e.source)}' is longer than {MAX_EXPANDED} characters", file, line)
    try:
        return scope.lookup(body)
    except NeedsInput:
        file, line = where()
        raise ConfigError(
            f"runtime input <+{_excerpt(body.strip())}> has no value",
            file,
            line,
            "give it a value with --var or --artifact, or a .default(...)",
        ) from None
    except KeyError as exc:
        file, line = where()
        msg, hint = exc.args
        raise ConfigError(msg, file, line, hint) from None


def resolve_string(text: str, scope: Scope, where: Callable[[], tuple[str, int | None]]) -> Any:
    """Resolve every expression in `text`, in one pass: a value that holds `<+` (a password)
    is data, never read again. A string that is exactly one expression keeps the
    expression's type (a Number variable stays a number). The result is at most
    MAX_EXPANDED characters."""
    if "<+" not in text:
        return text
    parts = split_expressions(text, where)
    if len(parts) == 1 and isinstance(parts[0], Expr):
        value = resolve_expr(parts[0], scope, where)
        if isinstance(value, str) and len(value) > MAX_EXPANDED:
            _too_long(parts[0], where)
        return value
    out: list[str] = []
    size = 0
    for p in parts:
        piece = p if isinstance(p, str) else _text_of(resolve_expr(p, scope, where))
        size += len(piece)
        if size > MAX_EXPANDED:
            _too_long(p, where)
        out.append(piece)
    return "".join(out)


def _too_long(p: Any, where: Callable[[], tuple[str, int | None]]) -> None:
    file, line = where()
    what = f"expression '{_excerpt(p.source)}'" if isinstance(p, Expr) else "the text"
    raise ConfigError(
        f"the value grows beyond {MAX_EXPANDED} characters at {what}",
        file,
        line,
        "a chain of variables that repeat each other?",
    )


def _text_of(value: Any) -> str:
    return "" if value is None else _text(value)


def _inline_modifiers(text: str) -> str:
    """`<+input>.default(x)` as `<+input.default(x)>`, so that it is one expression."""
    return INPUT_MODIFIERS.sub(lambda m: f"<+input{m.group(1)}>", text)


def input_default(value: Any) -> tuple[bool, Any]:
    """(True, default) for a runtime input with a `.default(...)`; else (False, None)."""
    if not is_runtime_input(value):
        return False, None
    m = re.fullmatch(r"<\+(.*)>", _inline_modifiers(value.strip()), re.S)
    d = DEFAULT_INPUT.match(m.group(1).strip()) if m else None
    return (True, _typed(d.group("v"))) if d else (False, None)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def resolve_tree(data: Any, scope: Scope, doc: Doc, path: PathT = ()) -> Any:
    """A copy of `data` with every expression resolved; errors name the file and line."""
    if isinstance(data, dict):
        return {k: resolve_tree(v, scope, doc, (*path, k)) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve_tree(v, scope, doc, (*path, i)) for i, v in enumerate(data)]
    if isinstance(data, str):
        return resolve_string(data, scope, lambda: (doc.file, doc.line(path)))
    return data


def leaves(node: Any, path: tuple = ()) -> Iterator[tuple[Any, tuple]]:
    """Every value below `node` that is neither a mapping nor a list, with its path."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from leaves(v, (*path, i))
    else:
        yield node, path


def is_runtime_input(value: Any) -> bool:
    return isinstance(value, str) and value.strip().startswith("<+input>")
