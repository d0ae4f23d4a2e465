"""What is live for a function, in the same shape as what is desired. Pure helpers.

Lambda returns a FunctionConfiguration that differs from the CreateFunction request
(Layers as objects, ImageConfigResponse, VpcConfig with VpcId, ...). `project()` maps a
live configuration onto the fields a desired configuration gives, so the two can be
compared directly and diffs stay quiet when nothing really changed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from reconciler.util.secrets import is_sealed

# Lambda's own defaults for the fields every function has: a definition that does not
# give one of them wants the default (as lambroll's fillDefaultValues), so a hand change
# to, say, the memory size is seen and undone.
DEFAULTS = {
    "Description": "",
    "Timeout": 3,
    "MemorySize": 128,
    "Environment": {"Variables": {}},
    "Layers": [],
    "TracingConfig": {"Mode": "PassThrough"},
    "EphemeralStorage": {"Size": 512},
}
# What a field reverts to when a definition stops giving it after an apply set it.
RESET = {
    "Description": "",
    "Timeout": 3,
    "MemorySize": 128,
    "Environment": {"Variables": {}},
    "Layers": [],
    "TracingConfig": {"Mode": "PassThrough"},
    "EphemeralStorage": {"Size": 512},
    "VpcConfig": {"SubnetIds": [], "SecurityGroupIds": []},
    "DeadLetterConfig": {"TargetArn": ""},
    "KMSKeyArn": "",
    "FileSystemConfigs": [],
    "ImageConfig": {},
}
VOLATILE = (
    "State",
    "StateReason",
    "StateReasonCode",
    "LastUpdateStatus",
    "LastUpdateStatusReason",
    "LastUpdateStatusReasonCode",
    "ResponseMetadata",
)
# What GetFunction gives and ListFunctions does not (AWS: "ListFunctions returns a subset
# of the FunctionConfiguration fields"): a snapshot made from either compares equal.
GET_ONLY = (*VOLATILE, "RuntimeVersionConfig")
UNORDERED = {("VpcConfig", "SubnetIds"), ("VpcConfig", "SecurityGroupIds")}


def _live_field(conf: dict, key: str) -> Any:
    if is_sealed(conf.get(key)):
        return conf[key]  # a value that uses a secret, sealed (reconciler.util.secrets.seal_places)
    if key == "Environment":
        return {"Variables": dict((conf.get("Environment") or {}).get("Variables") or {})}
    if key == "Layers":
        return [layer["Arn"] if isinstance(layer, dict) else layer for layer in conf.get("Layers") or []]
    if key == "ImageConfig":
        return dict((conf.get("ImageConfigResponse") or {}).get("ImageConfig") or {})
    if key == "SnapStart":
        return {"ApplyOn": (conf.get("SnapStartResponse") or conf.get("SnapStart") or {}).get("ApplyOn", "None")}
    if key == "VpcConfig":
        v = conf.get("VpcConfig") or {}
        return {
            "SubnetIds": list(v.get("SubnetIds") or []),
            "SecurityGroupIds": list(v.get("SecurityGroupIds") or []),
            **({"Ipv6AllowedForDualStack": v["Ipv6AllowedForDualStack"]} if "Ipv6AllowedForDualStack" in v else {}),
        }
    if key == "DeadLetterConfig":
        return dict(conf.get("DeadLetterConfig") or {"TargetArn": ""})
    if key == "KMSKeyArn":
        return conf.get("KMSKeyArn") or ""
    if key == "FileSystemConfigs":
        return list(conf.get("FileSystemConfigs") or [])
    return conf.get(key)


def _restrict(live: Any, desired: Any, path: tuple) -> Any:
    """Keep only the sub-fields of a structure that the desired value gives."""
    if isinstance(desired, dict) and isinstance(live, dict) and path[-1:] not in (("Variables",),):
        return {k: _restrict(live.get(k), v, (*path, k)) for k, v in desired.items()}
    if path in UNORDERED and isinstance(live, list):
        return sorted(live)
    return live


def canonical(config: dict) -> dict:
    """A desired configuration with order-insensitive lists sorted."""
    out = json.loads(json.dumps(config))
    for a, b in UNORDERED:
        if isinstance(out.get(a), dict) and isinstance(out[a].get(b), list):
            out[a][b] = sorted(out[a][b])
    return out


def project(conf: dict, desired: dict) -> dict:
    """The live configuration restricted to, and shaped like, the desired fields."""
    return {k: _restrict(_live_field(conf, k), v, (k,)) for k, v in desired.items()}


def alias_view(alias: dict) -> dict:
    """An alias as recorded and compared: version, description, routing weights."""
    weights = ((alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights")) or {}
    return {
        "version": alias.get("FunctionVersion"),
        "description": alias.get("Description", "") or "",
        "weights": {str(k): float(v) for k, v in weights.items()},
    }


def user_tags(tags: dict | None) -> dict:
    """Tags a user can change (not the aws: ones)."""
    return {k: v for k, v in (tags or {}).items() if not k.startswith("aws:")}


def snapshot(get_function: dict | None, aliases: dict[str, dict]) -> dict:
    """Everything about a live function that a plan or a rollback needs: from a
    GetFunction response, or {"Configuration": <a ListFunctions entry>, "Tags": ...}
    (then without image_uri, which only apply and rollback use; they read the function
    with GetFunction before changing it)."""
    if get_function is None:
        return {"exists": False}
    conf = get_function["Configuration"]
    code = get_function.get("Code") or {}
    return {
        "exists": True,
        "arn": conf.get("FunctionArn"),
        "configuration": {k: v for k, v in conf.items() if k not in ("ResponseMetadata",)},
        "code_sha256": conf.get("CodeSha256"),
        "image_uri": code.get("ImageUri"),
        "package_type": conf.get("PackageType", "Zip"),
        "architectures": conf.get("Architectures") or ["x86_64"],
        "revision_id": conf.get("RevisionId"),
        "last_modified": conf.get("LastModified"),
        "state": conf.get("State"),
        "last_update_status": conf.get("LastUpdateStatus"),
        "tags": user_tags(get_function.get("Tags")),
        **alias_fields(aliases),
    }


def alias_fields(aliases: dict[str, dict]) -> dict:
    """The aliases of a snapshot, from ListAliases' entries by name."""
    return {
        "aliases": {name: alias_view(a) for name, a in sorted(aliases.items())},
        # each alias's RevisionId: moving it is refused by Lambda if it changed since
        "alias_revisions": {name: a.get("RevisionId") for name, a in aliases.items() if a.get("RevisionId")},
    }


def fingerprint(snap: dict) -> str:
    """A short hash of what matters in a live snapshot: a saved plan is refused if it moved."""
    if not snap.get("exists"):
        return "absent"
    keep = {k: snap.get(k) for k in ("code_sha256", "revision_id", "last_modified", "tags", "aliases")}
    # the configuration itself too: LastModified and RevisionId do not move everywhere
    keep["configuration"] = {k: v for k, v in (snap.get("configuration") or {}).items() if k not in GET_ONLY}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]
