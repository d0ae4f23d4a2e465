"""Deploy one function of a plan, step by step (SPEC §5): snapshot what runs now, create
it or update its code and configuration (Lambda waits between them), publish a version,
move the aliases, tag last; every step is recorded in the state's journal as it happens,
and a failure leads to `reconciler.engine.failure`. Also deletes a pruned function.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from reconciler.engine.diff import desired_config, interrupted_deployment, publish_description
from reconciler.engine.failure import Interrupted, _failed
from reconciler.engine.live import alias_view, fingerprint
from reconciler.engine.records import StateWriter, _has_in_flight, _record, _upsert, close_interrupted, half_done
from reconciler.errors import AwsError, StaleError
from reconciler.model import IN_FLIGHT, FunctionPlan, FunctionSpec, owned_by
from reconciler.store import state as st


def _with_secrets(fp: FunctionPlan, spec: FunctionSpec, config: dict, writer: StateWriter, aws) -> dict:
    from reconciler.aws.secrets import read_values as read_secret_values
    from reconciler.store.seals import sealer_for
    from reconciler.util import secrets as sec

    if not any(sec.references(v) for v in sec.env_vars(config).values()):
        return config
    values = fp.secrets
    if values is None:
        values = read_secret_values(aws, sec.wanted_by([spec]))
        sealer = sealer_for(writer.path, create=True)
        for k, v in sec.env_vars(config).items():
            if sec.references(v) and fp.secret_seals.get(k) != sealer.seal(sec.fill(v, spec.region, values)):
                raise StaleError(
                    f"saved plan is stale: secret {k} of function {spec.name} changed in the store since it was made",
                    hint="run plan again",
                )
    return sec.fill(config, spec.region, values)


def _apply_function(
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
    from reconciler.aws.client import CHANGED_WHILE_UPDATING, Lambda
    from reconciler.engine.refresh import refresh_function

    spec = FunctionSpec.from_dict(fp.desired)
    lam = Lambda(aws, spec.region, spec.connector)
    current = writer.read()
    recorded = current.functions.get(spec.name)
    config, _ = desired_config(spec, recorded)
    # secret references are resolved now, in memory: the values the plan read, or (a saved
    # plan) read again, refused if a secret changed in the store since the plan was made
    config = _with_secrets(fp, spec, config, writer, aws)
    # the deployments this apply converges: killed ones, and the last one if its rollback failed
    last = interrupted_deployment(current.history, spec.name)
    stale = (
        [h for h in current.history if h.get("function") == spec.name and (h.get("status") in IN_FLIGHT or h is last)]
        if _has_in_flight(current, spec.name)
        else []
    )
    reuse = next((c.new for c in fp.changes if c.kind == "version" and c.path == "reuse"), None)

    # 1. what runs now, recorded before anything changes: the rollback data. Converging a
    # killed apply, what ran before that apply is what a rollback must bring back.
    if before is None:
        before = refresh_function(aws, spec.region, spec.connector, spec.name)
    if fp.live_fingerprint and fingerprint(before) != fp.live_fingerprint:
        # e.g. another apply deployed it while this one waited for the lock
        raise StaleError(
            f"function {spec.name} changed in Lambda since this plan was made (another apply, or a hand change)",
            hint="run plan or apply again",
        )
    killed = next(
        (h for h in reversed(stale) if h.get("operation") == "apply" and isinstance(h.get("previous"), dict)), None
    )
    record = {
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
        "publish": bool(fp.publish or reuse),
        "previous": killed["previous"] if killed else _previous(before, recorded),
        "steps": [],
    }
    secret_keys = sorted(set(fp.secret_seals) | set((recorded or {}).get("secrets") or {}))
    if secret_keys and not killed:
        record["previous"]["secrets"] = secret_keys
    if stale:
        record["converges"] = [h["id"] for h in stale]

    def begin(state: st.State) -> None:
        state.region = state.region or spec.region
        for h in close_interrupted(state, spec.name, record):
            log(f"{spec.name}: converging the {h.get('operation')} started at {h.get('started_at')}, {half_done(h)}")
        _upsert(state, record)

    def step(what: str, **fields) -> None:
        def change(state: st.State) -> None:
            record.update(fields)
            record["steps"].append({"at": st.now(), "step": what})
            _upsert(state, record)

        writer.update(change, records=[record])
        if abort is not None and abort.is_set():
            raise Interrupted()

    writer.update(begin, records=[record], closing=spec.name)
    created = False
    # what Lambda answered last: its FunctionConfiguration after our latest change (the
    # answer, or the poll that waited for the change to be over), and the RevisionId the
    # next change is guarded by: Lambda refuses a change to a function that moved since
    conf = dict(before.get("configuration") or {})
    revision = before.get("revision_id")
    image_uri = before.get("image_uri")
    tags_now = dict(before.get("tags") or {})

    def answered(out: dict) -> None:
        nonlocal conf, revision
        conf = {k: v for k, v in out.items() if k != "ResponseMetadata"}
        revision = out.get("RevisionId")

    try:
        if abort is not None and abort.is_set():
            raise Interrupted()
        # 2-3. create, or update code then configuration, waiting for Lambda between steps
        if not before.get("exists"):
            params = {
                "FunctionName": spec.name,
                "Code": fp.code["params"],
                "PackageType": spec.package_type,
                "Publish": False,
                "Tags": spec.tags,
                **config,
                **spec.create_only,
            }
            if spec.architectures:
                params["Architectures"] = spec.architectures
            log(f"{spec.name}: creating function")
            try:
                answered(lam.create_function(params))
            except AwsError as exc:
                mine = _created_by_lost_answer(exc, lam, spec, fp.code.get("sha256"))
                if mine is None:
                    raise
                log(
                    f"{spec.name}: the answer to CreateFunction was lost and its retry found the function, with this "
                    "apply's ownership tags and code: it was created by this apply"
                )
                answered(mine)
            created = True
            image_uri = fp.code["params"].get("ImageUri")
            tags_now = dict(spec.tags or {})
            step("created")
        else:
            if any(c.kind == "code" for c in fp.changes):
                log(f"{spec.name}: updating code → {fp.code.get('sha256')} ({fp.code['source'].get('uri')})")
                answered(lam.update_code(spec.name, fp.code["params"], spec.architectures, revision))
                image_uri = fp.code["params"].get("ImageUri") or image_uri
                step("code updated")
            if any(c.kind == "config" for c in fp.changes):
                log(
                    f"{spec.name}: updating configuration ({', '.join(sorted({c.path.split('.')[0] for c in fp.changes if c.kind == 'config'}))})"
                )
                answered(lam.update_configuration(spec.name, config, revision))
                step("configuration updated")

        # 4. publish exactly one version per real change, guarded by the expected code; a
        # version that a killed apply published (and nothing changed since) is reused
        version = (recorded or {}).get("version")
        publish = fp.publish
        if reuse:
            got = lam.get_function(spec.name, reuse)
            if got and got["Configuration"].get("CodeSha256") == fp.code.get("sha256"):
                version = reuse
                log(
                    f"{spec.name}: version {reuse}, published by the interrupted apply, is used (nothing new to publish)"
                )
                step(f"reused version {reuse}", version=reuse)
            else:
                publish = True
        if publish:
            # what Lambda answered for the last change is the code it now holds (AWS also
            # refuses the publish itself if $LATEST is not that code)
            if conf.get("CodeSha256") != fp.code.get("sha256"):
                raise AwsError(
                    f"{spec.name}: Lambda reports code {conf.get('CodeSha256')} after the update, expected {fp.code.get('sha256')}"
                )
            out = lam.publish_version(
                spec.name, fp.code.get("sha256"), revision, description=publish_description(record["id"])
            )
            version = out["Version"]
            log(f"{spec.name}: published version {version}")
            step(f"published version {version}", version=version)

        # 5. aliases to the new version
        live_aliases = (before.get("aliases") or {}) if not created else {}
        revisions = (before.get("alias_revisions") or {}) if not created else {}
        aliases_now = dict(live_aliases)
        for alias in spec.aliases:
            name = alias["Name"]
            if name in live_aliases and _shifted(fp, name):
                # a rollout: the traffic moves in steps, gated by alarms (reconciler.engine.traffic)
                aliases_now[name] = _shift(
                    fp, spec, alias, str(version), lam, aws, record, step, abort, log, live_aliases[name]
                )
                continue
            aliases_now[name] = alias_view(
                lam.put_alias(spec.name, alias, version, exists=name in live_aliases, revision_id=revisions.get(name))
            )
            log(f"{spec.name}: alias {name} → {version}")
            step(f"alias {name} → {version}")
        for c in fp.changes:
            if c.kind == "alias" and c.action == "delete":
                lam.delete_alias(spec.name, c.path)
                aliases_now.pop(c.path, None)
                log(f"{spec.name}: alias {c.path} deleted")
                step(f"alias {c.path} deleted")

        # 6. tags last: TagResource carries no RevisionId and gives the function a new one,
        # so it comes after every change that is guarded by one
        tag_changes = [c for c in fp.changes if c.kind == "tag"] if not created else []
        if tag_changes:
            arn = before["arn"]
            lam.tag(arn, {c.path.split(".", 1)[1]: c.new for c in tag_changes if c.action != "delete"})
            lam.untag(arn, [c.path.split(".", 1)[1] for c in tag_changes if c.action == "delete"])
            for c in tag_changes:
                key = c.path.split(".", 1)[1]
                if c.action == "delete":
                    tags_now.pop(key, None)
                else:
                    tags_now[key] = c.new
            log(f"{spec.name}: tags updated")
            step("tags updated")

        # 7. record the result: $LATEST as Lambda answered its last change (not the published
        # version's answer: that has the version's own description), the tags as set, and
        # the aliases as Lambda answered when they were set
        arn = before.get("arn") if before.get("exists") else conf.get("FunctionArn")
        after = {
            "exists": True,
            "arn": _unqualified(arn or conf.get("FunctionArn") or ""),
            "configuration": conf,
            "code_sha256": conf.get("CodeSha256"),
            "image_uri": image_uri,
            "architectures": conf.get("Architectures") or before.get("architectures") or ["x86_64"],
            "tags": tags_now,
            "aliases": dict(sorted(aliases_now.items())),
        }

        def finish(state: st.State) -> None:
            _record(state, fp, spec, after, version, config)
            record.update(status="succeeded", finished_at=st.now(), version=version)
            _upsert(state, record)

        writer.update(finish, functions=[spec.name], records=[record])
    except AwsError as exc:
        if failing is not None:
            failing.set()
        if exc.code == "ResourceConflictException" and not record["steps"] and not created and not before.get("exists"):
            # another tool created the function between this plan's read and CreateFunction:
            # it is not this apply's to roll back (deleting it would delete theirs)
            refusal = str(exc)

            def not_ours(state: st.State) -> None:
                record.update(status="failed", finished_at=st.now(), error=refusal)
                _upsert(state, record)

            writer.update(not_ours, records=[record])
            raise StaleError(
                f"function {spec.name} was created in Lambda by someone else since this plan read it; nothing was "
                "changed and it is left as it is",
                hint="run plan again to see whose it is",
            ) from None
        if exc.code == "PreconditionFailedException" and not record["steps"] and not created:
            # Lambda refused the first change: the function moved since it was read, and
            # nothing was changed; there is nothing to roll back
            refusal = str(exc)

            def refused(state: st.State) -> None:
                record.update(status="failed", finished_at=st.now(), error=refusal)
                _upsert(state, record)

            writer.update(refused, records=[record])
            raise StaleError(
                f"function {spec.name} changed in Lambda since this plan was made; nothing was changed",
                hint="run plan or apply again",
            ) from None
        if exc.code in ("PreconditionFailedException", CHANGED_WHILE_UPDATING):
            # a later change refused, or changed by someone else as it finished: what this
            # apply already changed is rolled back
            moved = AwsError(f"function {spec.name} changed in Lambda since this plan was made ({exc})")
            moved.code = exc.code
            exc = moved
        _failed(exc, fp, spec, config, recorded, record, writer, aws, log, rollback_on_failure)
    except BaseException as exc:  # noqa: BLE001 - Ctrl-C or a bug mid-apply rolls back too, then re-raises
        if failing is not None:
            failing.set()
        _failed(exc, fp, spec, config, recorded, record, writer, aws, log, rollback_on_failure)


def _shifted(fp: FunctionPlan, alias: str) -> bool:
    from reconciler.engine.traffic import gradual

    ro = fp.rollout
    return ro is not None and ro.get("alias") == alias and (bool(ro.get("hold")) or gradual(ro))


def _shift(
    fp: FunctionPlan,
    spec: FunctionSpec,
    alias: dict,
    version: str,
    lam,
    aws,
    record: dict,
    step: Callable[[str], None],
    abort: threading.Event | None,
    log: Callable[[str], None],
    current: dict,
) -> dict:
    """Move one alias as the plan's rollout says: gradually (traffic.roll_out), or not at all
    when a pipeline's traffic-shift steps move it (`hold`). Returns the alias as it is now."""
    from reconciler.aws.cloudwatch import CloudWatch
    from reconciler.engine import traffic

    planned = fp.rollout or {}
    if planned.get("hold"):
        record["rollout"] = traffic.held(planned, version)
        step(f"alias {alias['Name']} stays on version {planned['from']}: traffic-shift steps move it")
        log(
            f"{spec.name}: alias {alias['Name']} stays on version {planned['from']} until the traffic-shift steps move it"
        )
        return current

    def sleep(seconds: float) -> None:
        if abort is None:
            time.sleep(seconds)
        elif abort.wait(seconds):
            raise Interrupted()

    cw = CloudWatch(aws, spec.region, spec.connector)
    return traffic.roll_out(planned, spec, alias, version, lam, cw, record, step, sleep, log)


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


def _unqualified(arn: str) -> str:
    """A function ARN without a version qualifier (a published version answers with one)."""
    parts = arn.split(":")
    return ":".join(parts[:7]) if len(parts) > 7 else arn


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


def _delete(fp: FunctionPlan, writer: StateWriter, aws, log: Callable[[str], None]) -> None:
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
