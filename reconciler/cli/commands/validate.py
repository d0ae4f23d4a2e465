"""`reconciler validate`: load, render and check the workspace (every pipeline's stages and
steps, every infrastructure's provisioner shape) without an AWS call."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.cli import context
from reconciler.cli.options import (
    Artifact,
    Debug,
    Envs,
    Infras,
    NoColor,
    ProvisionerOutputs,
    Services,
    StateDir,
    Vars,
    Verbose,
    Workspace,
)
from reconciler.cli.output import Out, fail
from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.workspace.load import Workspace as LoadedWorkspace


def validate(
    workspace: Workspace = Path("."),
    service: Services = None,
    env: Envs = None,
    infra: Infras = None,
    var: Vars = None,
    artifact: Artifact = None,
    state_dir: StateDir = None,
    verbose: Verbose = False,
    debug: Debug = False,
    no_color: NoColor = False,
    provisioner_outputs: ProvisionerOutputs = None,
) -> None:
    """Load, render and check everything. Makes no AWS call."""
    out = Out(verbose, no_color)
    with context.provisioner_outputs(provisioner_outputs, live=False, debug=debug):
        try:
            from reconciler.engine.context import load_and_render

            check_pipelines(workspace, state_dir)
            ctx = context.make_context(workspace, service, env, infra, var, artifact, state_dir, out)
            ws, rendered = load_and_render(ctx)
            context.warn_all(ctx, out)
            for f in rendered.functions:
                out.result(
                    f"ok  {f.name}  [{f.service} → {f.environment}/{f.infrastructure}, {f.region}] from {f.source}\n"
                )
            out.result(skipped_report(ws))
            out.result(f"Valid: {len(rendered.functions)} function(s).\n")
        except ReconcilerError as exc:
            fail(exc, debug)


def check_pipelines(workspace: Path, state_dir: Path | None) -> None:
    """Every pipeline's stages and steps (types, timeouts, when, failure strategies), and the
    shape of every infrastructure provisioner. Still no AWS call. A workspace that does not
    load is left to the render that follows, which reports it."""
    from reconciler.errors import ErrorList
    from reconciler.pipeline.checks import check_workspace
    from reconciler.workspace.load import load_workspace

    ctx = context.make_context(workspace, None, None, None, None, None, state_dir, Out())
    try:
        ws = load_workspace(ctx.workspace, ctx.state_dir)
    except ReconcilerError:
        return
    errors: list[ReconcilerError] = [*check_workspace(ws)]
    if errors:
        raise errors[0] if len(errors) == 1 else ErrorList(errors)


def skipped_report(ws: LoadedWorkspace) -> str:
    """What validate read but does not deploy, and why: a misspelt kind stays visible."""
    from reconciler.workspace.load import skipped_stages

    lines = [f"skipped  {file}:{line or 1}  {why}\n" for file, line, why in ws.skipped + skipped_stages(ws)]
    files = len({file for file, _, _ in ws.skipped})
    if files or ws.other_files:
        lines.append(
            f"Skipped: {files} YAML file(s) with documents reconciler does not deploy (listed above), "
            f"{ws.other_files} YAML file(s) with no Harness entity.\n"
        )
    return "".join(lines)
