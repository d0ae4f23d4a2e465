"""Harness `<+...>` expressions: variables, entity fields and runtime inputs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from reconciler.errors import ConfigError, did_you_mean
from reconciler.yamlsrc import Doc, PathT

INNERMOST = re.compile(r"<\+([^<>]*)>")
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
                name = e[len(prefix):]
                if name not in table:
                    raise KeyError(f"<+{e}> names no variable", did_you_mean(name, table))
                value = table[name]
                return self.resolve_variable(name, value) if self.resolve_variable else value
        if e.startswith("provisioner."):
            if self.provisioner is None:
                raise KeyError(f"<+{e}>: no provisioner outputs here", "give them with --provisioner-outputs FILE or the infrastructure's spec.provisioner")
            return self.provisioner(e[len("provisioner."):])
        if e.startswith("secrets.getValue"):
            from reconciler.secrets import placeholder, reference_id

            sid = reference_id(e)
            if not sid:
                raise KeyError(f"<+{e}>: a secret reference is <+secrets.getValue(\"ID\")> (or \"ID#key\" for a key of a JSON secret)", None)
            return placeholder(sid)
        if not self.in_pipeline and e.split(".", 1)[0] in PIPELINE_ROOTS:
            raise KeyError(f"<+{e}> has a value only where a pipeline stage deploys this target, and no pipeline in the workspace does",
                           "deploy it from a pipeline stage (reconciler run / plan --pipeline), or use a service or environment variable")
        raise KeyError(f"unknown expression <+{e}>", did_you_mean(e, self.names()))


def _typed(text: str) -> Any:
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text


def resolve_string(text: str, scope: Scope, where: Callable[[], tuple[str, int | None]]) -> Any:
    """Resolve every expression in `text`. A string that is exactly one expression keeps
    the expression's type (a Number variable stays a number)."""
    if "<+" not in text:
        return text
    value: Any = _inline_modifiers(text)
    for _ in range(50):  # nested expressions resolve innermost first
        if not isinstance(value, str):
            return value
        m = INNERMOST.search(value)
        if not m:
            break
        try:
            got = scope.lookup(m.group(1))
        except NeedsInput:
            file, line = where()
            raise ConfigError(f"runtime input <+{m.group(1).strip()}> has no value", file, line,
                              "give it a value with --var or --artifact, or a .default(...)") from None
        except KeyError as exc:
            file, line = where()
            msg, hint = exc.args
            raise ConfigError(msg, file, line, hint) from None
        whole = m.start() == 0 and m.end() == len(value)
        if whole:
            value = got
        else:
            value = value[: m.start()] + ("" if got is None else _text(got)) + value[m.end():]
    if isinstance(value, str) and "<+" in value:
        file, line = where()
        raise ConfigError(f"cannot resolve expression in '{value}'", file, line)
    return value


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
        return {k: resolve_tree(v, scope, doc, path + (k,)) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve_tree(v, scope, doc, path + (i,)) for i, v in enumerate(data)]
    if isinstance(data, str):
        return resolve_string(data, scope, lambda: (doc.file, doc.line(path)))
    return data


def is_runtime_input(value: Any) -> bool:
    return isinstance(value, str) and value.strip().startswith("<+input>")
