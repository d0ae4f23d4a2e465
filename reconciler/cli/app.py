"""The typer app: creates `reconciler` and its `state` group and registers the commands of
reconciler.cli.commands, in the order `--help` lists them; `main` is the console entry point.

The command modules import only typer and the small shared modules at import time; the engine,
boto3, botocore and moto are imported inside the commands, so that `reconciler --help` and
`--version` start fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from reconciler import __version__
from reconciler.cli.commands import (
    apply,
    demo,
    drift,
    force_unlock,
    history,
    import_,
    plan,
    refresh,
    rollback,
    run,
    state,
    validate,
)
from reconciler.cli.output import run_guarded

app = typer.Typer(
    name="reconciler",
    help="Plan and apply AWS Lambda deployments described in Harness-CD-style YAML, like Terraform does for infrastructure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
state_app = typer.Typer(help="Inspect the state: what reconciler recorded about each function.", no_args_is_help=True)
app.add_typer(state_app, name="state")


def version_callback(value: bool) -> None:
    if value:
        print(f"reconciler {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """reconciler: exact plans, safe applies and drift detection for AWS Lambda."""


app.command()(validate.validate)
app.command()(plan.plan)
app.command()(apply.apply)
app.command()(rollback.rollback)
app.command()(history.history)
app.command()(demo.demo)
app.command()(drift.drift)
app.command()(refresh.refresh)
app.command("import")(import_.import_)
app.command("force-unlock")(force_unlock.force_unlock)
app.command()(run.run)

state_app.command("list")(state.state_list)
state_app.command("show")(state.state_show)
state_app.command("rm")(state.state_rm)
state_app.command("pull")(state.state_pull)
state_app.command("push")(state.state_push)


def main() -> None:
    run_guarded(app)
