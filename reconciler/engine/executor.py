"""Deploy one function of a plan, step by step (SPEC §5): snapshot what runs now, create
it or update its code and configuration (the Lambda client waits until each change is
over), publish a version (each change guarded by the RevisionId Lambda answered for the
last one), move the aliases (or shift one in steps under a rollout), tag last; every step
is recorded in the state's journal as it happens, and a failure leads to
`reconciler.engine.failure`. Also deletes a pruned function.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from reconciler.engine.deployment import Deployment, Interrupted
from reconciler.engine.diff import desired_config, interrupted_deployment, publish_description
from reconciler.engine.failure import fail
from reconciler.engine.live import alias_view, fingerprint
from reconciler.engine.records import StateWriter, close_interrupted, half_done, record_function, upsert
from reconciler.errors import AwsError, ReconcilerError, StaleError
from reconciler.model import IN_FLIGHT, FunctionPlan, FunctionSpec, owned_by
from reconciler.store import state as st


def deploy_function(
    fp: FunctionPlan,
    writer: StateWriter,
    aws,
    log: Callable[[str], None],
    rollback_on_failure: bool,
    abort: threading.Event | None = None,
    before: dict | None = None,
    failing: threading.Event | None = None,
) -> None:
    """Deploy one function. `before` is what is live now when the caller knows it (the
    plan's snapshot, read under the state lock this apply still holds, or a saved plan's
    freshness check); otherwise it is read here. `failing` is set the moment a step
    fails, before the rollback, so that a parallel apply starts no other function."""
    d = start(fp, writer, aws, log, abort, before)
    try:
        d.check_abort()
        if not d.before.get("exists"):
            create(d)
        else:
            update_code(d)
            update_configuration(d)
        publish(d)
        move_aliases(d)
        tag(d)
        finish(d)
    except AwsError as exc:
        if failing is not None:
            failing.set()
        fail(_moved_or_refused(d, exc), d, rollback_on_failure)
    except BaseException as exc:  # noqa: BLE001 - Ctrl-C or a bug mid-apply rolls back too, then re-raises
        if failing is not None:
            failing.set()
        fail(exc, d, rollback_on_failure)


# ---------------------------------------------------------------- 1. snapshot, in-flight record


def start(
    fp: FunctionPlan,
    writer: StateWriter,
    aws,
    log: Callable[[str], None],
    abort: threading.Event | None,
    before: dict | None,
) -> Deployment:
    """What runs now, recorded before anything changes: the rollback data, in the
    deployment record that is in the state (status in_progress) before the first change.
    Converging a killed apply, what ran before that apply is what a rollback must bring back."""
    from reconciler.aws.client import Lambda
    from reconciler.engine.refresh import refresh_function

    spec = FunctionSpec.from_dict(_desired(fp))
    lam = Lambda(aws, spec.region, spec.connector)
    current = writer.read()
    recorded = current.functions.get(spec.name)
    config, _ = desired_config(spec, recorded)
    # secret references are resolved now, in memory: the values the plan read, or (a saved
    # plan) read again, refused if a secret changed in the store since the plan was made
    config, filled = _with_secrets(fp, spec, config, writer, aws)
    stale = _converged(writer, current, spec.name)
    if before is None:
        before = refresh_function(aws, spec.region, spec.connector, spec.name)
    if fp.live_fingerprint and fingerprint(before) != fp.live_fingerprint:
        # e.g. another apply deployed it while this one waited for the lock
        raise StaleError(
            f"function {spec.name} changed in Lambda since this plan was made (another apply, or a hand change)",
            hint="run plan or apply again",
        )
    record = _new_record(fp, spec, snapshot_for_rollback(before, recorded, stale), stale)
    secret_keys = sorted(set(fp.secret_seals) | set((recorded or {}).get("secrets") or {}))
    if secret_keys and not _killed_apply(stale):
        record["previous"]["secrets"] = secret_keys
    secret_places = sorted(set(fp.secret_fields) | set((recorded or {}).get("secret_fields") or {}))
    if secret_places and not _killed_apply(stale):
        record["previous"]["secret_fields"] = secret_places
    if stale:
        record["converges"] = [h["id"] for h in stale]

    def begin(state: st.State) -> None:
        state.region = state.region or spec.region
        for h in close_interrupted(state, spec.name, record):
            log(f"{spec.name}: converging the {h.get('operation')} started at {h.get('started_at')}, {half_done(h)}")
        upsert(state, record)

    writer.update(begin, records=[record], closing=spec.name)
    return Deployment(fp, spec, filled, config, recorded, before, record, lam, aws, writer, log, abort)


def _desired(fp: FunctionPlan) -> dict:
    if fp.desired is None:  # the plan gives every function it creates or updates a desired spec
        raise ReconcilerError(f"{fp.name}: the plan has no desired configuration for it")
    return fp.desired


def _converged(writer: StateWriter, state: st.State, name: str) -> list[dict]:
    """The deployments this apply converges: killed ones, and the last one if its rollback failed."""
    if not writer.has_in_flight(state, name):
        return []
    last = interrupted_deployment(state.history, name)
    return [h for h in state.history if h.get("function") == name and (h.get("status") in IN_FLIGHT or h is last)]


def _killed_apply(stale: list[dict]) -> dict | None:
    return next(
        (h for h in reversed(stale) if h.get("operation") == "apply" and isinstance(h.get("previous"), dict)), None
    )


def snapshot_for_rollback(before: dict, recorded: dict | None, stale: list[dict]) -> dict:
    """The `previous` of the deployment record: what a rollback brings back. Converging a
    killed apply, that is what ran before the killed apply."""
    killed = _killed_apply(stale)
    return killed["previous"] if killed else _previous(before, recorded)


def _previous(live: dict, recorded: dict | None) -> dict:
    """The rollback snapshot: what runs now and how to bring its code back."""
    if not live.get("exists"):
        return {"exists": False}
    return {
        "exists": True,
        "version": (recorded or {}).get("version"),
        "code_sha256": live.get("code_sha256"),
        "code_params": (recorded or {}).get("code_params")
        if (recorded or {}).get("code_sha256") == live.get("code_sha256")
        else None,
        "code_source": (recorded or {}).get("code_source")
        if (recorded or {}).get("code_sha256") == live.get("code_sha256")
        else None,
        "image_uri": live.get("image_uri"),
        "package_type": live.get("package_type"),
        "configuration": live.get("configuration"),
        "tags": live.get("tags", {}),
        "aliases": live.get("aliases", {}),
    }


def _reused_version(fp: FunctionPlan) -> str | None:
    """A version that a killed apply published, which the plan says to use again."""
    return next((c.new for c in fp.changes if c.kind == "version" and c.path == "reuse"), None)


def _new_record(fp: FunctionPlan, spec: FunctionSpec, previous: dict, stale: list[dict]) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "function": spec.name,
        "service": spec.service,
        "operation": "apply",
        "status": "in_progress",
        "started_at": st.now(),
        "finished_at": None,
        "version": None,
        "code_sha256": fp.code.get("sha256"),
        "code_source": fp.code.get("source"),
        "code_params": fp.code.get("params"),
        "publish": bool(fp.publish or _reused_version(fp)),
        "previous": previous,
        "steps": [],
    }


def _with_secrets(
    fp: FunctionPlan, spec: FunctionSpec, config: dict, writer: StateWriter, aws
) -> tuple[dict, FunctionSpec]:
    """The configuration and the spec (tags, aliases) with their secret references filled."""
    from reconciler.aws.secrets import read_values as read_secret_values
    from reconciler.engine.sealed import filled_spec, plan_view
    from reconciler.store.seals import sealer_for
    from reconciler.util import secrets as sec

    if not sec.references(config) and not sec.uses_secrets(spec):
        return config, spec
    values = fp.secrets
    if values is None:
        values = read_secret_values(aws, sec.wanted_by([spec]))
        sealer = sealer_for(writer.path, create=True)
        assert sealer is not None  # created when there is none
        for k, v in sec.env_vars(config).items():
            if sec.references(v) and fp.secret_seals.get(k) != sealer.seal(sec.fill(v, spec.region, values)):
                raise StaleError(
                    f"saved plan is stale: secret {k} of function {spec.name} changed in the store since it was made",
                    hint="run plan again",
                )
        _, _, seals, _ = plan_view(spec, {"exists": False}, None, values, sealer)
        for path, seal in sorted(seals.items()):
            if fp.secret_fields.get(path) != seal:
                raise StaleError(
                    f"saved plan is stale: the secret in {path} of function {spec.name} changed in the store since it was made",
                    hint="run plan again",
                )
    return sec.fill(config, spec.region, values), filled_spec(spec, values)


# ---------------------------------------------------------------- 2-3. create, or update code then configuration
# (Lambda's client waits until each change is over before it answers)


def create(d: Deployment) -> None:
    spec, fp = d.spec, d.fp
    params = {
        "FunctionName": spec.name,
        "Code": fp.code["params"],
        "PackageType": spec.package_type,
        "Publish": False,
        "Tags": d.filled.tags,
        **d.config,
        **d.filled.create_only,
    }
    if spec.architectures:
        params["Architectures"] = spec.architectures
    d.log(f"{spec.name}: creating function")
    try:
        d.answered(d.lam.create_function(params))
    except AwsError as exc:
        mine = _created_by_lost_answer(exc, d.lam, spec, fp.code.get("sha256"))
        if mine is None:
            raise
        d.log(
            f"{spec.name}: the answer to CreateFunction was lost and its retry found the function, with this "
            "apply's ownership tags and code: it was created by this apply"
        )
        d.answered(mine)
    d.created = True
    d.image_uri = fp.code["params"].get("ImageUri")
    d.tags = dict(d.filled.tags or {})
    d.step("created")


def _created_by_lost_answer(exc: AwsError, lam, spec: FunctionSpec, code_sha256: str | None) -> dict | None:
    """After CreateFunction answered "already exists" (ResourceConflictException) on a
    retry, i.e. an earlier attempt whose answer was lost may have created it: the
    function's configuration if it carries this function's ownership tags and the code
    being deployed (the create happened), else None."""
    if exc.code != "ResourceConflictException" or not getattr(exc, "attempts", 0):
        return None
    got = lam.get_function(spec.name)
    if not got:
        return None
    conf = dict(got.get("Configuration") or {})
    if not owned_by(spec.tags, got.get("Tags") or {}) or conf.get("CodeSha256") != code_sha256:
        return None
    if conf.get("State", "Active") != "Active":
        conf = dict(lam.wait_active(spec.name))
    return conf


def update_code(d: Deployment) -> None:
    fp = d.fp
    if not any(c.kind == "code" for c in fp.changes):
        return
    d.log(f"{d.name}: updating code → {fp.code.get('sha256')} ({fp.code['source'].get('uri')})")
    d.answered(d.lam.update_code(d.name, fp.code["params"], d.spec.architectures, d.revision))
    d.image_uri = fp.code["params"].get("ImageUri") or d.image_uri
    d.step("code updated")


def update_configuration(d: Deployment) -> None:
    fields = sorted({c.path.split(".")[0] for c in d.fp.changes if c.kind == "config"})
    if not fields:
        return
    d.log(f"{d.name}: updating configuration ({', '.join(fields)})")
    d.answered(d.lam.update_configuration(d.name, d.config, d.revision))
    d.step("configuration updated")


# ---------------------------------------------------------------- 4. publish


def publish(d: Deployment) -> None:
    """Exactly one version per real change, guarded by the expected code and the RevisionId
    of the last change; a version that a killed apply published (and nothing changed
    since) is reused."""
    d.version = (d.recorded or {}).get("version")
    reuse = _reused_version(d.fp)
    reused = _reuse(d, reuse) if reuse else False
    if d.fp.publish or (reuse and not reused):
        _publish_new(d)


def _reuse(d: Deployment, version: str) -> bool:
    got = d.lam.get_function(d.name, version)
    if not (got and got["Configuration"].get("CodeSha256") == d.fp.code.get("sha256")):
        return False
    d.version = version
    d.log(f"{d.name}: version {version}, published by the interrupted apply, is used (nothing new to publish)")
    d.step(f"reused version {version}", version=version)
    return True


def _publish_new(d: Deployment) -> None:
    expected = d.fp.code.get("sha256")
    # what Lambda answered for the last change is the code it now holds (AWS also
    # refuses the publish itself if $LATEST is not that code)
    if d.conf.get("CodeSha256") != expected:
        raise AwsError(
            f"{d.name}: Lambda reports code {d.conf.get('CodeSha256')} after the update, expected {expected}"
        )
    out = d.lam.publish_version(d.name, expected, d.revision, description=publish_description(d.record["id"]))
    d.version = out["Version"]
    d.log(f"{d.name}: published version {d.version}")
    d.step(f"published version {d.version}", version=d.version)


# ---------------------------------------------------------------- 5. aliases


def move_aliases(d: Deployment) -> None:
    """Every alias of the function to the new version, then the aliases the plan deletes.
    The one place an apply moves aliases: each move is one UpdateAlias (guarded by the
    alias's RevisionId as read before the apply) or CreateAlias, recorded as a step; the
    alias of the plan's rollout is shifted in steps instead (`shift_alias`)."""
    live = (d.before.get("aliases") or {}) if not d.created else {}
    revisions = (d.before.get("alias_revisions") or {}) if not d.created else {}
    d.aliases = dict(live)
    for alias in d.filled.aliases:
        name = alias["Name"]
        if name in live and _shifted(d.fp, name):
            d.aliases[name] = shift_alias(d, alias, live[name])
        else:
            move_alias(d, alias, exists=name in live, revision_id=revisions.get(name))
    for c in d.fp.changes:
        if c.kind == "alias" and c.action == "delete":
            d.lam.delete_alias(d.name, c.path)
            d.aliases.pop(c.path, None)
            d.log(f"{d.name}: alias {c.path} deleted")
            d.step(f"alias {c.path} deleted")


def move_alias(d: Deployment, alias: dict, exists: bool, revision_id: str | None) -> None:
    """One alias to the deployment's version, all at once."""
    name, version = alias["Name"], d.version
    if version is None:  # the plan publishes a version for the aliases of a function that has none recorded
        raise ReconcilerError(f"{d.name}: no version to point alias {name} at")
    d.aliases[name] = alias_view(d.lam.put_alias(d.name, alias, version, exists=exists, revision_id=revision_id))
    d.log(f"{d.name}: alias {name} → {version}")
    d.step(f"alias {name} → {version}")


def _shifted(fp: FunctionPlan, alias: str) -> bool:
    from reconciler.engine.traffic import gradual

    ro = fp.rollout
    return ro is not None and ro.get("alias") == alias and (bool(ro.get("hold")) or gradual(ro))


def shift_alias(d: Deployment, alias: dict, current: dict) -> dict:
    """A rollout: move one alias as the plan's rollout says, gradually and gated by alarms
    (traffic.roll_out, each weight a recorded step), or not at all when a pipeline's
    traffic-shift steps move it (`hold`). Returns the alias as it is now."""
    from reconciler.aws.cloudwatch import CloudWatch
    from reconciler.engine import traffic

    planned = d.fp.rollout or {}
    version = str(d.version)
    if planned.get("hold"):
        d.record["rollout"] = traffic.held(planned, version)
        d.step(f"alias {alias['Name']} stays on version {planned['from']}: traffic-shift steps move it")
        d.log(
            f"{d.name}: alias {alias['Name']} stays on version {planned['from']} until the traffic-shift steps move it"
        )
        return current

    def sleep(seconds: float) -> None:
        if d.abort is None:
            time.sleep(seconds)
        elif d.abort.wait(seconds):
            raise Interrupted()

    cw = CloudWatch(d.aws, d.spec.region, d.spec.connector)
    return traffic.roll_out(planned, d.spec, alias, version, d.lam, cw, d.record, d.step, sleep, d.log)


# ---------------------------------------------------------------- 6. tags, 7. the result


def tag(d: Deployment) -> None:
    """Tags last: TagResource carries no RevisionId and gives the function a new one, so it
    comes after every change that is guarded by one."""
    changes = [c for c in d.fp.changes if c.kind == "tag"] if not d.created else []
    if not changes:
        return
    arn = d.before["arn"]
    # (a tag whose value uses a secret: the value, not the plan's seal of it)
    new_tags = {
        c.path.split(".", 1)[1]: d.filled.tags.get(c.path.split(".", 1)[1], c.new)
        for c in changes
        if c.action != "delete"
    }
    d.lam.tag(arn, new_tags)
    d.lam.untag(arn, [c.path.split(".", 1)[1] for c in changes if c.action == "delete"])
    for c in changes:
        key = c.path.split(".", 1)[1]
        if c.action == "delete":
            d.tags.pop(key, None)
        else:
            d.tags[key] = new_tags[key]
    d.log(f"{d.name}: tags updated")
    d.step("tags updated")


def finish(d: Deployment) -> None:
    """Record the result: $LATEST as Lambda answered its last change (not the published
    version's answer: that has the version's own description), the tags as set, and the
    aliases as Lambda answered when they were set."""
    before, conf = d.before, d.conf
    arn = before.get("arn") if before.get("exists") else conf.get("FunctionArn")
    after = {
        "exists": True,
        "arn": _unqualified(arn or conf.get("FunctionArn") or ""),
        "configuration": conf,
        "code_sha256": conf.get("CodeSha256"),
        "image_uri": d.image_uri,
        "architectures": conf.get("Architectures") or before.get("architectures") or ["x86_64"],
        "tags": d.tags,
        "aliases": dict(sorted(d.aliases.items())),
    }

    def change(state: st.State) -> None:
        record_function(state, d.fp, d.spec, after, d.version, d.config)
        d.record.update(status="succeeded", finished_at=st.now(), version=d.version)
        upsert(state, d.record)

    d.writer.update(change, functions=[d.name], records=[d.record])


def _unqualified(arn: str) -> str:
    """A function ARN without a version qualifier (a published version answers with one)."""
    parts = arn.split(":")
    return ":".join(parts[:7]) if len(parts) > 7 else arn


# ---------------------------------------------------------------- a refused change


def _moved_or_refused(d: Deployment, exc: AwsError) -> AwsError:
    """Lambda refused a change because the function moved since it was read. Refused
    before anything changed: nothing to roll back, the record says failed, and StaleError
    is raised. Later: the error to roll back on, saying the function changed."""
    from reconciler.aws.client import CHANGED_WHILE_UPDATING

    untouched = not d.record["steps"] and not d.created
    if exc.code == "ResourceConflictException" and untouched and not d.before.get("exists"):
        # another tool created the function between this plan's read and CreateFunction:
        # it is not this apply's to roll back (deleting it would delete theirs)
        _record_refusal(d, exc)
        raise StaleError(
            f"function {d.name} was created in Lambda by someone else since this plan read it; nothing was "
            "changed and it is left as it is",
            hint="run plan again to see whose it is",
        ) from None
    if exc.code == "PreconditionFailedException" and untouched:
        # Lambda refused the first change: the function moved since it was read, and
        # nothing was changed; there is nothing to roll back
        _record_refusal(d, exc)
        raise StaleError(
            f"function {d.name} changed in Lambda since this plan was made; nothing was changed",
            hint="run plan or apply again",
        ) from None
    if exc.code in ("PreconditionFailedException", CHANGED_WHILE_UPDATING):
        # a later change refused, or changed by someone else as it finished: what this
        # apply already changed is rolled back
        moved = AwsError(f"function {d.name} changed in Lambda since this plan was made ({exc})")
        moved.code = exc.code
        return moved
    return exc


def _record_refusal(d: Deployment, exc: AwsError) -> None:
    refusal = str(exc)

    def refused(state: st.State) -> None:
        d.record.update(status="failed", finished_at=st.now(), error=refusal)
        upsert(state, d.record)

    d.writer.update(refused, records=[d.record])


# ---------------------------------------------------------------- a pruned function


def delete_function(fp: FunctionPlan, writer: StateWriter, aws, log: Callable[[str], None]) -> None:
    from reconciler.aws.client import Lambda

    rec = writer.read().functions.get(fp.name, {})
    lam = Lambda(aws, fp.region or rec.get("region") or writer.read().region, rec.get("connector"))
    log(f"{fp.name}: deleting (pruned)")
    lam.delete_function(fp.name)

    record = {
        "id": str(uuid.uuid4()),
        "function": fp.name,
        "service": rec.get("service"),
        "operation": "delete",
        "status": "succeeded",
        "started_at": st.now(),
        "finished_at": st.now(),
        "previous": {"exists": True, **{k: rec.get(k) for k in ("version", "code_sha256")}},
    }

    def change(state: st.State) -> None:
        close_interrupted(state, fp.name, record)
        state.history.append(record)
        state.functions.pop(fp.name, None)

    writer.update(change, functions=[fp.name], records=[record], closing=fp.name)
