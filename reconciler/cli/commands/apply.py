"""`reconciler apply [PLANFILE]`: plan (or read a saved plan), ask, then create or update
functions, publish versions, move aliases and record the result in the state, under the state
locks taken before the plan read the state."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from reconciler.cli import context
from reconciler.cli.options import (
    Artifact,
    Debug,
    Envs,
    Infras,
    LockTimeout,
    NoColor,
    Parallelism,
    ProvisionerOutputs,
    Services,
    ShowStats,
    ShowValues,
    StateDir,
    Vars,
    Verbose,
    Workspace,
)
from reconciler.cli.output import Out, confirm, fail
from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.aws.client import Aws
    from reconciler.engine.context import Context
    from reconciler.model import Plan

PlanFile = Annotated[
    Path | None, typer.Argument(help="A plan saved with `plan --out`; applied exactly, or refused if stale.")
]
AutoApprove = Annotated[bool, typer.Option("--auto-approve", help="Apply without asking.")]
Prune = Annotated[bool, typer.Option("--prune", help="Delete functions in state that the workspace no longer defines.")]
NoRollback = Annotated[bool, typer.Option("--no-rollback", help="On failure, leave things as they are for inspection.")]
AbortRollout = Annotated[
    bool,
    typer.Option(
        "--abort-rollout",
        help="Instead of applying: put each selected function whose rollout was interrupted back on the version it "
        "ran before (its alias 100% on the old version, code and configuration restored).",
    ),
]


def apply(
    planfile: PlanFile = None,
    workspace: Workspace = Path("."),
    service: Services = None,
    env: Envs = None,
    infra: Infras = None,
    var: Vars = None,
    artifact: Artifact = None,
    state_dir: StateDir = None,
    auto_approve: AutoApprove = False,
    prune: Prune = False,
    no_rollback: NoRollback = False,
    abort_rollout: AbortRollout = False,
    lock_timeout: LockTimeout = 0,
    parallelism: Parallelism = 10,
    stats: ShowStats = False,
    show_values: ShowValues = False,
    verbose: Verbose = False,
    debug: Debug = False,
    no_color: NoColor = False,
    provisioner_outputs: ProvisionerOutputs = None,
) -> None:
    """Create or update functions, publish a version, move aliases, and record the result."""
    out = Out(verbose, no_color)
    ctx: Context | None = None
    aws: Aws | None = None
    the_plan: Plan | None = None
    with context.provisioner_outputs(provisioner_outputs, live=True, debug=debug):
        try:
            from reconciler.cli.views import render_text
            from reconciler.engine.apply import apply_plan
            from reconciler.engine.planner import make_plan

            if planfile is not None:
                refuse_provisioned_plan(planfile)
            ctx = context.make_context(workspace, service, env, infra, var, artifact, state_dir, out, parallelism)
            aws = context.aws()
            if abort_rollout:
                if planfile is not None:
                    raise ReconcilerError("--abort-rollout applies no plan: give it without PLANFILE")
                abort_rollouts(ctx, aws, out, auto_approve, lock_timeout)
                return
            # the locks of the state files the plan reads are taken before it reads them and
            # held until the apply is over (through the confirmation, as Terraform does)
            with ExitStack() as hold:
                if planfile is not None:
                    the_plan = read_saved_plan(planfile)
                    saved = True
                else:
                    the_plan = make_plan(ctx, aws, prune=prune, hold=hold, lock_timeout=lock_timeout)
                    context.finish(ctx, None, False)
                    context.warn_all(ctx, out)
                    saved = False
                    out.result(render_text(the_plan, show_values))
                    if not the_plan.has_changes:
                        hold.close()
                        context.finish(ctx, aws, stats, len(the_plan.functions))
                        return
                    if not auto_approve:
                        confirm(
                            out,
                            "apply",
                            "Do you want to perform these actions?",
                            ", or apply a saved plan (plan --out FILE)",
                        )
                with ctx.stats.phase("apply"):
                    results = apply_plan(
                        the_plan,
                        aws,
                        ctx.state_dir,
                        out.log,
                        saved=saved,
                        rollback_on_failure=not no_rollback,
                        lock_timeout=lock_timeout,
                        parallelism=parallelism,
                    )
            n = len(results["applied"]) + len(results["deleted"])
            out.result(
                f"\nApply complete: {len(results['applied'])} applied, {len(results['deleted'])} deleted.\n"
                if n
                else "\nNothing to apply.\n"
            )
        except ReconcilerError as exc:
            context.finish(ctx, aws, stats, len(the_plan.functions) if the_plan else None)
            fail(exc, debug)
        context.finish(ctx, aws, stats, len(the_plan.functions))


def abort_rollouts(ctx: Context, aws: Aws, out: Out, auto_approve: bool, lock_timeout: float) -> None:
    """apply --abort-rollout: each interrupted rollout's function back on the version it ran before."""
    from reconciler.engine.rollback import execute, prepare

    steps = prepare(ctx, aws, rollouts_only=True)
    for s in steps:
        out.result(s.describe() + "\n")
    if not auto_approve:
        confirm(out, "apply --abort-rollout", "Abort these rollouts?")
    execute(ctx, aws, steps, out.log, lock_timeout=lock_timeout)
    out.result(f"\nRollout aborted: {len(steps)} function(s) back on the version they ran before.\n")


def read_saved_plan(planfile: Path) -> Plan:
    """A plan saved with `plan --out`, of this reconciler's plan format."""
    import json

    from reconciler.model import PLAN_FORMAT_VERSION, Plan

    try:
        data = json.loads(planfile.read_text(encoding="utf-8"))
        the_plan = Plan.from_dict(data)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ReconcilerError(f"not a saved plan: {exc}", str(planfile)) from None
    if the_plan.format_version != PLAN_FORMAT_VERSION:
        raise ReconcilerError(
            f"saved plan has format_version {the_plan.format_version}; expected {PLAN_FORMAT_VERSION}",
            str(planfile),
        )
    return the_plan


def refuse_provisioned_plan(planfile: Path) -> None:
    """A saved `plan --pipeline` whose stages have provisioner steps: only `run` runs them.
    A file that does not read as JSON is left to read_saved_plan, which reports it."""
    import json

    from reconciler.pipeline.provisioners import refuse_saved_plan

    try:
        data = json.loads(Path(planfile).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    refuse_saved_plan(data, str(planfile))
