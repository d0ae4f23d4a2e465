"""`reconciler import [NAME...]`: adopt functions that already exist in Lambda into the state,
changing nothing in AWS. (`import_`: `import` is a Python keyword.)"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reconciler.cli import context
from reconciler.cli.options import (
    Artifact,
    Debug,
    Envs,
    Infras,
    LockTimeout,
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

Names = Annotated[
    list[str] | None, typer.Argument(help="Function names to adopt (default: every selected target's function).")
]


def import_(
    names: Names = None,
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
    provisioner_outputs: ProvisionerOutputs = None,
) -> None:
    """Adopt functions that already exist in Lambda into the state, changing nothing in AWS."""
    out = Out(verbose, no_color)
    with context.provisioner_outputs(provisioner_outputs, live=True, debug=debug):
        try:
            from reconciler.engine.adopt import import_functions

            ctx = context.make_context(workspace, service, env, infra, var, artifact, state_dir, out)
            done = import_functions(ctx, context.aws(), list(names or []), out.log, lock_timeout=lock_timeout)
            context.warn_all(ctx, out)
            out.result(f"Import complete: {len(done)} function(s) adopted{': ' + ', '.join(done) if done else ''}.\n")
        except ReconcilerError as exc:
            fail(exc, debug)
