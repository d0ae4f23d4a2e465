"""`reconciler rollback`: back to the previous successful deployment recorded in state,
or to a given published version. `prepare` says what it will do for every selected
function (a Step each: the snapshot to restore); `execute` does it under the state's and
the function's locks, with a deployment record of operation "rollback" in the history,
through `reconciler.engine.restore`."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.store import state as st


@dataclass
class Step:
    state_path: str
    environment: str
    infrastructure: str
    function: str
    region: str
    connector: dict | None
    target: dict  # the snapshot to restore (executor._previous shape)
    current_version: str | None
    rollout: dict | None = None  # the rollout an interrupted apply left shifting, undone by this step

    def describe(self) -> str:
        aliases = ", ".join(f"{n} → {a['version']}" for n, a in sorted((self.target.get("aliases") or {}).items()))
        if self.rollout is not None:
            aliases += f" (ends the rollout of {self.rollout.get('alias')} to version {self.rollout.get('to')})"
        return (
            f"~ {self.function} [{self.environment}/{self.infrastructure}]: version {self.current_version or '-'} → {self.target.get('version')}; "
            f"$LATEST code {self.target.get('code_sha256')}" + (f"; aliases {aliases}" if aliases else "")
        )


def prepare(
    ctx, aws, to_version: str | None = None, functions: list[str] | None = None, rollouts_only: bool = False
) -> list[Step]:
    """What a rollback will do for every selected function recorded in state. During a
    rollout (its apply killed), back to what ran before that apply. `rollouts_only`
    (`apply --abort-rollout`): only the functions with such a rollout."""
    from reconciler.engine.diff import interrupted_deployment
    from reconciler.engine.rollout import shifting

    steps: list[Step] = []
    for s, name, rec in _selected(ctx, functions):
        region = rec.get("region") or s.region
        rolling = shifting(interrupted_deployment(s.history, name)) if not to_version else None
        if rollouts_only and rolling is None:
            continue
        target: dict | None
        if to_version:
            target = _version_target(aws, s, name, rec, region, to_version)
        else:
            target = _previous_target(s, name, rolling)
        if target is None:
            continue  # nothing earlier to go back to
        steps.append(
            Step(
                str(s.path),
                s.environment,
                s.infrastructure,
                name,
                region,
                rec.get("connector"),
                target,
                rec.get("version"),
                rolling,
            )
        )
    if not steps and rollouts_only:
        raise ReconcilerError(
            "no rollout to abort: no selected function has a rollout that was interrupted",
            hint="see `reconciler plan` or `reconciler history`",
        )
    if not steps:
        raise ReconcilerError(
            "nothing to roll back: no selected function has an earlier successful deployment recorded in state",
            hint="see `reconciler history`",
        )
    return steps


def _selected(ctx, functions: list[str] | None) -> Iterator[tuple[st.State, str, dict]]:
    """The functions recorded in state that the options and `functions` select."""
    opts = ctx.options
    for s in st.all_states(ctx.state_dir):
        if (opts.environments and s.environment not in opts.environments) or (
            opts.infrastructures and s.infrastructure not in opts.infrastructures
        ):
            continue
        for name, rec in sorted(s.functions.items()):
            if functions and name not in functions:
                continue
            if opts.services and rec.get("service") not in opts.services:
                continue
            yield s, name, rec


def _version_target(aws, s: st.State, name: str, rec: dict, region: str, to_version: str) -> dict[str, Any]:
    """The snapshot of a given published version, read from Lambda; every alias goes to it."""
    from reconciler.aws.client import Lambda

    got = Lambda(aws, region, rec.get("connector")).get_function(name, to_version)
    if got is None:
        raise ReconcilerError(f"function {name} has no version {to_version} in Lambda")
    conf = got["Configuration"]
    deployed = _last(s, name, lambda h: h.get("version") == to_version)
    return {
        "exists": True,
        "version": to_version,
        "code_sha256": conf.get("CodeSha256"),
        "code_params": (deployed or {}).get("code_params"),
        "image_uri": (got.get("Code") or {}).get("ImageUri"),
        "package_type": conf.get("PackageType", "Zip"),
        "configuration": conf,
        "tags": rec.get("tags", {}),
        "aliases": {a: {**v, "version": to_version, "weights": {}} for a, v in (rec.get("aliases") or {}).items()},
    }


def _previous_target(s: st.State, name: str, rolling: dict | None) -> dict | None:
    """What ran before the last successful apply (or before an apply whose own rollback
    failed, or that was killed mid-rollout), with the code parameters of the deployment
    that published it; None if there is nothing earlier to go back to."""
    from reconciler.engine.diff import interrupted_deployment

    half = interrupted_deployment(s.history, name)
    if (
        half is not None
        and half.get("operation") == "apply"
        and (half.get("status") == "rollback_failed" or rolling is not None)
    ):
        # an apply whose own rollback failed, or killed mid-rollout: undo it, back to what ran before it
        last: dict | None = half
    else:
        last = _last(s, name, lambda h: h.get("operation") == "apply" and h.get("status") == "succeeded")
    if last is None or not (last.get("previous") or {}).get("exists"):
        return None
    target = last["previous"]
    if not target.get("version"):
        return None
    if not target.get("code_params"):
        version = target.get("version")
        earlier = _last(s, name, lambda h: h.get("version") == version and h.get("status") == "succeeded")
        target = {**target, "code_params": (earlier or {}).get("code_params")}
    return target


def _last(s: st.State, name: str, match: Callable[[dict], bool]) -> dict | None:
    """The newest deployment record of this function that `match`es."""
    return next((h for h in reversed(s.history) if h.get("function") == name and match(h)), None)


def execute(ctx, aws, steps: list[Step], log: Callable[[str], None], lock_timeout: float = 0) -> None:
    from contextlib import ExitStack

    from reconciler.engine.locks import function_lock

    for step in steps:
        with ExitStack() as stack:
            path = st.state_path(ctx.state_dir, step.environment, step.infrastructure)
            stack.enter_context(st.locked(path, "rollback", timeout=lock_timeout))
            # also the function's own lock: an apply with allowSimultaneousDeployments holds
            # only that one while it deploys
            stack.enter_context(function_lock(path, step.function, "rollback", timeout=lock_timeout))
            _roll_back(ctx, aws, step, log)


def _roll_back(ctx, aws, step: Step, log: Callable[[str], None]) -> None:
    """One function back to its step's snapshot, recorded: in flight before the first
    change, then succeeded (with what is live now in the function's entry) or failed."""
    from reconciler.engine.restore import restore

    state = st.load(ctx.state_dir, step.environment, step.infrastructure)
    rec = state.functions.get(step.function, {})
    record = _begin(state, step, rec, log)
    try:
        restore(aws, step.function, step.region, step.connector, step.target, log)
    except BaseException as exc:  # Ctrl-C too: never leave the record in_progress
        record.update(status="failed", finished_at=st.now(), error=_reason(exc))
        state.write()
        raise
    created = (step.rollout or {}).get("created_alarm")
    if created:
        _delete_alarm(aws, step, str(created), log)
    _finish(aws, state, step, rec, record)
    log(f"{step.function}: rolled back to version {step.target.get('version')}")


def _begin(state: st.State, step: Step, rec: dict, log: Callable[[str], None]) -> dict[str, Any]:
    """The rollback's deployment record, in the state before anything changes; the
    function's earlier in-flight records are closed by it."""
    from reconciler.engine.records import close_interrupted, half_done

    record: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "function": step.function,
        "service": rec.get("service"),
        "operation": "rollback",
        "status": "in_progress",
        "started_at": st.now(),
        "finished_at": None,
        "version": step.target.get("version"),
        "code_sha256": step.target.get("code_sha256"),
        "previous": {"exists": True, **{k: rec.get(k) for k in ("version", "code_sha256", "aliases")}},
        "steps": [],
    }
    for h in close_interrupted(state, step.function, record):
        if isinstance(h.get("rollout"), dict) and h["rollout"].get("status") == "shifting":
            h["rollout"]["status"] = "aborted"
            log(
                f"{step.function}: the rollout of alias {h['rollout'].get('alias')} to version {h['rollout'].get('to')} "
                f"is aborted: back to version {h['rollout'].get('from')}"
            )
        log(
            f"{step.function}: the {h.get('operation')} started at {h.get('started_at')}, {half_done(h)}, is rolled back"
        )
    state.history.append(record)
    state.write()
    return record


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ReconcilerError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"


def _finish(aws, state: st.State, step: Step, rec: dict, record: dict) -> None:
    """The function's entry as it is now, and the record succeeded."""
    from reconciler.engine.live import project
    from reconciler.engine.refresh import refresh_function

    live = refresh_function(aws, step.region, step.connector, step.function)
    rec.update(
        version=step.target.get("version"),
        code_sha256=live.get("code_sha256"),
        aliases=live.get("aliases", {}),
        configuration=project(live.get("configuration") or {}, rec.get("configuration") or {}),
        code_params=step.target.get("code_params"),
        code_source=step.target.get("code_source"),
        updated_at=st.now(),
    )
    state.functions[step.function] = rec
    record.update(status="succeeded", finished_at=st.now())
    state.write()


def _delete_alarm(aws, step: Step, name: str, log: Callable[[str], None]) -> None:
    """The alarm an interrupted rollout created on its new version's Errors (best effort)."""
    from reconciler.aws.cloudwatch import CloudWatch

    try:
        CloudWatch(aws, step.region, step.connector).delete_alarms([name])
        log(f"{step.function}: alarm {name} deleted")
    except ReconcilerError as exc:
        log(f"{step.function}: warning: alarm {name} could not be deleted ({exc}); delete it by hand")
