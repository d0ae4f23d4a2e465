"""`reconciler rollback`: restore the previous successful deployment recorded in the state (or
a published version), after showing what it will do and asking."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reconciler.cli import context
from reconciler.cli.options import (
    Debug,
    Envs,
    Functions,
    Infras,
    LockTimeout,
    NoColor,
    Services,
    StateDir,
    Verbose,
    Workspace,
)
from reconciler.cli.output import Out, confirm, fail
from reconciler.errors import ReconcilerError

ToVersion = Annotated[
    str | None,
    typer.Option("--to-version", help="Roll back to this published version instead of the previous deployment."),
]
AutoApprove = Annotated[bool, typer.Option("--auto-approve", help="Roll back without asking.")]


def rollback(
    workspace: Workspace = Path("."),
    service: Services = None,
    env: Envs = None,
    infra: Infras = None,
    state_dir: StateDir = None,
    to_version: ToVersion = None,
    function: Functions = None,
    auto_approve: AutoApprove = False,
    lock_timeout: LockTimeout = 0,
    verbose: Verbose = False,
    debug: Debug = False,
    no_color: NoColor = False,
) -> None:
    """Restore the previous successful deployment recorded in state (aliases, $LATEST code and configuration)."""
    out = Out(verbose, no_color)
    try:
        from reconciler.engine.rollback import execute, prepare

        ctx = context.make_context(workspace, service, env, infra, None, None, state_dir, out)
        steps = prepare(ctx, context.aws(), to_version=to_version, functions=list(function or []))
        for s in steps:
            out.result(s.describe() + "\n")
        if not auto_approve:
            confirm(out, "rollback", "Roll back?")
        execute(ctx, context.aws(), steps, out.log, lock_timeout=lock_timeout)
        out.result(f"\nRollback complete: {len(steps)} function(s).\n")
    except ReconcilerError as exc:
        fail(exc, debug)
