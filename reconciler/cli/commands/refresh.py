"""`reconciler refresh`: accept what is live into the state, for a change made by hand that was
intended; shows the drift first and asks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from reconciler.cli import context
from reconciler.cli.options import (
    Debug,
    Envs,
    Functions,
    Infras,
    LockTimeout,
    NoColor,
    Parallelism,
    Services,
    ShowStats,
    ShowValues,
    StateDir,
    Verbose,
    Workspace,
)
from reconciler.cli.output import Out, confirm, fail
from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.aws.client import Aws
    from reconciler.engine.context import Context
    from reconciler.engine.drift import DriftReport

AutoApprove = Annotated[bool, typer.Option("--auto-approve", help="Accept without asking.")]


def refresh(
    workspace: Workspace = Path("."),
    service: Services = None,
    env: Envs = None,
    infra: Infras = None,
    function: Functions = None,
    state_dir: StateDir = None,
    auto_approve: AutoApprove = False,
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
    ctx: Context | None = None
    aws: Aws | None = None
    report: DriftReport | None = None
    try:
        from contextlib import ExitStack

        from reconciler.cli.views import render_drift_text
        from reconciler.engine.drift import accept, check, selected_states
        from reconciler.store import state as st

        ctx = context.make_context(workspace, service, env, infra, None, None, state_dir, out, parallelism)
        aws = context.aws()
        with ExitStack() as stack:
            for s in selected_states(ctx.state_dir, ctx.options.environments, ctx.options.infrastructures):
                stack.enter_context(st.locked(s.path, "refresh", timeout=lock_timeout))
            with ctx.stats.phase("load/render"):
                states = selected_states(ctx.state_dir, ctx.options.environments, ctx.options.infrastructures)
            with ctx.stats.phase("refresh"):
                report = check(
                    aws, states, ctx.options.services, list(function or []), out.debug, parallelism, ctx.progress
                )
            context.finish(ctx, None, False)
            out.result(render_drift_text(report, show_values))
            if not report.drifted:
                out.result("Nothing to accept: the state matches what is live.\n")
                context.finish(ctx, aws, stats, len(report.functions))
                return
            if not auto_approve:
                confirm(out, "refresh", "Accept what is live into the state?")
            n = accept(report, states, out.log)
            out.result(f"\nRefresh complete: {n} function(s) updated in the state.\n")
    except ReconcilerError as exc:
        context.finish(ctx, aws, stats, len(report.functions) if report else None)
        fail(exc, debug)
    context.finish(ctx, aws, stats, len(report.functions))
