"""A stage's rollback of what it deployed (the AwsLambdaRollback step): put back what ran
before each of the stage's deploys, latest first — the `previous` snapshot the apply
recorded in the state history — and record each as a `rollback` in that history."""

from __future__ import annotations

import uuid

from reconciler.errors import ReconcilerError
from reconciler.model import FunctionSpec
from reconciler.pipeline.model import StepFailed
from reconciler.pipeline.stage import RunView, StageRun
from reconciler.store import state as st


def restore_stage(run: RunView, sr: StageRun, reason: str) -> int:
    """Put back what ran before this stage's deploys, latest deploy first; recorded in the
    state history. How many deploys were rolled back."""
    s, spec = run.settings, sr.spec
    restored = 0
    with st.locked(
        st.state_path(s.state_dir, spec.environment, spec.infrastructure), "rollback", timeout=s.lock_timeout
    ):
        for rec_id in reversed(sr.deployed):
            state = st.load(s.state_dir, spec.environment, spec.infrastructure)
            applied = next((h for h in state.history if h.get("id") == rec_id), None)
            if applied is None:
                continue
            if applied.get("status") in ("rolled_back", "rollback_failed"):
                run.log(f"   {spec.name}: this deploy was already rolled back ({applied.get('status')})")
                continue
            _restore_one(run, sr, state, applied, reason)
            restored += 1
    return restored


def _restore_one(run: RunView, sr: StageRun, state: st.State, applied: dict, reason: str) -> None:
    """Roll back one deploy (`applied`, a record of the state history) under the state lock."""
    spec = sr.spec
    prev = applied.get("previous") or {"exists": False}
    rec = state.functions.get(spec.name) or {}
    record = _rollback_record(run, sr, applied["id"], prev, rec, reason)
    state.history.append(record)
    state.write()
    run.log(
        f"   {spec.name}: rolling back to "
        + (
            f"version {prev.get('version')} (code {prev.get('code_sha256')})"
            if prev.get("exists")
            else "no function (this stage created it)"
        )
    )
    _put_back(run, spec, prev, state, record)
    if prev.get("exists"):
        state.functions[spec.name] = _refreshed(run, spec, prev, rec)
    else:
        state.functions.pop(spec.name, None)
    applied.update(status="rolled_back", rolled_back_by=record["id"])
    if (applied.get("rollout") or {}).get("status") == "shifting":
        applied["rollout"]["status"] = "stopped"
    record.update(status="succeeded", finished_at=st.now())
    state.write()
    run.log(f"   {spec.name}: rolled back")


def _rollback_record(run: RunView, sr: StageRun, rec_id: str, prev: dict, rec: dict, reason: str) -> dict:
    spec = sr.spec
    return {
        "id": str(uuid.uuid4()),
        "function": spec.name,
        "service": spec.service,
        "operation": "rollback",
        "status": "in_progress",
        "started_at": st.now(),
        "finished_at": None,
        "version": prev.get("version"),
        "code_sha256": prev.get("code_sha256"),
        "reason": reason,
        "pipeline": run.pipe.identifier,
        "stage": sr.stage.identifier,
        "rolls_back": rec_id,
        "previous": {"exists": bool(rec), **{k: rec.get(k) for k in ("version", "code_sha256", "aliases")}},
    }


def _put_back(run: RunView, spec: FunctionSpec, prev: dict, state: st.State, record: dict) -> None:
    """The function as `prev` says it was (or no function); a failure is recorded and fails the step."""
    from reconciler.engine.apply import restore

    try:
        restore(run.aws, spec.name, spec.region, spec.connector, prev, lambda m: run.log(f"   {m}"), owner=spec.tags)
    except ReconcilerError as exc:
        record.update(status="failed", finished_at=st.now(), error=str(exc))
        state.write()
        raise StepFailed(f"rollback of {spec.name} failed: {exc}") from None


def _refreshed(run: RunView, spec: FunctionSpec, prev: dict, rec: dict) -> dict:
    """The function's state record after the rollback, from what is live now."""
    from reconciler.engine.live import project
    from reconciler.engine.refresh import refresh_function

    live = refresh_function(run.aws, spec.region, spec.connector, spec.name)
    rec.update(
        version=prev.get("version"),
        code_sha256=live.get("code_sha256"),
        aliases=live.get("aliases", {}),
        configuration=project(live.get("configuration") or {}, rec.get("configuration") or {}),
        updated_at=st.now(),
    )
    if prev.get("code_params"):
        rec.update(code_params=prev.get("code_params"), code_source=prev.get("code_source"))
    return rec
