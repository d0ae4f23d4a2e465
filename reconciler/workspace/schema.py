"""Function and alias definitions checked against botocore's own Lambda service model.

There is no hand-written field list: the CreateFunction and CreateAlias input shapes
decide which keys exist (matched case-insensitively, so camelCase as in the Harness
examples and PascalCase as in the AWS API both work), their types and their limits.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache
from typing import Any

from reconciler.errors import ConfigError, did_you_mean
from reconciler.util.yamlsrc import Doc, PathT


@lru_cache(maxsize=1)
def lambda_model():
    """botocore's Lambda service model, read as a botocore session reads it (the data path
    of AWS_DATA_PATH, then botocore's own data), without the cost of importing a session."""
    import os

    from botocore.loaders import create_loader
    from botocore.model import ServiceModel

    loader = create_loader(os.environ.get("AWS_DATA_PATH"))
    return ServiceModel(loader.load_service_model("lambda", "service-2"), service_name="lambda")


@lru_cache(maxsize=1)
def _region_patterns() -> tuple[re.Pattern, ...]:
    """Each AWS partition's `regionRegex` from botocore's partitions data: the names AWS gives
    its regions, including regions newer than this botocore (`us-east-9` passes, `AWS_REGION`,
    `<REGION>` and `your_aws_region` do not)."""
    import os

    from botocore.loaders import create_loader

    data = create_loader(os.environ.get("AWS_DATA_PATH")).load_data("partitions")
    return tuple(re.compile(p["regionRegex"]) for p in data.get("partitions", []) if p.get("regionRegex"))


def region_problem(value: Any) -> str | None:
    """Why `value` is not an AWS region name, or None when it is one (or a provisioner output
    that validate stands in for)."""
    text = str(value)
    if DEFERRED in text:
        return None
    if isinstance(value, str) and any(p.fullmatch(text) for p in _region_patterns()):
        return None
    return f"'{text}' is not an AWS region (like us-east-1, eu-west-2, cn-north-1, us-gov-west-1)"


# what validate shows for a provisioner output it does not read (reconciler.provision): its
# value is known only at plan time, so pattern checks wait for it
DEFERRED = "(provisioner."


def _pattern_problem(shape, s: str) -> str | None:
    pattern = shape.metadata.get("pattern")
    if not pattern or DEFERRED in s:
        return None
    if _compiled(pattern).fullmatch(s):
        return None
    return pattern


@cache
def _compiled(pattern: str):
    """The model's pattern compiled. botocore's patterns are Java regular expressions; a few
    (TagKey's `\\p{L}`) use Unicode classes that Python's `re` lacks: those compile with the
    `regex` module where it is installed, and are otherwise not checked here (Lambda checks
    them)."""
    try:
        return re.compile(pattern)
    except re.error:
        try:
            import regex

            return regex.compile(pattern)
        except Exception:  # noqa: BLE001 - not installed, or a pattern it cannot read either
            return _ANY


class _Any:
    def fullmatch(self, _s: str) -> bool:
        return True


_ANY = _Any()


@cache
def input_shape(operation: str):
    return lambda_model().operation_model(operation).input_shape


@lru_cache(maxsize=1)
def update_config_fields() -> frozenset[str]:
    """Fields that UpdateFunctionConfiguration can change (minus the addressing ones)."""
    members = set(input_shape("UpdateFunctionConfiguration").members)
    return frozenset(members - {"FunctionName", "RevisionId"})


