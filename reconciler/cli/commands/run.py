"""`reconciler run PIPELINE`: execute a pipeline's stages, steps and failure strategies, and
print a summary of every step (text or JSON); exit 1 when the pipeline fails."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reconciler.cli import context
from reconciler.cli.options import (
    Artifact,
    Debug,
    Inputs,
    LockTimeout,
    NoColor,
    ProvisionerOutputs,
    ShowValues,
    StateDir,
    Vars,
    Verbose,
    Workspace,
)
from reconciler.cli.output import Out, check_format, fail
from reconciler.errors import ReconcilerError

PipelineId = Annotated[str, typer.Argument(help="The identifier of the pipeline to run.")]
RunFormat = Annotated[str, typer.Option("--format", help="text, or json: a machine summary of every step on stdout.")]
Approve = Annotated[
    list[str] | None,
    typer.Option(
        "--approve",
        help="Approve this HarnessApproval step in advance (repeatable); without it, and without a terminal to "
        "ask on, an approval step fails as rejected.",
    ),
]


def run(
    pipeline: PipelineId,
    workspace: Workspace = Path("."),
    var: Vars = None,
    artifact: Artifact = None,
    inputs: Inputs = None,
    provisioner_outputs: ProvisionerOutputs = None,
    state_dir: StateDir = None,
    format: RunFormat = "text",
    lock_timeout: LockTimeout = 0,
    approve: Approve = None,
    show_values: ShowValues = False,
    verbose: Verbose = False,
    debug: Debug = False,
    no_color: NoColor = False,
) -> None:
    """Execute a pipeline: its Deployment stages in order, their provisioner steps (environment.provisioner:
    ShellScriptProvision, CloudFormation, Terraform, Terragrunt), their steps (AwsLambdaDeploy, ShellScript,
    AwsLambdaRollback, Wait, AwsLambdaTrafficShift, HarnessApproval) and, on a failure, the failure strategy's
    rollback steps. Running the pipeline is the approval of its deploys; a HarnessApproval step asks on a
    terminal or is approved with --approve STEP_ID. Scripts get a minimal environment and every
    expression as an environment variable, never as shell text. Exit 0 when it succeeds, 1 when it
    fails, 130 on SIGTERM/SIGINT (the running script and everything it started are killed)."""
    out = Out(verbose, no_color)
    try:
        import json

        from reconciler.pipeline.runner import Runner

        check_format(format, ("text", "json"))
        settings = context.run_settings(
            pipeline, workspace, var, artifact, inputs, provisioner_outputs, state_dir, show_values, lock_timeout, out
        )
        settings.approve = tuple(approve or ())
        runner = Runner(settings, context.aws, out.log)
        status = runner.run()
        if format == "json":
            out.result(json.dumps(runner.summary(), indent=2) + "\n")
        else:
            out.result(runner.summary_text())
    except ReconcilerError as exc:
        fail(exc, debug)
    if status != "Success":
        raise typer.Exit(1)
