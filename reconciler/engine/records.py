"""The records an apply keeps in the state (SPEC §5): every change of one state file goes
through a StateWriter, which appends one journal line per step (`State.append`) and
compacts the journal at the end; the deployment records in the history (`upsert`), the
function's entry once deployed (`record_function`), and the in-flight records a killed apply or
rollback left, which the next one closes (`close_interrupted`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from reconciler.engine.live import project
from reconciler.model import IN_FLIGHT, FunctionPlan, FunctionSpec, unfinished
from reconciler.store import state as st

# how long a simultaneous deployment waits for another one's state write (they are short)
STATE_WRITE_WAIT = 60.0

# ---------------------------------------------------------------- state writes


def upsert(state: st.State, record: dict) -> None:
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
        self.state: st.State | None = None if shared else st.load(state_dir, environment, infrastructure)
        self._in_flight: tuple[list[dict], set[str]] | None = None

    def read(self) -> st.State:
        """The state to read from: the kept one, or (shared) the file as it is now."""
        if self.state is not None:
            return self.state
        with self._mutex:
            return st.load(self.state_dir, self.environment, self.infrastructure)

    def has_in_flight(self, state: st.State, name: str) -> bool:
        """Whether the function had an in-flight record when `state` was read. The names are
        computed once per history list: during an apply it only grows by this apply's own
        records, one function each, which are never looked up here."""
        cached = self._in_flight
        if cached is None or cached[0] is not state.history:
            names = {h["function"] for h in state.history if unfinished(h) and h.get("function")}
            cached = self._in_flight = (state.history, names)
        return name in cached[1]

    def update(
        self,
        change: Callable[[st.State], None],
        functions: Iterable[str] = (),
        records: Iterable[dict] = (),
        closing: str | None = None,
    ) -> None:
        with self._mutex:
            if self.state is not None:
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
        if closing is not None and self.has_in_flight(
            state, closing
        ):  # the very dicts close_interrupted updates in place
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
                if self.state is not None:
                    self.state.compact()
                else:
                    with st.locked(self.path, "apply", timeout=max(self.lock_timeout, STATE_WRITE_WAIT)):
                        st.load(self.state_dir, self.environment, self.infrastructure).compact()
            self._appended = False
        except Exception:  # the journal stays and every read replays it
            if not best_effort:
                raise


def record_function(
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
