"""Execute a Plan: snapshot, change, publish, move aliases, record after every step,
and put the function back as it was if anything fails (SPEC §5)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Callable

from reconciler import state as st
from reconciler.errors import AwsError, ReconcilerError, StaleError
from reconciler.live import alias_view, fingerprint, project, snapshot
from reconciler.model import FunctionPlan, FunctionSpec, Plan
from reconciler.plan import desired_config


class ApplyFailed(ReconcilerError):
    """An apply step failed; `rolled_back` says whether the function was restored."""


def apply_plan(plan: Plan, aws, state_dir: Path, log: Callable[[str], None], *, saved: bool = False,
               rollback_on_failure: bool = True, lock_timeout: float = 0) -> dict:
    """Apply every function with changes, one state file (infrastructure) at a time, under its lock."""
    results = {"applied": [], "failed": [], "deleted": []}
    by_state: dict[str, list[FunctionPlan]] = {}
    for fp in plan.functions:
        if fp.has_changes:
            by_state.setdefault(fp.state_file, []).append(fp)
    for path, fps in sorted(by_state.items()):
        env, infra = fps[0].environment, fps[0].infrastructure
        with st.locked(Path(path), "apply", timeout=lock_timeout):
            state = st.load(state_dir, env, infra)
            if saved:
                _check_fresh(plan, state, fps, aws)
            for fp in fps:
                if fp.action == "delete":
                    _delete(fp, state, aws, log)
                    results["deleted"].append(fp.name)
                    continue
                _apply_function(fp, state, aws, log, rollback_on_failure)
                results["applied"].append(fp.name)
    return results


def _check_fresh(plan: Plan, state: st.State, fps: list[FunctionPlan], aws) -> None:
    from reconciler.engine import refresh_function

    ref = plan.state_refs.get(str(state.path))
    if ref is not None and (ref.get("lineage"), ref.get("serial")) != (state.ref["lineage"], state.ref["serial"]):
        raise StaleError("saved plan is stale: the state changed since it was made (serial "
                         f"{ref.get('serial')} → {state.ref['serial']})", str(state.path), hint="run plan again")
    for fp in fps:
        desired = FunctionSpec.from_dict(fp.desired) if fp.desired else None
        live = refresh_function(aws, fp.region, desired.connector if desired else None, fp.name)
        if fingerprint(live) != fp.live_fingerprint:
            raise StaleError(f"saved plan is stale: function {fp.name} changed in Lambda since it was made", hint="run plan again")


def _record(state: st.State, fp: FunctionPlan, spec: FunctionSpec, snap: dict, version: str | None, config: dict) -> None:
    state.region = state.region or spec.region
    state.functions[spec.name] = {
        "service": spec.service,
        "region": spec.region,
        "arn": snap.get("arn"),
        "package_type": spec.package_type,
        "version": version,
        "code_sha256": snap.get("code_sha256"),
        "code_source": fp.code.get("source"),
        "code_params": fp.code.get("params"),
        "image_uri": snap.get("image_uri"),
        "architectures": snap.get("architectures"),
        "configuration": project(snap.get("configuration") or {}, config),
        "tags": dict(snap.get("tags") or {}),
        "aliases": snap.get("aliases", {}),
        "connector": spec.connector,
        "updated_at": st.now(),
    }


def _apply_function(fp: FunctionPlan, state: st.State, aws, log: Callable[[str], None], rollback_on_failure: bool) -> None:
    from reconciler.aws import Lambda
    from reconciler.engine import refresh_function

    spec = FunctionSpec.from_dict(fp.desired)
    lam = Lambda(aws, spec.region, spec.connector)
    recorded = state.functions.get(spec.name)
    config, _ = desired_config(spec, recorded)

    # 1. what runs now, recorded before anything changes: the rollback data
    before = refresh_function(aws, spec.region, spec.connector, spec.name)
    record = {
        "id": str(uuid.uuid4()), "function": spec.name, "service": spec.service, "operation": "apply",
        "status": "in_progress", "started_at": st.now(), "finished_at": None,
        "version": None, "code_sha256": fp.code.get("sha256"), "code_source": fp.code.get("source"),
        "code_params": fp.code.get("params"),
        "previous": _previous(before, recorded), "steps": [],
    }
    state.history.append(record)
    state.write()
    created = False
    try:
        # 2-3. create, or update code then configuration, waiting for Lambda between steps
        if not before.get("exists"):
            params = {"FunctionName": spec.name, "Code": fp.code["params"], "PackageType": spec.package_type,
                      "Publish": False, "Tags": spec.tags, **config, **spec.create_only}
            if spec.architectures:
                params["Architectures"] = spec.architectures
            log(f"{spec.name}: creating function")
            lam.create_function(params)
            created = True
            _step(state, record, "created")
        else:
            if any(c.kind == "code" for c in fp.changes):
                log(f"{spec.name}: updating code → {fp.code.get('sha256')} ({fp.code['source'].get('uri')})")
                lam.update_code(spec.name, fp.code["params"], spec.architectures)
                _step(state, record, "code updated")
            if any(c.kind == "config" for c in fp.changes):
                log(f"{spec.name}: updating configuration ({', '.join(sorted({c.path.split('.')[0] for c in fp.changes if c.kind == 'config'}))})")
                lam.update_configuration(spec.name, config)
                _step(state, record, "configuration updated")
            tag_changes = [c for c in fp.changes if c.kind == "tag"]
            if tag_changes:
                arn = before["arn"]
                lam.tag(arn, {c.path.split(".", 1)[1]: c.new for c in tag_changes if c.action != "delete"})
                lam.untag(arn, [c.path.split(".", 1)[1] for c in tag_changes if c.action == "delete"])
                log(f"{spec.name}: tags updated")
                _step(state, record, "tags updated")

        # 4. publish exactly one version per real change, guarded by the expected code
        version = (recorded or {}).get("version")
        if fp.publish:
            now = refresh_function(aws, spec.region, spec.connector, spec.name)
            if now.get("code_sha256") != fp.code.get("sha256"):
                raise AwsError(f"{spec.name}: Lambda reports code {now.get('code_sha256')} after the update, expected {fp.code.get('sha256')}")
            out = lam.publish_version(spec.name, fp.code.get("sha256"), now.get("revision_id"), description=f"reconciler {record['id']}")
            version = out["Version"]
            record["version"] = version
            log(f"{spec.name}: published version {version}")
            _step(state, record, f"published version {version}")

        # 5. aliases to the new version
        live_aliases = (before.get("aliases") or {}) if not created else {}
        for alias in spec.aliases:
            lam.put_alias(spec.name, alias, version, exists=alias["Name"] in live_aliases)
            log(f"{spec.name}: alias {alias['Name']} → {version}")
            _step(state, record, f"alias {alias['Name']} → {version}")
        for c in fp.changes:
            if c.kind == "alias" and c.action == "delete":
                lam.delete_alias(spec.name, c.path)
                log(f"{spec.name}: alias {c.path} deleted")
                _step(state, record, f"alias {c.path} deleted")

        # 6. record the result
        after = refresh_function(aws, spec.region, spec.connector, spec.name)
        _record(state, fp, spec, after, version, config)
        record.update(status="succeeded", finished_at=st.now(), version=version)
        state.write()
    except ReconcilerError as exc:
        record.update(status="failed", finished_at=st.now(), error=str(exc))
        state.write()
        if not rollback_on_failure:
            raise ApplyFailed(f"{spec.name}: {exc}; left as it is for inspection (--no-rollback)") from None
        log(f"{spec.name}: FAILED: {exc}; rolling back")
        try:
            restore(aws, spec.name, spec.region, spec.connector, record["previous"], log)
        except ReconcilerError as rb_exc:
            record.update(status="rollback_failed", rollback_error=str(rb_exc))
            state.write()
            raise ApplyFailed(f"{spec.name}: {exc}; ROLLBACK FAILED: {rb_exc}; restore it by hand: {_todo(record['previous'])}") from None
        record.update(status="rolled_back")
        after = refresh_function(aws, spec.region, spec.connector, spec.name)
        if after.get("exists") and recorded is not None:
            state.functions[spec.name] = {**recorded, "aliases": after.get("aliases", {}), "updated_at": st.now()}
        elif not after.get("exists"):
            state.functions.pop(spec.name, None)
        state.write()
        raise ApplyFailed(f"{spec.name}: {exc}; rolled back to what ran before") from None


def _step(state: st.State, record: dict, what: str) -> None:
    record["steps"].append({"at": st.now(), "step": what})
    state.write()


def _previous(live: dict, recorded: dict | None) -> dict:
    """The rollback snapshot: what runs now and how to bring its code back."""
    if not live.get("exists"):
        return {"exists": False}
    return {
        "exists": True,
        "version": (recorded or {}).get("version"),
        "code_sha256": live.get("code_sha256"),
        "code_params": (recorded or {}).get("code_params") if (recorded or {}).get("code_sha256") == live.get("code_sha256") else None,
        "code_source": (recorded or {}).get("code_source") if (recorded or {}).get("code_sha256") == live.get("code_sha256") else None,
        "image_uri": live.get("image_uri"),
        "package_type": live.get("package_type"),
        "configuration": live.get("configuration"),
        "tags": live.get("tags", {}),
        "aliases": live.get("aliases", {}),
    }


def _todo(prev: dict) -> str:
    if not prev.get("exists"):
        return "delete the function"
    aliases = ", ".join(f"{n} → {a['version']}" for n, a in prev.get("aliases", {}).items())
    where = [w for w in ((prev.get("code_source") or {}).get("uri"), prev.get("image_uri"),
                         f"the code of version {prev['version']}" if prev.get("version") else None) if w]
    return (f"$LATEST code {prev.get('code_sha256')}" + (f" (from {' or '.join(where)})" if where else "")
            + f", the configuration recorded as `previous` in the state history, aliases {aliases or 'none'}")


RESTORABLE_CONFIG = ("Description", "Timeout", "MemorySize", "Environment", "Layers", "Handler", "Runtime", "Role",
                     "TracingConfig", "EphemeralStorage", "VpcConfig", "DeadLetterConfig", "KMSKeyArn", "ImageConfig",
                     "FileSystemConfigs", "SnapStart", "LoggingConfig")


def restore(aws, name: str, region: str, connector: dict | None, prev: dict, log: Callable[[str], None]) -> None:
    """Put a function back to a snapshot: delete it if it did not exist; else restore
    $LATEST code and configuration, then every alias."""
    from reconciler.aws import Lambda
    from reconciler.engine import refresh_function
    from reconciler.schema import update_config_fields

    lam = Lambda(aws, region, connector)
    if not prev.get("exists"):
        log(f"{name}: deleting the function this apply created")
        lam.delete_function(name)
        return
    now = refresh_function(aws, region, connector, name)
    if not now.get("exists"):
        raise AwsError(f"{name} no longer exists in Lambda; it cannot be restored")
    if now.get("code_sha256") != prev.get("code_sha256"):
        params = _code_params_for(prev, lam, name)
        log(f"{name}: restoring code {prev.get('code_sha256')}")
        lam.update_code(name, params, None)
        check = refresh_function(aws, region, connector, name)
        if check.get("code_sha256") != prev.get("code_sha256"):
            raise AwsError(f"{name}: restored code is {check.get('code_sha256')}, expected {prev.get('code_sha256')}")
    fields = [f for f in RESTORABLE_CONFIG if f in update_config_fields()]
    prev_conf = prev.get("configuration") or {}
    want = {}
    for f in fields:
        v = project(prev_conf, {f: None}).get(f)
        if v is None or f == "ImageConfig" and not v:
            continue
        if f == "VpcConfig" and not v.get("SubnetIds"):
            continue
        if f == "SnapStart" and v.get("ApplyOn") == "None" and not (prev_conf.get("SnapStartResponse") or prev_conf.get("SnapStart")):
            continue
        want[f] = v
    live_now = project(now.get("configuration") or {}, want)
    if live_now != want:
        log(f"{name}: restoring configuration")
        lam.update_configuration(name, want)
    for alias_name, a in (prev.get("aliases") or {}).items():
        cur = now.get("aliases", {}).get(alias_name)
        if cur != a:
            routing = {"AdditionalVersionWeights": a.get("weights") or {}}
            lam.put_alias(name, {"Name": alias_name, "Description": a.get("description", ""), "RoutingConfig": routing}, a["version"], exists=cur is not None)
            log(f"{name}: alias {alias_name} → {a['version']}")
    for alias_name in set(now.get("aliases", {})) - set(prev.get("aliases") or {}):
        lam.delete_alias(name, alias_name)
        log(f"{name}: alias {alias_name} deleted (it did not exist before)")
    tags_now, tags_prev = now.get("tags", {}), prev.get("tags") or {}
    if tags_now != tags_prev and now.get("arn"):
        lam.untag(now["arn"], [k for k in tags_now if k not in tags_prev])
        lam.tag(now["arn"], {k: v for k, v in tags_prev.items() if tags_now.get(k) != v})


def _code_params_for(prev: dict, lam, name: str) -> dict:
    """How to bring back the code of a snapshot: an image by digest, the recorded S3
    object version, or the code package of the published version that carries it."""
    if prev.get("package_type") == "Image" and prev.get("image_uri"):
        return {"ImageUri": prev["image_uri"]}
    if prev.get("code_params") and prev["code_params"].get("S3ObjectVersion"):
        return dict(prev["code_params"])
    if prev.get("version"):
        from reconciler.aws import download

        got = lam.get_function(name, prev["version"])
        if got and got["Configuration"].get("CodeSha256") == prev.get("code_sha256") and got.get("Code", {}).get("Location"):
            try:
                return {"ZipFile": download(got["Code"]["Location"])}
            except AwsError:
                pass
    if prev.get("code_params"):
        return dict(prev["code_params"])
    raise AwsError(f"{name}: no way to bring back code {prev.get('code_sha256')} (no recorded source, no published version carrying it)")


def _delete(fp: FunctionPlan, state: st.State, aws, log: Callable[[str], None]) -> None:
    from reconciler.aws import Lambda

    rec = state.functions.get(fp.name, {})
    lam = Lambda(aws, fp.region or rec.get("region") or state.region, rec.get("connector"))
    log(f"{fp.name}: deleting (pruned)")
    lam.delete_function(fp.name)
    state.history.append({"id": str(uuid.uuid4()), "function": fp.name, "service": rec.get("service"), "operation": "delete",
                          "status": "succeeded", "started_at": st.now(), "finished_at": st.now(), "previous": {"exists": True, **{k: rec.get(k) for k in ("version", "code_sha256")}}})
    state.functions.pop(fp.name, None)
    state.write()


__all__ = ["apply_plan", "restore", "ApplyFailed", "alias_view", "snapshot"]
