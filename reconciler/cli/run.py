"""`reconciler run PIPELINE`, and the pipeline options of the other commands:
`plan --pipeline ID [--inputs FILE]`, `--provisioner-outputs FILE` on validate, plan,
apply and import, and validate's check of every pipeline's steps. Registered on the app
of cli.py (the options are added to the commands already registered there)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from reconciler.cli.app import (
    Artifact,
    Debug,
    LockTimeout,
    NoColor,
    Out,
    ShowValues,
    StateDir,
    Vars,
    Verbose,
    Workspace,
    _aws,
    _check_format,
    _context,
    _fail,
    app,
)
from reconciler.errors import ReconcilerError

Inputs = Annotated[
    Path | None, typer.Option("--inputs", help="A Harness input set (YAML) giving the pipeline's <+input> values.")
]
ProvisionerOutputs = Annotated[
    Path | None,
    typer.Option(
        "--provisioner-outputs",
        help="Provisioner outputs for <+provisioner.NAME>: `terraform output -json` or a flat JSON map.",
    ),
]
PipelineOpt = Annotated[
    str | None,
    typer.Option("--pipeline", help="Plan what this pipeline's stages would change (its targets and inputs only)."),
]


@app.command()
def run(
    pipeline: Annotated[str, typer.Argument(help="The identifier of the pipeline to run.")],
    workspace: Workspace = Path("."),
    var: Vars = None,
    artifact: Artifact = None,
    inputs: Inputs = None,
    provisioner_outputs: ProvisionerOutputs = None,
    state_dir: StateDir = None,
    format: Annotated[
        str, typer.Option("--format", help="text, or json: a machine summary of every step on stdout.")
    ] = "text",
    lock_timeout: LockTimeout = 0,
    show_values: ShowValues = False,
    verbose: Verbose = False,
    debug: Debug = False,
    no_color: NoColor = False,
) -> None:
    """Execute a pipeline: its Deployment stages in order, their provisioner steps (environment.provisioner:
    ShellScriptProvision, CloudFormation, Terraform, Terragrunt), their steps (AwsLambdaDeploy, ShellScript,
    AwsLambdaRollback, Wait) and, on a failure, the failure strategy's rollback steps. Running the pipeline
    is the approval: its deploys are not asked for. Scripts get a minimal environment and every
    expression as an environment variable, never as shell text. Exit 0 when it succeeds, 1 when it
    fails, 130 on SIGTERM/SIGINT (the running script and everything it started are killed)."""
    out = Out(verbose, no_color)
    try:
        import json

        from reconciler.pipeline.runner import Runner

        _check_format(format, ("text", "json"))
        settings = _settings(
            pipeline, workspace, var, artifact, inputs, provisioner_outputs, state_dir, show_values, lock_timeout, out
        )
        runner = Runner(settings, _aws, out.log)
        status = runner.run()
        if format == "json":
            out.result(json.dumps(runner.summary(), indent=2) + "\n")
        else:
            out.result(runner.summary_text())
    except ReconcilerError as exc:
        _fail(exc, debug)
    if status != "Success":
        raise typer.Exit(1)


def _settings(
    pipeline, workspace, var, artifact, inputs, provisioner_outputs, state_dir, show_values, lock_timeout, out
):
    from reconciler.pipeline.model import RunSettings

    ctx = _context(workspace, None, None, None, var, artifact, state_dir, out)
    return RunSettings(
        workspace=Path(workspace),
        state_dir=ctx.state_dir,
        pipeline=pipeline,
        variables=ctx.options.variables,
        artifact=artifact,
        inputs_file=inputs,
        provisioner=_provisioner_settings(provisioner_outputs, live=True),
        show_values=show_values,
        lock_timeout=lock_timeout,
    )


def _provisioner_settings(path: Path | None, live: bool) -> dict:
    from reconciler.workspace.provision import load_outputs_file

    if path is None:
        return {"outputs": None, "source": None, "live": live}
    return {"outputs": load_outputs_file(Path(path)), "source": str(path), "live": live}


# ---------------------------------------------------------------- options added to cli.py's commands


def _extend(name: str, extra: dict[str, tuple[Any, Any]], hook: Callable[[Callable, dict, dict], Any]) -> None:
    """Add keyword options to an already registered command: `hook(original, kwargs, extras)` runs it."""
    info = next(c for c in app.registered_commands if (c.name or c.callback.__name__) == name)
    original = info.callback
    sig = inspect.signature(original, eval_str=True)
    params = list(sig.parameters.values())
    params += [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a) for n, (a, d) in extra.items()
    ]

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        extras = {n: kwargs.pop(n, d) for n, (_, d) in extra.items()}
        return hook(original, kwargs, extras)

    wrapper.__signature__ = sig.replace(parameters=params)
    info.callback = wrapper


def _with_provisioner(live: bool, check_pipelines: bool = False):
    def hook(original: Callable, kwargs: dict, extras: dict) -> Any:
        from reconciler.workspace import provision

        try:
            settings = _provisioner_settings(extras.get("provisioner_outputs"), live)
            if check_pipelines:
                _check_pipelines(kwargs)
        except ReconcilerError as exc:
            _fail(exc, kwargs.get("debug", False))
        if kwargs.get("planfile") is not None:  # apply PLANFILE
            _refuse_provisioned_plan(kwargs)
        before = provision.configure(**settings)
        try:
            return original(**kwargs)
        finally:
            provision.restore_defaults(before)

    return hook


def _refuse_provisioned_plan(kwargs: dict) -> None:
    """A saved `plan --pipeline` whose stages have provisioner steps: only `run` runs them."""
    import json

    from reconciler.pipeline.provisioners import refuse_saved_plan

    planfile = Path(kwargs["planfile"])
    try:
        data = json.loads(planfile.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # apply reports it
    try:
        refuse_saved_plan(data, str(planfile))
    except ReconcilerError as exc:
        _fail(exc, kwargs.get("debug", False))


def _check_pipelines(kwargs: dict) -> None:
    """validate: every pipeline's stages and steps (types, timeouts, when, failure strategies),
    and the shape of every infrastructure provisioner. Still no AWS call."""
    from reconciler.errors import ErrorList
    from reconciler.pipeline.checks import check_workspace
    from reconciler.workspace.load import load_workspace

    out = Out()
    ctx = _context(kwargs.get("workspace", Path(".")), None, None, None, None, None, kwargs.get("state_dir"), out)
    try:
        ws = load_workspace(ctx.workspace, ctx.state_dir)
    except ReconcilerError:
        return  # the command itself reports it
    errors = check_workspace(ws)
    if errors:
        raise errors[0] if len(errors) == 1 else ErrorList(errors)


def _plan_hook(original: Callable, kwargs: dict, extras: dict) -> Any:
    if not extras.get("pipeline"):
        if extras.get("inputs"):
            _fail(
                ReconcilerError("--inputs needs --pipeline ID (an input set belongs to a pipeline)"),
                kwargs.get("debug", False),
            )
        return _with_provisioner(True)(original, kwargs, extras)
    return _plan_pipeline(kwargs, extras)


def _plan_pipeline(kw: dict, extras: dict) -> None:
    out = Out(kw.get("verbose", False), kw.get("no_color", False))
    debug = kw.get("debug", False)
    the_plan = None
    try:
        import json

        from reconciler.cli.views import render_plan
        from reconciler.pipeline.plan import pipeline_plan

        fmt = _check_format(kw.get("format", "text"))
        for opt in ("service", "env", "infra"):
            if kw.get(opt):
                raise ReconcilerError(
                    f"--{opt} cannot be combined with --pipeline: the pipeline's stages choose the targets"
                )
        if kw.get("prune"):
            raise ReconcilerError("--prune cannot be combined with --pipeline")
        settings = _settings(
            extras["pipeline"],
            kw.get("workspace", Path(".")),
            kw.get("var"),
            kw.get("artifact"),
            extras.get("inputs"),
            extras.get("provisioner_outputs"),
            kw.get("state_dir"),
            kw.get("show_values", False),
            0,
            out,
        )
        the_plan, warnings = pipeline_plan(settings, _aws(), out.debug)
        for w in warnings:
            out.warn(w)
        from reconciler.pipeline.provisioners import plan_text

        provisioning = the_plan.provisioners
        saved = the_plan.to_dict()
        out_file = kw.get("out_file")
        if out_file:
            from reconciler.store.backend import write_private

            write_private(out_file, json.dumps(saved, indent=2) + "\n")
            if provisioning:
                out.log(
                    f"Saved the plan to {out_file}; its stages have provisioner steps, which only `reconciler run "
                    f"{extras['pipeline']}` runs: `apply` refuses it"
                )
            else:
                out.log(f"Saved the plan to {out_file}; apply it with: reconciler apply {out_file}")
        shown = render_plan(the_plan, fmt, kw.get("show_values", False))
        if fmt != "json":  # (the JSON view has them as "provisioners")
            shown = plan_text(provisioning) + shown
        out.result(shown)
    except ReconcilerError as exc:
        _fail(exc, debug)
    if kw.get("detailed_exitcode") and the_plan is not None and (the_plan.has_changes or the_plan.provisioners):
        raise typer.Exit(2)


_extend(
    "validate", {"provisioner_outputs": (ProvisionerOutputs, None)}, _with_provisioner(live=False, check_pipelines=True)
)
_extend(
    "plan",
    {"pipeline": (PipelineOpt, None), "inputs": (Inputs, None), "provisioner_outputs": (ProvisionerOutputs, None)},
    _plan_hook,
)
_extend("apply", {"provisioner_outputs": (ProvisionerOutputs, None)}, _with_provisioner(live=True))
_extend("import", {"provisioner_outputs": (ProvisionerOutputs, None)}, _with_provisioner(live=True))

__all__ = ["run"]
