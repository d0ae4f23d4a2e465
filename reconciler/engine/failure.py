"""What a failed apply step leads to (SPEC §5): the failure recorded, the function put
back as it was (`reconciler.engine.restore`) unless --no-rollback, the outcome recorded,
and one error that says what happened and, if the rollback failed, what is left to do by
hand.
"""

from __future__ import annotations

from collections.abc import Callable

from reconciler.engine.records import StateWriter, _record, _upsert
from reconciler.engine.restore import restore
from reconciler.errors import ReconcilerError
from reconciler.model import FunctionPlan, FunctionSpec
from reconciler.store import state as st


class ApplyFailed(ReconcilerError):
    """An apply step failed; `rolled_back` says whether the function was restored."""


class Interrupted(BaseException):
    """Raised in a worker between steps when the apply was interrupted (Ctrl-C) or another
    function of a parallel apply failed: the function is rolled back like on a failure."""


def _reason(exc: BaseException) -> str:
    from reconciler.util.secrets import scrub

    if isinstance(exc, ReconcilerError):
        return scrub(str(exc), errors=True)
    if isinstance(exc, (KeyboardInterrupt, Interrupted)):
        return "interrupted"
    return scrub(f"{type(exc).__name__}: {exc}", errors=True)


def _failed(
    exc: BaseException,
    fp: FunctionPlan,
    spec: FunctionSpec,
    config: dict,
    recorded: dict | None,
    record: dict,
    writer: StateWriter,
    aws,
    log: Callable[[str], None],
    rollback_on_failure: bool,
) -> None:
    """Record the failure, put the function back as it was (unless --no-rollback), record
    that, and raise: ApplyFailed for an AWS/reconciler error or a state that cannot be
    written, else the exception itself.

    The state may be what failed (unwritable, or written by somebody who ignored the lock):
    the rollback runs even when the failure cannot be recorded, and the error says what
    the state is missing."""
    from reconciler.engine.refresh import refresh_function

    reason = _reason(exc)
    # a state that cannot be written is an error to report in one line, not a bug
    domain = isinstance(exc, (ReconcilerError, OSError))
    unrecorded: list[str] = []

    def record_safely(change: Callable[[st.State], None], **what) -> None:
        try:
            writer.update(change, **what)
        except Exception as w_exc:  # noqa: BLE001 - the rollback goes on; the error says what is not recorded
            if not unrecorded:
                log(f"{spec.name}: the state cannot be written ({_reason(w_exc)}); going on without recording")
            unrecorded.append(_reason(w_exc))

    def unrecorded_note() -> str:
        if not unrecorded:
            return ""
        return (
            f"; the state could not record this ({unrecorded[0]}): it still shows this apply as started, and the "
            "next plan converges it"
        )

    def failed(state: st.State) -> None:
        # "rolling_back" until the rollback is over: a process killed meanwhile leaves it
        # in flight, for the next plan to report and the next apply to converge
        record.update(status="rolling_back" if rollback_on_failure else "failed", finished_at=st.now(), error=reason)
        _upsert(state, record)

    record_safely(failed, records=[record])
    if not rollback_on_failure:
        if domain:
            raise ApplyFailed(
                f"{spec.name}: {exc}; left as it is for inspection (--no-rollback){unrecorded_note()}"
            ) from None
        raise exc
    log(f"{spec.name}: FAILED: {reason}; rolling back")
    try:
        restore(aws, spec.name, spec.region, spec.connector, record["previous"], log, owner=spec.tags)
    except BaseException as rb_exc:  # noqa: BLE001 - reported loudly below, with what is left to do
        rb_reason = _reason(rb_exc)
        try:
            after = refresh_function(aws, spec.region, spec.connector, spec.name)
        except BaseException:  # noqa: BLE001
            after = {"exists": True, "arn": None} if recorded is None else {"exists": False}

        def rollback_failed(state: st.State) -> None:
            record.update(status="rollback_failed", rollback_error=rb_reason)
            _upsert(state, record)
            if after.get("exists") and spec.name not in state.functions:
                # a function this apply created and could not delete: keep it in the state,
                # so that plan, drift and the next apply know it exists
                _record(state, fp, spec, after, record.get("version"), config)
                state.functions[spec.name]["rollback_failed"] = record["id"]

        record_safely(rollback_failed, functions=[spec.name], records=[record])
        todo = _todo(record["previous"])
        log(
            f"{spec.name}: ROLLBACK FAILED: {_reason(rb_exc)}; restore it by hand: {todo}, or run apply again to finish "
            "the change"
        )
        if domain:
            raise ApplyFailed(
                f"{spec.name}: {exc}; ROLLBACK FAILED: {_reason(rb_exc)}; restore it by hand: {todo}, or run "
                f"apply again to finish the change{unrecorded_note()}"
            ) from None
        raise exc
    try:
        after = refresh_function(aws, spec.region, spec.connector, spec.name)
    except Exception:  # noqa: BLE001 - restored; only the record of how is incomplete
        after = None

    def rolled_back(state: st.State) -> None:
        record.update(status="rolled_back")
        _upsert(state, record)
        if after is None:
            return
        if after.get("exists") and recorded is not None:
            state.functions[spec.name] = {**recorded, "aliases": after.get("aliases", {}), "updated_at": st.now()}
        elif not after.get("exists"):
            state.functions.pop(spec.name, None)

    record_safely(rolled_back, functions=[spec.name], records=[record])
    log(f"{spec.name}: rolled back to what ran before")
    if domain:
        raise ApplyFailed(f"{spec.name}: {exc}; rolled back to what ran before{unrecorded_note()}") from None
    raise exc


def _todo(prev: dict) -> str:
    if not prev.get("exists"):
        return "delete the function"
    aliases = ", ".join(f"{n} → {a['version']}" for n, a in prev.get("aliases", {}).items())
    where = [
        w
        for w in (
            (prev.get("code_source") or {}).get("uri"),
            prev.get("image_uri"),
            f"the code of version {prev['version']}" if prev.get("version") else None,
        )
        if w
    ]
    return (
        f"$LATEST code {prev.get('code_sha256')}"
        + (f" (from {' or '.join(where)})" if where else "")
        + f", the configuration recorded as `previous` in the state history, aliases {aliases or 'none'}"
    )
