"""Harness connectors of the workspace: an Aws connector's cross-account role."""

from __future__ import annotations

from typing import Any

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
    if not cross.get("crossAccountRoleArn"):
        return None
    return {"identifier": ref, "role_arn": cross["crossAccountRoleArn"], "external_id": cross.get("externalId")}
