"""Commands for the scheduled and housekeeping uses: drift, refresh, import, state rm,
force-unlock. Registered on the app of cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reconciler.cli.app import (
    Artifact,
    Debug,
    Envs,
    Infras,
    LockTimeout,
    NoColor,
    Out,
    Parallelism,
    Services,
    ShowStats,
    ShowValues,
    StateDir,
    Vars,
    Verbose,
    Workspace,
    _aws,
    _check_format,
    _context,
    _fail,
    _finish,
    _table,
    _warn_all,
    app,
    confirm,
    state_app,
)
from reconciler.errors import ErrorList, ReconcilerError

Functions = Annotated[list[str] | None, typer.Option("--function", "-f", help="Only this function (repeatable).")]


def _drift_text(report, show_values: bool) -> str:
    from reconciler.cli.views import _change_line, masked

    lines = []
    for f in report.functions:
        mark = {"in_sync": " ", "drifted": "~", "deleted": "-", "unfinished": "!", "rolling_out": "»"}[f.status]
        lines.append(
            f"{mark} {f.name}  [{f.service} → {f.environment}/{f.infrastructure}, {f.region}] {f.status.replace('_', ' ')}"
        )
        if f.status in ("unfinished", "rolling_out"):
            lines.append(f"      {f.note}")
            continue
        for c in f.changes:
            lines.append(f"      {_drift_line(c, show_values, _change_line, masked)}")
    s = report.to_dict()["summary"]
    if not report.functions:
        return "No functions recorded in the selected state.\n"
    unfinished = f"{s.get('unfinished', 0)} unfinished, " if s.get("unfinished") else ""
    unfinished += f"{s.get('rolling_out', 0)} rolling out, " if s.get("rolling_out") else ""
    lines += [
        "",
        f"Drift: {s['drifted']} drifted, {s['deleted']} deleted, {unfinished}"
        f"{s['checked'] - s['drifted'] - s['deleted'] - s.get('unfinished', 0) - s.get('rolling_out', 0)} in sync ({s['checked']} checked).",
    ]
    return "\n".join(lines) + "\n"


def _drift_line(c, show_values, change_line, masked) -> str:
    if c.kind == "function":
        return "function deleted outside reconciler"
    if c.kind == "version":
        return f"version {c.new} published outside reconciler"
    return change_line(masked(c, show_values))


def _drift_markdown(report, show_values: bool) -> str:
    from reconciler.cli.views import COMMENT_LIMIT, _change_line, masked

    s = report.to_dict()["summary"]
    unfinished = f"{s.get('unfinished', 0)} unfinished, " if s.get("unfinished") else ""
    unfinished += f"{s.get('rolling_out', 0)} rolling out, " if s.get("rolling_out") else ""
    lines = [
        "## reconciler drift",
        "",
        f"**{s['drifted']} drifted, {s['deleted']} deleted, {unfinished}{s['checked'] - s['drifted'] - s['deleted'] - s.get('unfinished', 0) - s.get('rolling_out', 0)} in sync**",
        "",
        "| | function | service | target | status |",
        "|---|---|---|---|---|",
    ]
    for f in report.functions:
        lines.append(
            f"| { {'in_sync': '·', 'drifted': '~', 'deleted': '-', 'unfinished': '!', 'rolling_out': '»'}[f.status] } | `{f.name}` | {f.service} | {f.environment}/{f.infrastructure} | {f.status} |"
        )
    for f in [f for f in report.functions if f.status == "rolling_out"] + report.drifted:
        if f.status in ("unfinished", "rolling_out"):
            lines += ["", f"`{f.name}`: {f.note}"]
            continue
        lines += [
            "",
            f"<details><summary><code>{f.name}</code>: {len(f.changes)} difference(s)</summary>",
            "",
            "```",
            *[_drift_line(c, show_values, _change_line, masked) for c in f.changes],
            "```",
            "",
            "</details>",
        ]
    text = "\n".join(lines) + "\n"
    if len(text) > COMMENT_LIMIT:
        text = (
            text[: COMMENT_LIMIT - 200].rsplit("\n", 1)[0]
            + "\n```\n</details>\n\n_Report truncated; run `reconciler drift` for all of it._\n"
        )
    return text


@app.command()
def drift(
    workspace: Workspace = Path("."),
    service: Services = None,
    env: Envs = None,
    infra: Infras = None,
    function: Functions = None,
    state_dir: StateDir = None,
    format: Annotated[str, typer.Option("--format", help="Output format: text, json or markdown.")] = "text",
    parallelism: Parallelism = 10,
    stats: ShowStats = False,
    show_values: ShowValues = False,
    verbose: Verbose = False,
    debug: Debug = False,
    no_color: NoColor = False,
) -> None:
    """Compare live AWS with the state file; change nothing. Exit 0 no drift, 2 drift, 1 error."""
    out = Out(verbose, no_color)
    ctx = aws = report = None
    try:
        import json

        from reconciler.cli.views import masked
        from reconciler.engine.drift import check, selected_states

        _check_format(format)
        ctx = _context(workspace, service, env, infra, None, None, state_dir, out, parallelism)
        aws = _aws()
        unreadable: list[ReconcilerError] = []  # damaged states: reported, the others are checked
        with ctx.stats.phase("load/render"):
            states = selected_states(ctx.state_dir, ctx.options.environments, ctx.options.infrastructures, unreadable)
        with ctx.stats.phase("refresh"):
            report = check(
                aws, states, ctx.options.services, list(function or []), out.debug, parallelism, ctx.progress
            )
        _finish(ctx, None, False)
        if format == "json":
            out.result(json.dumps(report.to_dict(lambda c: masked(c, show_values)), indent=2) + "\n")
        elif format == "markdown":
            out.result(_drift_markdown(report, show_values))
        else:
            out.result(_drift_text(report, show_values))
    except ReconcilerError as exc:
        _finish(ctx, aws, stats, len(report.functions) if report else None)
        _fail(exc, debug)
    _finish(ctx, aws, stats, len(report.functions))
    if unreadable:
        _fail(ErrorList(unreadable), debug)
    if report.drifted:
        raise typer.Exit(2)


@app.command()
def refresh(
    workspace: Workspace = Path("."),
    service: Services = None,
    env: Envs = None,
    infra: Infras = None,
    function: Functions = None,
    state_dir: StateDir = None,
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Accept without asking.")] = False,
    lock_timeout: LockTimeout = 0,
    parallelism: Parallelism = 10,
    stats: ShowStats = False,
    show_values: ShowValues = False,
    verbose: Verbose = False,
    debug: Debug = False,
    no_color: NoColor = False,
) -> None:
    """Accept what is live into the state (for a hand change that was intended)."""
    out = Out(verbose, no_color)
    ctx = aws = report = None
    try:
        from contextlib import ExitStack

        from reconciler.engine.drift import accept, check, selected_states
        from reconciler.store import state as st

        ctx = _context(workspace, service, env, infra, None, None, state_dir, out, parallelism)
        aws = _aws()
        with ExitStack() as stack:
            for s in selected_states(ctx.state_dir, ctx.options.environments, ctx.options.infrastructures):
                stack.enter_context(st.locked(s.path, "refresh", timeout=lock_timeout))
            with ctx.stats.phase("load/render"):
                states = selected_states(ctx.state_dir, ctx.options.environments, ctx.options.infrastructures)
            with ctx.stats.phase("refresh"):
                report = check(
                    aws, states, ctx.options.services, list(function or []), out.debug, parallelism, ctx.progress
                )
            _finish(ctx, None, False)
            out.result(_drift_text(report, show_values))
            if not report.drifted:
                out.result("Nothing to accept: the state matches what is live.\n")
                _finish(ctx, aws, stats, len(report.functions))
                return
            if not auto_approve:
                confirm(out, "refresh", "Accept what is live into the state?")
            n = accept(report, states, out.log)
            out.result(f"\nRefresh complete: {n} function(s) updated in the state.\n")
    except ReconcilerError as exc:
        _finish(ctx, aws, stats, len(report.functions) if report else None)
        _fail(exc, debug)
    _finish(ctx, aws, stats, len(report.functions))


@app.command("import")
def import_(
    names: Annotated[
        list[str] | None, typer.Argument(help="Function names to adopt (default: every selected target's function).")
    ] = None,
    workspace: Workspace = Path("."),
    service: Services = None,
    env: Envs = None,
    infra: Infras = None,
    var: Vars = None,
    artifact: Artifact = None,
    state_dir: StateDir = None,
    lock_timeout: LockTimeout = 0,
    verbose: Verbose = False,
    debug: Debug = False,
    no_color: NoColor = False,
) -> None:
    """Adopt functions that already exist in Lambda into the state, changing nothing in AWS."""
    out = Out(verbose, no_color)
    try:
        from reconciler.engine.adopt import import_functions

        ctx = _context(workspace, service, env, infra, var, artifact, state_dir, out)
        done = import_functions(ctx, _aws(), list(names or []), out.log, lock_timeout=lock_timeout)
        _warn_all(ctx, out)
        out.result(f"Import complete: {len(done)} function(s) adopted{': ' + ', '.join(done) if done else ''}.\n")
    except ReconcilerError as exc:
        _fail(exc, debug)


@state_app.command("rm")
def state_rm(
    names: Annotated[list[str], typer.Argument(help="Function names to forget.")],
    state_dir: StateDir = None,
    env: Envs = None,
    infra: Infras = None,
    lock_timeout: LockTimeout = 0,
    debug: Debug = False,
) -> None:
    """Forget functions in the state without touching AWS."""
    out = Out()
    try:
        from reconciler.errors import did_you_mean
        from reconciler.store import state as st

        ctx = _context(Path("."), None, env, infra, None, None, state_dir, out)
        removed = []
        for s in st.all_states(ctx.state_dir):
            if (env and s.environment not in env) or (infra and s.infrastructure not in infra):
                continue
            hits = [n for n in names if n in s.functions]
            if not hits:
                continue
            with st.locked(s.path, "state rm", timeout=lock_timeout):
                fresh = st.load(ctx.state_dir, s.environment, s.infrastructure)
                for n in hits:
                    fresh.functions.pop(n, None)
                    fresh.history.append(
                        {
                            "id": st.now(),
                            "function": n,
                            "operation": "state rm",
                            "status": "succeeded",
                            "started_at": st.now(),
                            "finished_at": st.now(),
                        }
                    )
                    removed.append(f"{s.environment}/{s.infrastructure}/{n}")
                fresh.write()
        missing = [n for n in names if not any(r.endswith("/" + n) for r in removed)]
        if missing:
            known = sorted({n for s in st.all_states(ctx.state_dir) for n in s.functions})
            raise ReconcilerError(
                f"no function '{missing[0]}' in the state ({ctx.state_dir})", hint=did_you_mean(missing[0], known)
            )
        for r in removed:
            out.result(f"Removed {r} from the state (Lambda is unchanged).\n")
    except ReconcilerError as exc:
        _fail(exc, debug)


@app.command("force-unlock")
def force_unlock(
    lock_id: Annotated[str, typer.Argument(help="The lock ID that the lock error printed.")],
    state_dir: StateDir = None,
    debug: Debug = False,
) -> None:
    """Remove a state lock left behind by a runner that died."""
    out = Out()
    try:
        from reconciler.store import state as st

        ctx = _context(Path("."), None, None, None, None, None, state_dir, out)
        path = st.force_unlock(ctx.state_dir, lock_id)
        out.result(f"Lock {lock_id} on {path} removed.\n")
    except ReconcilerError as exc:
        _fail(exc, debug)


__all__ = ["_table", "drift", "force_unlock", "import_", "refresh", "state_rm"]
