"""Reading secret values from the configured store (Secrets Manager or SSM Parameter Store),
for the references a rendered function or a pipeline holds."""

from __future__ import annotations

import json
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.util import secrets as _secrets
from reconciler.util.secrets import SecretError, expression, remember


def read_values(aws, wanted: dict[tuple[str, str, Any], list[str]]) -> dict[tuple[str, str], str]:
    """Read each distinct (region, secret id, connector) once: {(region, id): value}.
    `wanted` maps each to the places that use it (for the error, which never holds a value)."""
    from reconciler.errors import AwsError

    cfg = _secrets.config()
    out: dict[tuple[str, str], str] = {}
    errors: list[ReconcilerError] = []
    for (region, sid, conn), where in wanted.items():
        name, key = cfg.store_name(sid)
        store = "SSM Parameter Store" if cfg.store == "ssm" else "Secrets Manager"
        used = f"used by {', '.join(sorted(set(where)))}"
        try:
            value = aws.read_secret(region, json.loads(conn) if conn else None, cfg.store, name)
        except AwsError as exc:
            why = {
                "ResourceNotFoundException": "not found",
                "ParameterNotFound": "not found",
                "AccessDeniedException": "reading it was denied",
                "AccessDenied": "reading it was denied",
                "DecryptionFailure": "it could not be decrypted",
            }.get(exc.code, f"cannot be read ({exc.code or 'error'})")
            errors.append(
                SecretError(
                    f"secret {expression(sid)} ({store} '{name}' in {region}) {why}; {used}",
                    hint="create it, or grant this identity secretsmanager:GetSecretValue / ssm:GetParameter"
                    if why != "not found"
                    else f"create it in {store}, or correct the reference",
                )
            )
            continue
        if value is None:
            errors.append(
                SecretError(f"secret {expression(sid)} ({store} '{name}' in {region}) has no string value; {used}")
            )
            continue
        if key is not None:
            try:
                doc = json.loads(value)
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                errors.append(
                    SecretError(
                        f"secret {expression(sid)} selects key '{key}' but {store} '{name}' is not a JSON object; {used}"
                    )
                )
                continue
            if key not in doc:
                errors.append(
                    SecretError(
                        f"secret {expression(sid)}: {store} '{name}' has no key '{key}' (keys: {', '.join(sorted(doc))}); {used}"
                    )
                )
                continue
            value = doc[key] if isinstance(doc[key], str) else json.dumps(doc[key])
        remember(value, secret=True)
        out[(region, sid)] = value
    if errors:
        from reconciler.errors import ErrorList

        raise errors[0] if len(errors) == 1 else ErrorList(errors)
    return out
