"""`reconciler history`: the deployments recorded in the state, as a table or JSON, with what
pipeline stages' provisioner steps provisioned under the table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler.cli import context
from reconciler.cli.options import Debug, Envs, Functions, Infras, StateDir, TextOrJson, Workspace
from reconciler.cli.output import Out, check_format, fail, table
from reconciler.errors import ErrorList, ReconcilerError


def history(
    workspace: Workspace = Path("."),
    state_dir: StateDir = None,
    env: Envs = None,
    infra: Infras = None,
    function: Functions = None,
    format: TextOrJson = "text",
    debug: Debug = False,
) -> None:
    """The deployments recorded in state: time, version, code SHA-256, outcome; and what pipeline
    stages' provisioner steps provisioned (outputs, stacks), under the table."""
    out = Out()
    try:
        import json

        check_format(format, ("text", "json"))
        ctx = context.make_context(workspace, None, env, infra, None, None, state_dir, out)
        rows: list[dict[str, Any]] = []
        from reconciler.store import state as st

        unreadable: list[ReconcilerError] = []  # damaged states: reported after the others' history
        for s in st.readable_states(ctx.state_dir, unreadable, env or (), infra or ()):
            for h in s.history:
                if function and h.get("function") not in function:
                    continue
                rows.append(
                    {
                        "time": h.get("started_at"),
                        "environment": s.environment,
                        "infrastructure": s.infrastructure,
                        "function": h.get("function"),
                        "operation": h.get("operation"),
                        "version": h.get("version"),
                        "code_sha256": h.get("code_sha256"),
                        "status": h.get("status"),
                        "id": h.get("id"),
                        "error": h.get("error"),
                        **(
                            {k: h.get(k) for k in ("pipeline", "stage", "region", "outputs", "provisioned")}
                            if h.get("operation") == "provision"
                            else {}
                        ),
                        **({"rollout": h["rollout"]} if isinstance(h.get("rollout"), dict) else {}),
                    }
                )
        rows.sort(key=lambda r: r["time"] or "")
        if format == "json":
            out.result(json.dumps(rows, indent=2) + "\n")
        elif not rows:
            out.result("No deployments recorded.\n")
        else:
            out.result(
                table(
                    ["time", "function", "target", "operation", "version", "code_sha256", "status"],
                    [
                        [
                            r["time"],
                            r["function"] or "-",
                            f"{r['environment']}/{r['infrastructure']}",
                            r["operation"],
                            r["version"] or "-",
                            r["code_sha256"] or "-",
                            r["status"] + _rollout_note(r.get("rollout")),
                        ]
                        for r in rows
                    ],
                )
            )
            from reconciler.pipeline.provisioners import history_lines

            out.result(history_lines(rows))
        if unreadable:
            raise unreadable[0] if len(unreadable) == 1 else ErrorList(unreadable)
    except ReconcilerError as exc:
        fail(exc, debug)


def _rollout_note(rollout: dict | None) -> str:
    """` (rollout of live stopped at 10% by billing-5xx)`, ` (rollout of live completed)`."""
    if not rollout:
        return ""
    status = rollout.get("status")
    if status == "stopped":
        by = f" by {rollout['stopped_by']}" if rollout.get("stopped_by") else ""
        at = f" at {rollout['stopped_at']:g}%" if isinstance(rollout.get("stopped_at"), (int, float)) else ""
        return f" (rollout of {rollout.get('alias')} stopped{at}{by})"
    return f" (rollout of {rollout.get('alias')} {status})"
