"""`reconciler drift`: compare what is live in AWS with the state, change nothing; exit 2 when
something drifted (for a scheduled check)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from reconciler.cli import context
from reconciler.cli.options import (
    Debug,
    Envs,
    Format,
    Functions,
    Infras,
    NoColor,
    Parallelism,
    Services,
    ShowStats,
    ShowValues,
    StateDir,
    Verbose,
    Workspace,
)
from reconciler.cli.output import Out, check_format, fail
from reconciler.errors import ErrorList, ReconcilerError

if TYPE_CHECKING:
    from reconciler.aws.client import Aws
    from reconciler.engine.context import Context
    from reconciler.engine.drift import DriftReport


def drift(
    workspace: Workspace = Path("."),
    service: Services = None,
    env: Envs = None,
    infra: Infras = None,
    function: Functions = None,
    state_dir: StateDir = None,
    format: Format = "text",
    parallelism: Parallelism = 10,
    stats: ShowStats = False,
    show_values: ShowValues = False,
    verbose: Verbose = False,
    debug: Debug = False,
    no_color: NoColor = False,
) -> None:
    """Compare live AWS with the state file; change nothing. Exit 0 no drift, 2 drift, 1 error."""
    out = Out(verbose, no_color)
    ctx: Context | None = None
    aws: Aws | None = None
    report: DriftReport | None = None
    unreadable: list[ReconcilerError] = []  # damaged states: reported, the others are checked
    try:
        from reconciler.cli.views import render_drift_json, render_drift_markdown, render_drift_text
        from reconciler.engine.drift import check, selected_states

        check_format(format)
        ctx = context.make_context(workspace, service, env, infra, None, None, state_dir, out, parallelism)
        aws = context.aws()
        with ctx.stats.phase("load/render"):
            states = selected_states(ctx.state_dir, ctx.options.environments, ctx.options.infrastructures, unreadable)
        with ctx.stats.phase("refresh"):
            report = check(
                aws, states, ctx.options.services, list(function or []), out.debug, parallelism, ctx.progress
            )
        context.finish(ctx, None, False)
        render = {"json": render_drift_json, "markdown": render_drift_markdown}.get(format, render_drift_text)
        out.result(render(report, show_values))
    except ReconcilerError as exc:
        context.finish(ctx, aws, stats, len(report.functions) if report else None)
        fail(exc, debug)
    context.finish(ctx, aws, stats, len(report.functions))
    if unreadable:
        fail(ErrorList(unreadable), debug)
    if report.drifted:
        raise typer.Exit(2)
