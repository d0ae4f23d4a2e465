"""Execute a Plan (SPEC §5): the functions of each state file (infrastructure) under its
lock, `parallelism` at a time, the first failure stopping the ones not yet started; a
saved plan is first checked against what is live. Each function is deployed step by step
by `reconciler.engine.executor` (snapshot, change, publish, move aliases, tag, record
after every step) and put back as it was if anything fails (`reconciler.engine.failure`,
`reconciler.engine.restore`).

Crash safety: the in-flight record (status in_progress) is in the state before the
first change, and every step is recorded after it happens, so a killed apply is known
to the next plan (plan.interrupted_deployment) which converges it; the next apply or
rollback of that function marks the record "interrupted".

Locking: with allowSimultaneousDeployments false (the default), the state file's lock
is held for the whole apply of that infrastructure. With it true, each function is
deployed under its own lock (`<state>.<function>.lock` beside the state file) and the
state file's lock is taken only around each read-modify-write of the state, which is
re-loaded under it: two processes deploying different functions never lose each
other's updates, and one function is never deployed twice at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import ExitStack, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.engine.deployment import Interrupted
from reconciler.engine.executor import delete_function, deploy_function
from reconciler.engine.failure import ApplyFailed
from reconciler.engine.live import alias_view, fingerprint, snapshot
from reconciler.engine.locks import function_lock
from reconciler.engine.records import StateWriter, close_interrupted
from reconciler.engine.restore import restore
from reconciler.errors import ReconcilerError, StaleError
from reconciler.model import FunctionPlan, FunctionSpec, Plan
from reconciler.store import state as st


class NotStarted(Exception):
    """A function of a parallel apply that was not started because another one failed."""


def apply_plan(
    plan: Plan,
    aws,
    state_dir: Path,
    log: Callable[[str], None],
    *,
    saved: bool = False,
    rollback_on_failure: bool = True,
    lock_timeout: float = 0,
    parallelism: int = 1,
) -> dict:
    """Apply every function with changes, one state file (infrastructure) at a time.

    Functions of one state file are applied `parallelism` at a time (each function's
    steps in order). The first failure stops functions not yet started at once (the
    moment it happens, before its rollback); the ones running finish (or roll back); a
    summary (applied / failed / not started) is logged and the failure is raised."""
    results: dict[str, list[str]] = {"applied": [], "failed": [], "deleted": [], "not_started": []}
    by_state: dict[tuple[str, str], list[FunctionPlan]] = {}
    for fp in plan.functions:
        if fp.has_changes:
            by_state.setdefault((fp.environment, fp.infrastructure), []).append(fp)
    for (env, infra), fps in sorted(by_state.items()):
        desired = [fp.desired for fp in fps if fp.desired]
        path = st.state_path(state_dir, env, infra)
        # per-function locks are local file locks: a remote state backend keeps one
        # deployment per infrastructure at a time (its own lock, held throughout)
        shared = bool(desired) and all(d.get("allow_simultaneous") for d in desired) and isinstance(path, Path)
        held = not shared and str(path) in plan.locked  # taken by make_plan before it read what is live
        with ExitStack() as stack:
            if not shared and not held:
                stack.enter_context(st.locked(path, "apply", timeout=lock_timeout))
            writer = StateWriter(state_dir, env, infra, shared, lock_timeout)
            group = _Group(writer, aws, log, rollback_on_failure, lock_timeout, results)
            try:
                group.befores = _befores(plan, writer, fps, aws, parallelism, saved, held)
                _apply_group(fps, group, parallelism)
            except BaseException as exc:
                writer.close(best_effort=True)
                if isinstance(exc, ReconcilerError):
                    _summarize(results, [fp for fps_ in by_state.values() for fp in fps_], log)
                raise
            writer.close()
    return results


def _befores(
    plan: Plan, writer: StateWriter, fps: list[FunctionPlan], aws, parallelism: int, saved: bool, held: bool
) -> dict[str, dict]:
    """What is live now, as the rollback data: a saved plan is checked against a fresh
    read (which is then that data); a plan made under the lock still held is current;
    otherwise each function is read when its deployment starts."""
    if saved:
        return _check_fresh(plan, writer, fps, aws, parallelism)
    if held:
        return {fp.name: fp.live for fp in fps if fp.live is not None}
    return {}


def _summarize(results: dict, fps: list[FunctionPlan], log: Callable[[str], None]) -> None:
    """The end of a failed apply: what was applied, what failed, what was never started."""
    seen = set(results["applied"]) | set(results["deleted"]) | set(results["failed"])
    results["not_started"] = [fp.name for fp in fps if fp.name not in seen]
    parts = [
        f"{len(results['applied'])} applied",
        f"{len(results['deleted'])} deleted" if results["deleted"] else "",
        f"{len(results['failed'])} failed ({', '.join(results['failed'])})" if results["failed"] else "",
        f"{len(results['not_started'])} not started" if results["not_started"] else "",
    ]
    log("Apply failed: " + ", ".join(p for p in parts if p) + ".")


@dataclass
class _Group:
    """The functions of one state file being applied, and what their deployments share."""

    writer: StateWriter
    aws: Any
    log: Callable[[str], None]
    rollback_on_failure: bool
    lock_timeout: float
    results: dict[str, list[str]]
    befores: dict[str, dict] = field(default_factory=dict)
    # Ctrl-C: the running functions stop at their next step and roll back
    abort: threading.Event = field(default_factory=threading.Event)
    # a function failed: no other one is started
    failing: threading.Event = field(default_factory=threading.Event)
    done_lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, fp: FunctionPlan) -> None:
        """Deploy (or delete) one function, unless the apply was interrupted or failed."""
        if self.abort.is_set():
            raise Interrupted()
        if self.failing.is_set():
            raise NotStarted()
        # the state file's lock, held for the whole apply, already keeps other deployments
        # out unless deployments are simultaneous
        operation = "delete" if fp.action == "delete" else "apply"
        with (
            function_lock(self.writer.path, fp.name, operation, timeout=self.lock_timeout)
            if self.writer.shared
            else nullcontext()
        ):
            if fp.action == "delete":
                delete_function(fp, self.writer, self.aws, self.log)
            else:
                before = self.befores.get(fp.name)
                deploy_function(
                    fp, self.writer, self.aws, self.log, self.rollback_on_failure, self.abort, before, self.failing
                )
        with self.done_lock:
            self.results["deleted" if fp.action == "delete" else "applied"].append(fp.name)


def _apply_group(fps: list[FunctionPlan], group: _Group, parallelism: int) -> None:
    """One state file's functions, one after the other or `parallelism` at a time."""
    if parallelism <= 1 or len(fps) == 1:
        for fp in fps:
            try:
                group.run(fp)
            except BaseException:
                group.results["failed"].append(fp.name)
                raise
        return
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=min(parallelism, len(fps)), thread_name_prefix="apply") as pool:
        futures = {pool.submit(group.run, fp): fp for fp in fps}
        try:
            for fut in as_completed(futures):
                _collect(fut, futures, group, errors)
        except BaseException:
            # Ctrl-C in the main thread: the running functions stop at their next step and
            # roll back; wait for them so nothing is left half deployed
            group.abort.set()
            _wait_for_rollbacks(futures)
            raise
    _raise_failures(errors)


