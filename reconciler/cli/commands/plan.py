"""`reconciler plan`: refresh what is live, diff it against the workspace and print the plan
(text, JSON or Markdown), or save it for `apply FILE`; with --pipeline ID, the plan of what that
pipeline's stages would change, its stages' provisioner steps shown before it. Read-only."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from reconciler.cli import context
from reconciler.cli.options import (
    Artifact,
    Debug,
    Envs,
    Format,
    Infras,
    Inputs,
    NoColor,
    Parallelism,
    Pipeline,
    ProvisionerOutputs,
    Services,
    ShowStats,
    ShowValues,
    StateDir,
    Vars,
    Verbose,
    Workspace,
)
from reconciler.cli.output import Out, check_format, fail
from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.aws.client import Aws
    from reconciler.engine.context import Context
    from reconciler.model import Plan

OutFile = Annotated[Path | None, typer.Option("--out", help="Save the plan to this file for `apply FILE`.")]
DetailedExitcode = Annotated[bool, typer.Option("--detailed-exitcode", help="Exit 0 no changes, 2 changes, 1 error.")]
Prune = Annotated[
    bool, typer.Option("--prune", help="Plan to delete functions in state that the workspace no longer defines.")
]


def plan(
    workspace: Workspace = Path("."),
    service: Services = None,
    env: Envs = None,
    infra: Infras = None,
    var: Vars = None,
    artifact: Artifact = None,
    state_dir: StateDir = None,
    format: Format = "text",
    out_file: OutFile = None,
    detailed_exitcode: DetailedExitcode = False,
    prune: Prune = False,
    parallelism: Parallelism = 10,
    stats: ShowStats = False,
    show_values: ShowValues = False,
    verbose: Verbose = False,
    debug: Debug = False,
    no_color: NoColor = False,
    pipeline: Pipeline = None,
    inputs: Inputs = None,
    provisioner_outputs: ProvisionerOutputs = None,
) -> None:
    """Refresh what is live, diff it, and print the plan. Read-only."""
    if pipeline:
        plan_pipeline(
            pipeline=pipeline,
            workspace=workspace,
            targets={"service": service, "env": env, "infra": infra},
            var=var,
            artifact=artifact,
            state_dir=state_dir,
            format=format,
            out_file=out_file,
            detailed_exitcode=detailed_exitcode,
            prune=prune,
            inputs=inputs,
            provisioner_outputs=provisioner_outputs,
            show_values=show_values,
            out=Out(verbose, no_color),
            debug=debug,
        )
        return
    if inputs:
        fail(ReconcilerError("--inputs needs --pipeline ID (an input set belongs to a pipeline)"), debug)
    out = Out(verbose, no_color)
    ctx: Context | None = None
    aws: Aws | None = None
    the_plan: Plan | None = None
    with context.provisioner_outputs(provisioner_outputs, live=True, debug=debug):
        try:
            import json

            from reconciler.cli.views import render_plan
            from reconciler.engine.planner import make_plan

            check_format(format)
            ctx = context.make_context(workspace, service, env, infra, var, artifact, state_dir, out, parallelism)
            aws = context.aws()
            the_plan = make_plan(ctx, aws, prune=prune)
            context.finish(ctx, None, False)
            context.warn_all(ctx, out)
            if out_file:
                from reconciler.store.files import write_private

                write_private(out_file, json.dumps(the_plan.to_dict(), indent=2) + "\n")
                out.log(f"Saved the plan to {out_file}; apply it with: reconciler apply {out_file}")
            out.result(render_plan(the_plan, format, show_values))
        except ReconcilerError as exc:
            context.finish(ctx, aws, stats, len(the_plan.functions) if the_plan else None)
            fail(exc, debug)
        context.finish(ctx, aws, stats, len(the_plan.functions))
        if detailed_exitcode and the_plan.has_changes:
            raise typer.Exit(2)


def plan_pipeline(
    *,
    pipeline: str,
    workspace: Path,
    targets: dict[str, list[str] | None],
    var: list[str] | None,
    artifact: str | None,
    state_dir: Path | None,
    format: str,
    out_file: Path | None,
    detailed_exitcode: bool,
    prune: bool,
    inputs: Path | None,
    provisioner_outputs: Path | None,
    show_values: bool,
    out: Out,
    debug: bool,
) -> None:
    """plan --pipeline ID: the pipeline's stages choose the targets; a saved plan whose stages
    have provisioner steps is one that only `run` may carry out. `targets`: the --service,
    --env and --infra given, refused here."""
    the_plan = None
    provisioning: list = []
    try:
        import json

        from reconciler.cli.views import render_plan
        from reconciler.pipeline.plan import pipeline_plan
        from reconciler.pipeline.provisioners import plan_text

        fmt = check_format(format)
        for opt, given in targets.items():
            if given:
                raise ReconcilerError(
                    f"--{opt} cannot be combined with --pipeline: the pipeline's stages choose the targets"
                )
        if prune:
            raise ReconcilerError("--prune cannot be combined with --pipeline")
        settings = context.run_settings(
            pipeline, workspace, var, artifact, inputs, provisioner_outputs, state_dir, show_values, 0, out
        )
        the_plan, warnings = pipeline_plan(settings, context.aws(), out.debug)
        for w in warnings:
            out.warn(w)
        provisioning = the_plan.provisioners
        saved = the_plan.to_dict()
        if out_file:
            from reconciler.store.files import write_private

            write_private(out_file, json.dumps(saved, indent=2) + "\n")
            if provisioning:
                out.log(
                    f"Saved the plan to {out_file}; its stages have provisioner steps, which only `reconciler run "
                    f"{pipeline}` runs: `apply` refuses it"
                )
            else:
                out.log(f"Saved the plan to {out_file}; apply it with: reconciler apply {out_file}")
        shown = render_plan(the_plan, fmt, show_values)
        if fmt != "json":  # (the JSON view has them as "provisioners")
            shown = plan_text(provisioning) + shown
        out.result(shown)
    except ReconcilerError as exc:
        fail(exc, debug)
    if detailed_exitcode and (the_plan.has_changes or provisioning):
        raise typer.Exit(2)
