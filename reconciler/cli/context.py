"""From the options the commands share to what the engine and the pipeline runner take: the
engine `Context` (variables from --var, the state directory, the target filters, progress on
stderr), the state backend read from reconciler.yaml, the AWS session, the provisioner outputs of
--provisioner-outputs, a pipeline run's `RunSettings`; and the end of a command's progress
display with its --stats report.

Imports `reconciler.cli.output`, `reconciler.errors` and, inside the functions (start-up speed), the engine, the
store, the workspace and the pipeline runner; never a command.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.cli.output import Out, fail
from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.aws.client import Aws
    from reconciler.engine.context import Context
    from reconciler.pipeline.model import RunSettings


def make_context(
    workspace: Path,
    service: Sequence[str] | None,
    env: Sequence[str] | None,
    infra: Sequence[str] | None,
    var: Sequence[str] | None,
    artifact: str | None,
    state_dir: Path | None,
    out: Out,
    parallelism: int = 10,
) -> Context:
    """The engine's Context for these options; makes the workspace's state backend current and
    reads its rollout rules (reconciler.yaml)."""
    from reconciler.engine.context import Context
    from reconciler.errors import ConfigError
    from reconciler.store.state import state_dir_default
    from reconciler.util.stats import Progress
    from reconciler.workspace.render import Options

    variables = {}
    for item in var or []:
        if "=" not in item:
            raise ConfigError(f"--var '{item}' is not NAME=VALUE")
        k, v = item.split("=", 1)
        variables[k.strip()] = v
    sd = Path(state_dir) if state_dir else state_dir_default()
    if not sd.is_absolute():
        sd = Path.cwd() / sd
    from reconciler.store.backend import configure  # the state backend: reconciler.yaml, RECONCILER_BACKEND_*

    configure(workspace)
    from reconciler.engine.rollout import read_rules
    from reconciler.util.settings import config_document

    rules = read_rules(config_document(workspace))
    opts = Options(
        services=list(service or []),
        environments=list(env or []),
        infrastructures=list(infra or []),
        variables=variables,
        artifact=artifact,
    )
    return Context(
        workspace=workspace,
        state_dir=sd,
        options=opts,
        log=out.debug,
        parallelism=parallelism,
        progress=Progress(out.verbose, color=out.color),
        rollout_rules=rules,
    )


def aws() -> Aws:
    from reconciler.aws.client import Aws

    return Aws()


def finish(ctx: Context | None, aws: Aws | None, show_stats: bool, functions: int | None = None) -> None:
    """End the progress display; with --stats, the table and the `stats: {json}` line on stderr."""
    if ctx is None:
        return
    close = getattr(ctx.progress, "close", None)
    if close:
        close()
    if show_stats:
        quotas = aws.quota.to_dict() if aws is not None else None
        sys.stderr.write(ctx.stats.render(dict(aws.calls) if aws is not None else {}, functions, quotas))
        sys.stderr.flush()


def warn_all(ctx: Context, out: Out) -> None:
    for w in ctx.warnings:
        out.warn(w)


def provisioner_settings(path: Path | None, live: bool) -> dict[str, Any]:
    """--provisioner-outputs FILE, read (an error names the file). `live`: an infrastructure's
    provisioner is asked for its outputs (plan, apply, import, run); validate defers them."""
    from reconciler.workspace.provision import load_outputs_file

    if path is None:
        return {"outputs": None, "source": None, "live": live}
    return {"outputs": load_outputs_file(Path(path)), "source": str(path), "live": live}


@contextmanager
def provisioner_outputs(path: Path | None, live: bool, debug: bool) -> Iterator[None]:
    """--provisioner-outputs FILE in force for the renders of the command inside (validate,
    plan, apply, import); a file that does not read is the command's error (exit 1)."""
    from reconciler.workspace import provision

    try:
        settings = provisioner_settings(path, live)
    except ReconcilerError as exc:
        fail(exc, debug)
    before = provision.configure(**settings)
    try:
        yield
    finally:
        provision.restore_defaults(before)


def run_settings(
    pipeline: str,
    workspace: Path,
    var: Sequence[str] | None,
    artifact: str | None,
    inputs: Path | None,
    provisioner_outputs: Path | None,
    state_dir: Path | None,
    show_values: bool,
    lock_timeout: float,
    out: Out,
) -> RunSettings:
    """What `run PIPELINE` and `plan --pipeline` hand the pipeline runner."""
    from reconciler.pipeline.model import RunSettings

    ctx = make_context(workspace, None, None, None, var, artifact, state_dir, out)
    return RunSettings(
        workspace=Path(workspace),
        state_dir=ctx.state_dir,
        pipeline=pipeline,
        variables=ctx.options.variables,
        artifact=artifact,
        inputs_file=inputs,
        provisioner=provisioner_settings(provisioner_outputs, live=True),
        show_values=show_values,
        lock_timeout=lock_timeout,
        rollout_rules=list(ctx.rollout_rules),
    )
