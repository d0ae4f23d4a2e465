"""What a stage's provisioner steps did, in the state history of the stage's target: one
`provision` record per stage run (written when they ran, updated by the rollback), and its
lines under `history`'s table."""

from __future__ import annotations

import uuid

from reconciler.pipeline.provisioners.base import masked, memory
from reconciler.pipeline.stage import RunView, StageRun
from reconciler.store import state as st
from reconciler.workspace.schema import DEFERRED


def record(runner: RunView, sr: StageRun, status: str) -> None:
    """The `provision` record of this stage run, in the history of its target's state
    (written once, then updated)."""
    mem = memory(runner, sr)
    spec, s = sr.spec, runner.settings
    rec = {
        "id": mem.get("record_id") or str(uuid.uuid4()),
        "function": spec.name if DEFERRED not in str(spec.name) else None,
        "service": spec.service,
        "operation": "provision",
        "status": status,
        "started_at": mem.get("started_at") or st.now(),
        "finished_at": st.now(),
        "version": None,
        "code_sha256": None,
        "pipeline": runner.pipe.identifier,
        "stage": sr.stage.identifier,
        "region": spec.region if DEFERRED not in str(spec.region) else None,
        "outputs": masked(mem["outputs"], mem.get("sensitive", set())),
        "provisioned": mem["records"],
    }
    with st.locked(
        st.state_path(s.state_dir, sr.target.environment, sr.target.infrastructure), "provision", timeout=s.lock_timeout
    ):
        state = st.load(s.state_dir, sr.target.environment, sr.target.infrastructure)
        old = next((h for h in state.history if h.get("id") == rec["id"]), None)
        if old is None:
            state.history.append(rec)
        else:
            old.update(rec, started_at=old.get("started_at") or rec["started_at"])
        state.write()
    mem["record_id"] = rec["id"]


def update_record(runner: RunView, sr: StageRun, changes: dict) -> None:
    mem = memory(runner, sr)
    s = runner.settings
    with st.locked(
        st.state_path(s.state_dir, sr.target.environment, sr.target.infrastructure), "provision", timeout=s.lock_timeout
    ):
        state = st.load(s.state_dir, sr.target.environment, sr.target.infrastructure)
        rec = next((h for h in state.history if h.get("id") == mem.get("record_id")), None)
        if rec is None:
            return
        rec.update(changes, finished_at=st.now())
        state.write()


def history_lines(rows: list[dict]) -> str:
    """`history`: what each `provision` record provisioned, under the table."""
    lines = []
    for r in rows:
        if r.get("operation") != "provision":
            continue
        lines.append(
            f"{r['time']}  provisioned by pipeline {r.get('pipeline')}, stage {r.get('stage')} ({r['status']}):"
        )
        for p in r.get("provisioned") or []:
            extra = [f"{k}={v}" for k, v in (p.get("outputs") or {}).items()]
            extra += [f"{k} {p[k]}" for k in ("stack_id", "stack_name", "workspace", "folder") if p.get(k)]
            if p.get("error"):
                extra.append(f"error: {p['error']}")
            lines.append(
                f"  {p.get('step')} ({p.get('type', '-')}, {p.get('status')})"
                + (": " + ", ".join(extra) if extra else "")
            )
    return ("\n" + "\n".join(lines) + "\n") if lines else ""
