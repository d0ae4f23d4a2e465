"""What a failed apply step leads to (SPEC §5): the failure recorded, the function put
back as it was (`reconciler.engine.restore`) unless --no-rollback, the outcome recorded,
and one error that says what happened and, if the rollback failed, what is left to do by
hand.

The state may be what failed (unwritable, or written by somebody who ignored the lock):
the rollback runs even when the failure cannot be recorded, and the error says what the
state is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from reconciler.engine.deployment import Deployment, Interrupted
from reconciler.engine.records import record_function, upsert
from reconciler.engine.restore import restore
from reconciler.errors import ReconcilerError
from reconciler.store import state as st


class ApplyFailed(ReconcilerError):
    """An apply step failed; the message says whether the function was rolled back."""


def reason(exc: BaseException) -> str:
    """An exception in one line for the log and the state (secrets scrubbed)."""
    from reconciler.util.secrets import scrub

    if isinstance(exc, ReconcilerError):
        return scrub(str(exc), errors=True)
    if isinstance(exc, (KeyboardInterrupt, Interrupted)):
        return "interrupted"
    return scrub(f"{type(exc).__name__}: {exc}", errors=True)


class _Recorder:
    """Records the failure path's steps, going on when the state cannot be written."""

    def __init__(self, d: Deployment) -> None:
        self.d = d
        self.unrecorded: list[str] = []

    def __call__(self, change: Callable[[st.State], None], **what: Any) -> None:
        try:
            self.d.writer.update(change, **what)
        except Exception as w_exc:  # noqa: BLE001 - the rollback goes on; the error says what is not recorded
            if not self.unrecorded:
                self.d.log(f"{self.d.name}: the state cannot be written ({reason(w_exc)}); going on without recording")
            self.unrecorded.append(reason(w_exc))

    def note(self) -> str:
        if not self.unrecorded:
            return ""
        return (
            f"; the state could not record this ({self.unrecorded[0]}): it still shows this apply as started, and the "
            "next plan converges it"
        )


def fail(exc: BaseException, d: Deployment, rollback_on_failure: bool) -> NoReturn:
    """Record the failure, put the function back as it was (unless --no-rollback), record
    that, and raise: ApplyFailed for an AWS/reconciler error or a state that cannot be
    written, else the exception itself."""
    # a state that cannot be written is an error to report in one line, not a bug
    domain = isinstance(exc, (ReconcilerError, OSError))
    recorder = _Recorder(d)
    _record_failure(d, recorder, reason(exc), rollback_on_failure)
    if not rollback_on_failure:
        if domain:
            raise ApplyFailed(
                f"{d.name}: {exc}; left as it is for inspection (--no-rollback){recorder.note()}"
            ) from None
        raise exc
    d.log(f"{d.name}: FAILED: {reason(exc)}; rolling back")
    try:
        restore(d.aws, d.name, d.spec.region, d.spec.connector, d.record["previous"], d.log, owner=d.spec.tags)
    except BaseException as rb_exc:  # noqa: BLE001 - reported loudly, with what is left to do
        _rollback_failed(exc, rb_exc, d, recorder, domain)
    _record_rolled_back(d, recorder)
    d.log(f"{d.name}: rolled back to what ran before")
    if domain:
        raise ApplyFailed(f"{d.name}: {exc}; rolled back to what ran before{recorder.note()}") from None
    raise exc


def _record_failure(d: Deployment, recorder: _Recorder, why: str, rollback_on_failure: bool) -> None:
    def failed(state: st.State) -> None:
        # "rolling_back" until the rollback is over: a process killed meanwhile leaves it
        # in flight, for the next plan to report and the next apply to converge
        d.record.update(status="rolling_back" if rollback_on_failure else "failed", finished_at=st.now(), error=why)
        upsert(state, d.record)

    recorder(failed, records=[d.record])


def _rollback_failed(
    exc: BaseException, rb_exc: BaseException, d: Deployment, recorder: _Recorder, domain: bool
) -> NoReturn:
    """The failure report when the rollback failed too: recorded, with what is left to do."""
    from reconciler.engine.refresh import refresh_function

    rb_reason = reason(rb_exc)
    try:
        after = refresh_function(d.aws, d.spec.region, d.spec.connector, d.name)
    except BaseException:  # noqa: BLE001
        after = {"exists": True, "arn": None} if d.recorded is None else {"exists": False}

    def rollback_failed(state: st.State) -> None:
        d.record.update(status="rollback_failed", rollback_error=rb_reason)
        upsert(state, d.record)
        if after.get("exists") and d.name not in state.functions:
            # a function this apply created and could not delete: keep it in the state,
            # so that plan, drift and the next apply know it exists
            record_function(state, d.fp, d.spec, after, d.record.get("version"), d.config)
            state.functions[d.name]["rollback_failed"] = d.record["id"]

    recorder(rollback_failed, functions=[d.name], records=[d.record])
    todo = _todo(d.record["previous"])
    d.log(
        f"{d.name}: ROLLBACK FAILED: {rb_reason}; restore it by hand: {todo}, or run apply again to finish the change"
    )
    if domain:
        raise ApplyFailed(
            f"{d.name}: {exc}; ROLLBACK FAILED: {rb_reason}; restore it by hand: {todo}, or run "
            f"apply again to finish the change{recorder.note()}"
        ) from None
    raise exc


def _record_rolled_back(d: Deployment, recorder: _Recorder) -> None:
    from reconciler.engine.refresh import refresh_function

    after: dict | None
    try:
        after = refresh_function(d.aws, d.spec.region, d.spec.connector, d.name)
    except Exception:  # noqa: BLE001 - restored; only the record of how is incomplete
        after = None

    def rolled_back(state: st.State) -> None:
        d.record.update(status="rolled_back")
        upsert(state, d.record)
        if after is None:
            return
        if after.get("exists") and d.recorded is not None:
            state.functions[d.name] = {**d.recorded, "aliases": after.get("aliases", {}), "updated_at": st.now()}
        elif not after.get("exists"):
            state.functions.pop(d.name, None)

    recorder(rolled_back, functions=[d.name], records=[d.record])


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