def normalise(value: Any, shape, doc: Doc, path: PathT, errors: list[ConfigError], label: str = "") -> Any:
    """`value` coerced to `shape`; problems are appended to `errors` (all of them, not just the first)."""
    t = shape.type_name
    here = label or ".".join(str(p) for p in path)
    if t == "structure":
        if not isinstance(value, dict):
            errors.append(
                doc.error(path, f"'{here}' must be a mapping (botocore shape {shape.name}), got {_kind(value)}")
            )
            return value
        members = {m.lower(): m for m in shape.members}
        out = {}
        for key, sub in value.items():
            canon = members.get(str(key).lower())
            if canon is None:
                errors.append(
                    doc.error(
                        (*path, key), f"unknown field '{key}' in {shape.name}", did_you_mean(str(key), shape.members)
                    )
                )
                continue
            if canon in out:
                errors.append(doc.error((*path, key), f"field '{key}' given twice (as '{canon}')"))
                continue
            out[canon] = normalise(sub, shape.members[canon], doc, (*path, key), errors, _join(label, canon))
        return out
    if t == "map":
        if not isinstance(value, dict):
            errors.append(
                doc.error(path, f"'{here}' must be a mapping of {shape.value.type_name}s, got {_kind(value)}")
            )
            return value
        for k in value:
            pattern = _pattern_problem(shape.key, str(k))
            if pattern:
                errors.append(
                    doc.error(
                        (*path, k),
                        f"'{_join(label, str(k))}': the name '{k}' does not match the pattern the Lambda API requires ({pattern})",
                    )
                )
        return {
            str(k): normalise(v, shape.value, doc, (*path, k), errors, _join(label, str(k))) for k, v in value.items()
        }
    if t == "list":
        if not isinstance(value, list):
            errors.append(doc.error(path, f"'{here}' must be a list, got {_kind(value)}"))
            return value
        return [normalise(v, shape.member, doc, (*path, i), errors, f"{label}[{i}]") for i, v in enumerate(value)]
    if t == "string":
        if isinstance(value, (bool, dict, list)) or value is None:
            errors.append(doc.error(path, f"'{here}' must be a string, got {_kind(value)}"))
            return value
        s = value if isinstance(value, str) else str(value)
        if "\u27e6secret:" in s:
            return s  # uses a secret: its value is known only when it is read (Lambda checks it then)
        if shape.enum and s not in shape.enum:
            errors.append(
                doc.error(
                    path,
                    f"'{here}' is '{s}', not one of the values the Lambda API accepts",
                    did_you_mean(s, shape.enum),
                )
            )
        lo, hi = shape.metadata.get("min"), shape.metadata.get("max")
        if lo is not None and len(s) < lo:
            errors.append(doc.error(path, f"'{here}' must be at least {lo} characters long"))
        if hi is not None and len(s) > hi:
            errors.append(doc.error(path, f"'{here}' must be at most {hi} characters long"))
        pattern = _pattern_problem(shape, s)
        if pattern and not shape.enum:
            shown = "its value" if shape.metadata.get("sensitive") else f"'{s}'"
            errors.append(
                doc.error(
                    path, f"'{here}' is {shown}, which does not match the pattern the Lambda API requires ({pattern})"
                )
            )
        return s
    if t in ("integer", "long"):
        n = _as_int(value)
        if n is None:
            errors.append(doc.error(path, f"'{here}' must be an integer, got {_kind(value)} {value!r}"))
            return value
        lo, hi = shape.metadata.get("min"), shape.metadata.get("max")
        if lo is not None and n < lo:
            errors.append(doc.error(path, f"'{here}' is {n}; the minimum is {lo}"))
        if hi is not None and n > hi:
            errors.append(doc.error(path, f"'{here}' is {n}; the maximum is {hi}"))
        return n
    if t in ("float", "double"):
        if isinstance(value, bool):
            errors.append(doc.error(path, f"'{here}' must be a number, got a boolean"))
            return value
        try:
            return float(value)
        except (TypeError, ValueError):
            errors.append(doc.error(path, f"'{here}' must be a number, got {_kind(value)} {value!r}"))
            return value
    if t == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        errors.append(doc.error(path, f"'{here}' must be true or false, got {value!r}"))
        return value
    if t == "blob":
        errors.append(
            doc.error(path, f"'{here}' (binary content) cannot be given in a definition file; use an artifact")
        )
        return value
    return value


def _join(label: str, key: str) -> str:
    return f"{label}.{key}" if label else key


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {
        dict: "a mapping",
        list: "a list",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
    }.get(type(value), type(value).__name__)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        s = value.strip()
        if s.lstrip("-").isdigit():
            return int(s)
    return None
