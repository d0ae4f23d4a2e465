"""Put a function back to a snapshot (the `previous` of a deployment record): delete a
function this apply created, or restore $LATEST's configuration and code, then every
alias and the tags. Used by a failed apply, `rollback` and a pipeline stage's rollback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reconciler.engine.live import project
from reconciler.errors import AwsError
from reconciler.model import owned_by

RESTORABLE_CONFIG = (
    "Description",
    "Timeout",
    "MemorySize",
    "Environment",
    "Layers",
    "Handler",
    "Runtime",
    "Role",
    "TracingConfig",
    "EphemeralStorage",
    "VpcConfig",
    "DeadLetterConfig",
    "KMSKeyArn",
    "ImageConfig",
    "FileSystemConfigs",
    "SnapStart",
    "LoggingConfig",
)


def restore(
    aws,
    name: str,
    region: str,
    connector: dict | None,
    prev: dict,
    log: Callable[[str], None],
    owner: dict | None = None,
) -> None:
    """Put a function back to a snapshot: delete it if it did not exist (only if it carries
    the ownership tags of `owner`, the desired tags: a function without them is not the
    one this apply created); else restore $LATEST configuration and code, then every alias.
    Its Lambda calls get capacity within the quotas ahead of other work (reconciler.aws.quota.urgent)."""
    from reconciler.aws.quota import urgent

    with urgent():
        _restore(aws, name, region, connector, prev, log, owner)


def _restore(
    aws,
    name: str,
    region: str,
    connector: dict | None,
    prev: dict,
    log: Callable[[str], None],
    owner: dict | None = None,
) -> None:
    from reconciler.aws.client import Lambda
    from reconciler.engine.refresh import refresh_function
    from reconciler.engine.sealed import unseal_snapshot

    lam = Lambda(aws, region, connector)
    if not prev.get("exists"):
        _delete_created(lam, name, log, owner)
        return
    now = refresh_function(aws, region, connector, name)
    if not now.get("exists"):
        raise AwsError(f"{name} no longer exists in Lambda; it cannot be restored")
    prev = unseal_snapshot(name, lam, prev, now, log)  # places that used a secret: their values found again
    want = _configuration_to_restore(name, lam, prev, now)
    # the configuration first, then the code: the reverse of the apply's order, so a
    # configuration Lambda could not apply (its update Failed) is gone before the code
    # update that would otherwise fail on it again
    if project(now.get("configuration") or {}, want) != want:
        log(f"{name}: restoring configuration")
        lam.update_configuration(name, want)
    if now.get("code_sha256") != prev.get("code_sha256"):
        _restore_code(aws, lam, name, region, connector, prev, log)
    restore_aliases(lam, name, prev, now, log)
    _restore_tags(lam, prev, now)


def _delete_created(lam, name: str, log: Callable[[str], None], owner: dict | None) -> None:
    """The function did not exist before: delete it, if it is the one this apply created."""
    got = lam.get_function(name)
    if got is None:
        log(f"{name}: it was not created; nothing to delete")
        return
    if owner is not None and not owned_by(owner, got.get("Tags") or {}):
        log(f"{name}: not deleted: it does not carry this function's ownership tags, so this apply did not create it")
        return
    log(f"{name}: deleting the function this apply created")
    lam.delete_function(name)


def _configuration_to_restore(name: str, lam, prev: dict, now: dict) -> dict[str, Any]:
    """The snapshot's configuration as an UpdateFunctionConfiguration request: the fields
    it can restore, without the empty ones Lambda would refuse, sealed secrets unsealed."""
    from reconciler.workspace.schema import update_config_fields

    fields = [f for f in RESTORABLE_CONFIG if f in update_config_fields()]
    prev_conf = prev.get("configuration") or {}
    want = {}
    for f in fields:
        v = project(prev_conf, {f: None}).get(f)
        if v is None or (f == "ImageConfig" and not v):
            continue
        if f == "VpcConfig" and not v.get("SubnetIds"):
            continue
        if (
            f == "SnapStart"
            and v.get("ApplyOn") == "None"
            and not (prev_conf.get("SnapStartResponse") or prev_conf.get("SnapStart"))
        ):
            continue
        want[f] = v
    if "Environment" in want:
        want["Environment"] = {
            **want["Environment"],
            "Variables": _unsealed(name, lam, prev, now, want["Environment"].get("Variables") or {}),
        }
    return want


def _restore_code(
    aws, lam, name: str, region: str, connector: dict | None, prev: dict, log: Callable[[str], None]
) -> None:
    from reconciler.engine.refresh import refresh_function

    params = _code_params_for(prev, lam, name)
    log(f"{name}: restoring code {prev.get('code_sha256')}")
    lam.update_code(name, params, None)
    check = refresh_function(aws, region, connector, name)
    if check.get("code_sha256") != prev.get("code_sha256"):
        raise AwsError(f"{name}: restored code is {check.get('code_sha256')}, expected {prev.get('code_sha256')}")


def restore_aliases(lam, name: str, prev: dict, now: dict, log: Callable[[str], None]) -> None:
    """Every alias of the snapshot back to its version and weights (UpdateAlias, or
    CreateAlias for one deleted since), and the aliases it did not have deleted. The one
    place a restore moves aliases."""
    for alias_name, a in (prev.get("aliases") or {}).items():
        cur = now.get("aliases", {}).get(alias_name)
        if cur != a:
            routing = {"AdditionalVersionWeights": a.get("weights") or {}}
            lam.put_alias(
                name,
                {"Name": alias_name, "Description": a.get("description", ""), "RoutingConfig": routing},
                a["version"],
                exists=cur is not None,
            )
            log(f"{name}: alias {alias_name} → {a['version']}")
    for alias_name in set(now.get("aliases", {})) - set(prev.get("aliases") or {}):
        lam.delete_alias(name, alias_name)
        log(f"{name}: alias {alias_name} deleted (it did not exist before)")


def _restore_tags(lam, prev: dict, now: dict) -> None:
    tags_now, tags_prev = now.get("tags", {}), prev.get("tags") or {}
    if tags_now != tags_prev and now.get("arn"):
        lam.untag(now["arn"], [k for k in tags_now if k not in tags_prev])
        lam.tag(now["arn"], {k: v for k, v in tags_prev.items() if tags_now.get(k) != v})


def _unsealed(name: str, lam, prev: dict, now: dict, variables: dict) -> dict:
    """A snapshot's environment with each sealed value (the state keeps no secret in clear)
    found again: the value Lambda holds now, or the one of the version the snapshot ran,
    whichever has that seal; else the function cannot be restored by reconciler."""
    from reconciler.util import secrets as sec

    sealed = {k: v for k, v in variables.items() if sec.is_sealed(v)}
    if not sealed:
        return variables
    candidates = [sec.env_vars(now.get("configuration"))]
    out = dict(variables)
    for k, seal in sealed.items():
        sealer = sec.sealer_by_kid(seal)
        found = None
        for i in range(2):
            if i == 1 and len(candidates) == 1:
                got = lam.get_function(name, prev["version"]) if prev.get("version") else None
                candidates.append(sec.env_vars((got or {}).get("Configuration")))
            value = candidates[i].get(k) if i < len(candidates) else None
            if value is not None and sealer is not None and sealer.seal(value) == seal:
                found = value
                break
        if found is None:
            raise AwsError(
                f"{name}: the earlier value of environment variable {k} is sensitive and not kept in the state, and neither "
                f"$LATEST nor version {prev.get('version') or '(none)'} holds it; set it by hand"
            )
        out[k] = found
    return out


def _code_params_for(prev: dict, lam, name: str) -> dict:
    """How to bring back the code of a snapshot: an image by digest, the recorded S3
    object version, or the code package of the published version that carries it."""
    if prev.get("package_type") == "Image" and prev.get("image_uri"):
        return {"ImageUri": prev["image_uri"]}
    if prev.get("code_params") and prev["code_params"].get("S3ObjectVersion"):
        return dict(prev["code_params"])
    if prev.get("version"):
        from reconciler.aws.client import download

        got = lam.get_function(name, prev["version"])
        if (
            got
            and got["Configuration"].get("CodeSha256") == prev.get("code_sha256")
            and got.get("Code", {}).get("Location")
        ):
            try:
                return {"ZipFile": download(got["Code"]["Location"])}
            except AwsError:
                pass
    if prev.get("code_params"):
        return dict(prev["code_params"])
    raise AwsError(
        f"{name}: no way to bring back code {prev.get('code_sha256')} (no recorded source, no published version carrying it)"
    )
