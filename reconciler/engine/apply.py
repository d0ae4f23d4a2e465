"""Execute a Plan: snapshot, change, publish, move aliases, record after every step,
and put the function back as it was if anything fails (SPEC §5).

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

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

from reconciler.engine.diff import desired_config, interrupted_deployment, publish_description
from reconciler.engine.live import alias_view, fingerprint, project, snapshot
from reconciler.errors import AwsError, LockError, ReconcilerError, StaleError
from reconciler.model import IN_FLIGHT, FunctionPlan, FunctionSpec, Plan, owned_by, unfinished
from reconciler.store import state as st

# how long a simultaneous deployment waits for another one's state write (they are short)
STATE_WRITE_WAIT = 60.0


class ApplyFailed(ReconcilerError):
    """An apply step failed; `rolled_back` says whether the function was restored."""


class Interrupted(BaseException):
    """Raised in a worker between steps when the apply was interrupted (Ctrl-C) or another
    function of a parallel apply failed: the function is rolled back like on a failure."""


class NotStarted(Exception):
    """A function of a parallel apply that was not started because another one failed."""


# ---------------------------------------------------------------- state writes


def _upsert(state: st.State, record: dict) -> None:
    """Put this deployment record in the history (replacing its earlier copy)."""
    history = state.history
    for i in range(len(history) - 1, -1, -1):  # it is one of the newest
        if history[i].get("id") == record["id"]:
            history[i] = record
            return
    history.append(record)


class StateWriter:
    """Every change of one state file goes through update(fn, ...): fn(state) changes it
    and the change is recorded; a threading.Lock serialises them within this process.

    A change names what it touched (`functions`: entries of state.functions, `records`:
    history records, `closing`: a function whose in-flight records fn may mark interrupted),
    and only that is appended to the state's journal (State.append): one line per step,
    not the whole state. close() compacts the journal into the state file at the end. A
    change that names nothing is written whole.

    shared=False: the caller holds the state file's lock for the whole apply; the state
    is loaded once and kept. shared=True (allowSimultaneousDeployments): the state file's
    lock is taken around each read-modify-write and the state re-loaded under it, so
    what other processes wrote in between is kept (each writer only touches its own
    function's entry and its own history records)."""

    def __init__(self, state_dir: Path, environment: str, infrastructure: str, shared: bool, lock_timeout: float = 0):
        self.state_dir, self.environment, self.infrastructure = state_dir, environment, infrastructure
        self.path = st.state_path(state_dir, environment, infrastructure)
        self.shared = shared
        self.lock_timeout = lock_timeout
        self._mutex = threading.Lock()
        self._appended = False
        self.state = None if shared else st.load(state_dir, environment, infrastructure)

    def read(self) -> st.State:
        """The state to read from: the kept one, or (shared) the file as it is now."""
        if not self.shared:
            return self.state
        with self._mutex:
            return st.load(self.state_dir, self.environment, self.infrastructure)

    def update(
        self,
        change: Callable[[st.State], None],
        functions: Iterable[str] = (),
        records: Iterable[dict] = (),
        closing: str | None = None,
    ) -> None:
        with self._mutex:
            if not self.shared:
                self._record(self.state, change, functions, records, closing)
                return
            with st.locked(self.path, "apply", timeout=max(self.lock_timeout, STATE_WRITE_WAIT)):
                state = st.load(self.state_dir, self.environment, self.infrastructure)
                self._record(state, change, functions, records, closing)

    def _record(self, state: st.State, change, functions, records, closing: str | None) -> None:
        functions, records = list(functions), list(records)
        if not (functions or records or closing):
            change(state)
            state.write()
            return
        if closing is not None and _has_in_flight(state, closing):  # the very dicts close_interrupted updates in place
            records += [h for h in state.history if h.get("function") == closing and unfinished(h)]
        change(state)
        state.append(functions, records)
        self._appended = True

    def close(self, best_effort: bool = False) -> None:
        """Compact the journaled steps into the state file (a full write), if there are any."""
        if not self._appended:
            return
        try:
            with self._mutex:
                if not self.shared:
                    self.state.compact()
                else:
                    with st.locked(self.path, "apply", timeout=max(self.lock_timeout, STATE_WRITE_WAIT)):
                        st.load(self.state_dir, self.environment, self.infrastructure).compact()
            self._appended = False
        except Exception:  # noqa: BLE001 - the journal stays and every read replays it
            if not best_effort:
                raise


# ---------------------------------------------------------------- per-function locks


def function_lock_path(state_path: Path, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return state_path.with_name(f"{state_path.name}.{safe}.lock")


@contextmanager
def function_lock(state_path: Path, name: str, operation: str, timeout: float = 0) -> Iterator[str]:
    """Hold one function's deployment lock (`<state>.<function>.lock`, with `.info` beside it)."""
    from reconciler.store.files import file_lock
    from reconciler.store.locks import lock_info

    if not isinstance(state_path, Path):
        # a remote backend: its state lock, held for the whole deployment, serialises them
        yield ""
        return

    def busy(holder: dict) -> LockError:
        who = (
            ", ".join(f"{k}={holder[k]}" for k in ("id", "who", "pid", "operation", "created") if k in holder)
            or "unknown holder"
        )
        return LockError(
            f"function {name} is being deployed by another reconciler process ({who})",
            str(state_path),
            hint="wait with --lock-timeout",
        )

    with file_lock(
        function_lock_path(state_path, name), {**lock_info(operation, str(state_path)), "function": name}, timeout, busy
    ) as lock_id:
        yield lock_id


# ---------------------------------------------------------------- apply


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
            try:
                # what is live now, as the rollback data: a saved plan is checked against a
                # fresh read (which is then that data); a plan made under the lock still held
                # is current
                if saved:
                    befores = _check_fresh(plan, writer, fps, aws, parallelism)
                elif held:
                    befores = {fp.name: fp.live for fp in fps if fp.live is not None}
                else:
                    befores = {}
                _apply_group(fps, writer, aws, log, rollback_on_failure, lock_timeout, parallelism, results, befores)
            except BaseException as exc:
                writer.close(best_effort=True)
                if isinstance(exc, ReconcilerError):
                    _summarize(results, [fp for fps_ in by_state.values() for fp in fps_], log)
                raise
            writer.close()
    return results


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


def _apply_group(
    fps: list[FunctionPlan],
    writer: StateWriter,
    aws,
    log,
    rollback_on_failure: bool,
    lock_timeout: float,
    parallelism: int,
    results: dict,
    befores: dict[str, dict] | None = None,
) -> None:
    abort = threading.Event()  # Ctrl-C: the running functions stop at their next step and roll back
    failing = threading.Event()  # a function failed: no other one is started
    done_lock = threading.Lock()

    def one(fp: FunctionPlan) -> None:
        if abort.is_set():
            raise Interrupted()
        if failing.is_set():
            raise NotStarted()
        # the state file's lock, held for the whole apply, already keeps other deployments
        # out unless deployments are simultaneous
        with (
            function_lock(writer.path, fp.name, "delete" if fp.action == "delete" else "apply", timeout=lock_timeout)
            if writer.shared
            else nullcontext()
        ):
            if fp.action == "delete":
                _delete(fp, writer, aws, log)
            else:
                _apply_function(fp, writer, aws, log, rollback_on_failure, abort, (befores or {}).get(fp.name), failing)
        with done_lock:
            results["deleted" if fp.action == "delete" else "applied"].append(fp.name)

    if parallelism <= 1 or len(fps) == 1:
        for fp in fps:
            try:
                one(fp)
            except BaseException:
                results["failed"].append(fp.name)
                raise
        return

    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=min(parallelism, len(fps)), thread_name_prefix="apply") as pool:
        futures = {pool.submit(one, fp): fp for fp in fps}
        try:
            for fut in as_completed(futures):
                if fut.cancelled():  # never started (cancelled after a failure)
                    continue
                exc = fut.exception()
                if exc is None or isinstance(exc, NotStarted) or (isinstance(exc, Interrupted) and errors):
                    continue
                errors.append(exc)
                results["failed"].append(futures[fut].name)
                failing.set()
                for other in futures:
                    other.cancel()  # not started yet: never started
        except BaseException:
            # Ctrl-C in the main thread: the running functions stop at their next step and
            # roll back; wait for them so nothing is left half deployed
            abort.set()
            for other in futures:
                other.cancel()
            for other in futures:
                try:
                    if not other.cancelled():
                        other.exception()
                except BaseException:  # noqa: BLE001 - a second Ctrl-C
                    pass
            raise
    if errors:
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


def _record(
    state: st.State, fp: FunctionPlan, spec: FunctionSpec, snap: dict, version: str | None, config: dict
) -> None:
    from reconciler.util.secrets import env_vars, references, secret_places, shown

    state.region = state.region or spec.region
    refs = {k: shown(v) for k, v in env_vars(spec.config).items() if references(v)}
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
    if refs:  # the references; the state holds only seals of their values (reconciler.secrets)
        state.functions[spec.name]["secrets"] = refs
    places = secret_places(spec.config, spec.tags, spec.aliases)
    if places:  # the same for a description, a tag... that uses a secret
        state.functions[spec.name]["secret_fields"] = places


def close_interrupted(state: st.State, name: str, by: dict) -> list[dict]:
    """Mark the in-flight records of this function that no process finishes any more
    (their apply or rollback was killed) as interrupted, and an apply whose rollback failed
    as converged (it keeps its status "rollback_failed"). Called under the function's lock."""
    closed = []
    for h in state.history:
        if (
            h.get("function") == name
            and h.get("status") == "rollback_failed"
            and unfinished(h)
            and h.get("id") != by["id"]
        ):
            h.update(converged_by=by["id"], converged_at=st.now())
            closed.append(h)
            continue
        if h.get("function") == name and h.get("status") in IN_FLIGHT and h.get("id") != by["id"]:
            steps = h.get("steps") or []
            where = (
                "while rolling back"
                if h["status"] == "rolling_back"
                else f"after step {steps[-1]['step']!r}"
                if steps
                else "before its first recorded step"
            )
            h.update(
                status="interrupted",
                finished_at=None,
                interrupted_noticed_at=st.now(),
                converged_by=by["id"],
                error=(f"{h['error']}; " if h.get("error") else "")
                + f"interrupted {where}; converged by {by.get('operation')} {by['id']}",
            )
            closed.append(h)
    return closed


def half_done(record: dict) -> str:
    """How a deployment that close_interrupted closed had ended, for the log."""
    return "whose rollback failed" if record.get("status") == "rollback_failed" else "which was interrupted"


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
    config, filled = _with_secrets(fp, spec, config, writer, aws)
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
    secret_places = sorted(set(fp.secret_fields) | set((recorded or {}).get("secret_fields") or {}))
    if secret_places and not killed:
        record["previous"]["secret_fields"] = secret_places
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
                "Tags": filled.tags,
                **config,
                **filled.create_only,
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
            tags_now = dict(filled.tags or {})
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
        for alias in filled.aliases:
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
            # (a tag whose value uses a secret: the value, not the plan's seal of it)
            new_tags = {
                c.path.split(".", 1)[1]: filled.tags.get(c.path.split(".", 1)[1], c.new)
                for c in tag_changes
                if c.action != "delete"
            }
            lam.tag(arn, new_tags)
            lam.untag(arn, [c.path.split(".", 1)[1] for c in tag_changes if c.action == "delete"])
            for c in tag_changes:
                key = c.path.split(".", 1)[1]
                if c.action == "delete":
                    tags_now.pop(key, None)
                else:
                    tags_now[key] = new_tags[key]
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


def _has_in_flight(state: st.State, name: str) -> bool:
    return name in _in_flight_names(state)


def _in_flight_names(state: st.State) -> set[str]:
    """The functions with an in-flight record when the state was read, computed once per
    history list: during an apply it only grows by this apply's own records, one function
    each, which are never looked up here."""
    key = id(state.history)
    cached = getattr(state, "_in_flight_cache", None)
    if cached is None or cached[0] != key:
        cached = (key, {h.get("function") for h in state.history if unfinished(h)})
        state._in_flight_cache = cached
    return cached[1]


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
    Its Lambda calls get capacity within the quotas ahead of other work (reconciler.quota.urgent)."""
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
    from reconciler.workspace.schema import update_config_fields

    lam = Lambda(aws, region, connector)
    if not prev.get("exists"):
        got = lam.get_function(name)
        if got is None:
            log(f"{name}: it was not created; nothing to delete")
            return
        if owner is not None and not owned_by(owner, got.get("Tags") or {}):
            log(
                f"{name}: not deleted: it does not carry this function's ownership tags, so this apply did not create it"
            )
            return
        log(f"{name}: deleting the function this apply created")
        lam.delete_function(name)
        return
    now = refresh_function(aws, region, connector, name)
    if not now.get("exists"):
        raise AwsError(f"{name} no longer exists in Lambda; it cannot be restored")
    prev = unseal_snapshot(name, lam, prev, now, log)  # places that used a secret: their values found again
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
    # the configuration first, then the code: the reverse of the apply's order, so a
    # configuration Lambda could not apply (its update Failed) is gone before the code
    # update that would otherwise fail on it again
    live_now = project(now.get("configuration") or {}, want)
    if live_now != want:
        log(f"{name}: restoring configuration")
        lam.update_configuration(name, want)
    if now.get("code_sha256") != prev.get("code_sha256"):
        params = _code_params_for(prev, lam, name)
        log(f"{name}: restoring code {prev.get('code_sha256')}")
        lam.update_code(name, params, None)
        check = refresh_function(aws, region, connector, name)
        if check.get("code_sha256") != prev.get("code_sha256"):
            raise AwsError(f"{name}: restored code is {check.get('code_sha256')}, expected {prev.get('code_sha256')}")
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