def _collect(fut: Future, futures: dict[Future, FunctionPlan], group: _Group, errors: list[BaseException]) -> None:
    """One finished function of a parallel apply: its failure stops the ones not started."""
    if fut.cancelled():  # never started (cancelled after a failure)
        return
    exc = fut.exception()
    if exc is None or isinstance(exc, NotStarted) or (isinstance(exc, Interrupted) and errors):
        return
    errors.append(exc)
    group.results["failed"].append(futures[fut].name)
    group.failing.set()
    for other in futures:
        other.cancel()  # not started yet: never started


def _wait_for_rollbacks(futures: dict[Future, FunctionPlan]) -> None:
    """Nothing more is started; the running functions are waited for (they roll back)."""
    for other in futures:
        other.cancel()
    for other in futures:
        with suppress(BaseException):  # a second Ctrl-C
            if not other.cancelled():
                other.exception()


def _raise_failures(errors: list[BaseException]) -> None:
    """A bug or an interruption is raised as it is; failures of several functions as one."""
    if not errors:
        return
    first = next((e for e in errors if not isinstance(e, ReconcilerError)), None)
    if first is not None:
        raise first
    if len(errors) == 1:
        raise errors[0]
    raise ApplyFailed("; ".join(str(e) for e in errors))


def _check_fresh(
    plan: Plan, writer: StateWriter, fps: list[FunctionPlan], aws, parallelism: int = 10
) -> dict[str, dict]:
    """Refuse a saved plan if the state or a function changed since it was made; returns
    what is live now, by function."""
    from reconciler.engine.refresh import parallel_map, refresh_function

    state = writer.read()
    ref = plan.state_refs.get(str(state.path))
    # with simultaneous deployments other functions' deployments move the serial: only
    # what is live for this plan's functions decides then
    if (
        not writer.shared
        and ref is not None
        and (ref.get("lineage"), ref.get("serial")) != (state.ref["lineage"], state.ref["serial"])
    ):
        raise StaleError(
            "saved plan is stale: the state changed since it was made (serial "
            f"{ref.get('serial')} → {state.ref['serial']})",
            str(state.path),
            hint="run plan again",
        )

    def read(fp: FunctionPlan) -> dict:
        desired = FunctionSpec.from_dict(fp.desired) if fp.desired else None
        return refresh_function(aws, fp.region, desired.connector if desired else None, fp.name)

    lives = parallel_map(read, fps, parallelism)
    for fp, live in zip(fps, lives, strict=False):
        if fingerprint(live) != fp.live_fingerprint:
            raise StaleError(
                f"saved plan is stale: function {fp.name} changed in Lambda since it was made", hint="run plan again"
            )
    # in simultaneous mode a function's lock is only taken later: it is read again then
    return {} if writer.shared else {fp.name: live for fp, live in zip(fps, lives, strict=False)}


__all__ = [
    "ApplyFailed",
    "StateWriter",
    "alias_view",
    "apply_plan",
    "close_interrupted",
    "function_lock",
    "restore",
    "snapshot",
]
