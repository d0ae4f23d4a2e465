"""Harness connectors of the workspace: an Aws connector's cross-account role."""

from __future__ import annotations

from typing import Any

from reconciler.util.secrets import outside_value, references
from reconciler.workspace.expr import leaves
from reconciler.workspace.load import Workspace


def aws_connector(ws: Workspace, ref: Any) -> dict | None:
    """An Aws connector's assumed role; an undefined connector means the default credential chain."""
    if not ref or ref not in ws.connectors:
        return None
    c = ws.connectors[ref]
    if c.body.get("type") not in (None, "Aws"):
        raise c.error(
            ("type",), f"connector '{ref}' has type '{c.body.get('type')}'; only Aws connectors are supported"
        )
    cross = c.get("spec", "credential", "crossAccountAccess", default={})
    base = ("spec", "credential", "crossAccountAccess")
    for value, path in leaves(c.body):
        if isinstance(value, str) and "secrets.getValue" in value and path != (*base, "externalId"):
            raise c.error(
                path,
                "a secret reference can be used in a connector only as crossAccountAccess.externalId: the role ARN "
                "names the role, and the connector is recorded in the state and in plans",
            )
    if not cross.get("crossAccountRoleArn"):
        return None
    external_id = cross.get("externalId")
    if isinstance(external_id, str) and "<+" in external_id:
        # the external ID from the secret store, read when the role is assumed (never kept)
        external_id = outside_value(external_id)
        if not references(external_id):
            raise c.error(
                (*base, "externalId"), 'externalId can be a value or one secret reference <+secrets.getValue("ID")>'
            )
    return {"identifier": ref, "role_arn": cross["crossAccountRoleArn"], "external_id": external_id}
