"""The command line. Thin commands; the one place that maps errors to exit codes.

Heavy imports (boto3, botocore, moto) happen inside the commands, so that
`reconciler --help` and `--version` start fast.
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from reconciler import __version__
from reconciler.errors import ErrorList, ReconcilerError

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

# ------------------------------------------------------------------ common options

Workspace = Annotated[
    Path, typer.Option("--workspace", "-w", help="Workspace directory holding the Harness YAML.", show_default=True)
]
Services = Annotated[list[str] | None, typer.Option("--service", "-s", help="Only this service (repeatable).")]
Envs = Annotated[list[str] | None, typer.Option("--env", "-e", help="Only this environment (repeatable).")]
Infras = Annotated[
    list[str] | None, typer.Option("--infra", "-i", help="Only this infrastructure definition (repeatable).")
]
Vars = Annotated[
    list[str] | None,
    typer.Option(
        "--var",
        help="Set a variable: NAME=VALUE (repeatable; highest precedence). artifact.FIELD=VALUE gives an artifact source's <+input> FIELD.",
    ),
]
Artifact = Annotated[
    str | None, typer.Option("--artifact", help="Artifact source identifier for a primaryArtifactRef of <+input>.")
]
StateDir = Annotated[
    Path | None, typer.Option("--state-dir", help="State directory [default: ./state, or RECONCILER_STATE_DIR].")
]
Format = Annotated[str, typer.Option("--format", help="Output format: text, json or markdown.")]
NoColor = Annotated[bool, typer.Option("--no-color", help="No colours (also NO_COLOR).")]
ShowValues = Annotated[
    bool,
    typer.Option(
        "--show-values",
        help="Show the values of sensitive environment variables (by name, or all with secrets.mask_all) instead of masking them; values from secrets are never shown.",
    ),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log each step on stderr.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]
LockTimeout = Annotated[
    float, typer.Option("--lock-timeout", help="Seconds to wait for the state lock (default: fail at once).")
]
Parallelism = Annotated[
    int,
    typer.Option(
        "--parallelism", min=1, help="How many functions are read or changed at once (as Terraform's -parallelism)."
    ),
]
ShowStats = Annotated[
    bool,
    typer.Option(
        "--stats",
        help="Print API calls by operation, Lambda requests by quota class (throttles, time waiting for capacity, the floor they imply), wall time per phase and peak memory on stderr.",
    ),
]


class Out:
    """stdout for results and machine output; stderr for logs, progress and errors."""

    def __init__(self, verbose: bool = False, no_color: bool = False):
        self.verbose = verbose
        self.color = not (no_color or os.environ.get("NO_COLOR")) and sys.stderr.isatty()

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def debug(self, msg: str) -> None:
        if self.verbose:
            self.log(msg)

    def warn(self, msg: str) -> None:
        self.log(f"warning: {msg}")

    def result(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()


def confirm(out: Out, command: str, question: str, other_way: str = "") -> None:
    """Ask on a terminal, refuse without one; anything but 'yes' cancels (exit 1)."""
    if not sys.stdin.isatty():
        raise ReconcilerError(f"{command} needs confirmation: run it on a terminal or pass --auto-approve{other_way}")
    if input(f"\n{question} Only 'yes' will be accepted: ").strip() != "yes":
        out.log(f"{command.capitalize()} cancelled.")
        raise typer.Exit(1)


def _fail(exc: BaseException, debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exception(exc)
    if isinstance(exc, ErrorList):
        for e in exc.errors:
            print(f"error: {e}", file=sys.stderr)
    else:
        print(f"error: {exc}", file=sys.stderr)
    raise typer.Exit(1)


def _context(workspace: Path, service, env, infra, var, artifact, state_dir, out: Out, parallelism: int = 10):
    from reconciler.engine.refresh import Context
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


def _finish(ctx, aws, show_stats: bool, functions: int | None = None) -> None:
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


def _check_format(fmt: str, allowed=("text", "json", "markdown")) -> str:
    if fmt not in allowed:
        from reconciler.errors import ReconcilerError as RE

        raise RE(f"--format must be one of {', '.join(allowed)}, not '{fmt}'")
    return fmt


def _aws():
    from reconciler.aws.client import Aws

    return Aws()


def _warn_all(ctx, out: Out) -> None:
    for w in ctx.warnings:
        out.warn(w)


# ------------------------------------------------------------------ commands


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


@app.command()
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
) -> None:
    """Load, render and check everything. Makes no AWS call."""
    out = Out(verbose, no_color)
    try:
        from reconciler.engine.refresh import load_and_render

        ctx = _context(workspace, service, env, infra, var, artifact, state_dir, out)
        ws, rendered = load_and_render(ctx)
        _warn_all(ctx, out)
        for f in rendered.functions:
            out.result(
                f"ok  {f.name}  [{f.service} → {f.environment}/{f.infrastructure}, {f.region}] from {f.source}\n"
            )
        out.result(_skipped_report(ws))
        out.result(f"Valid: {len(rendered.functions)} function(s).\n")
    except ReconcilerError as exc:
        _fail(exc, debug)


def _skipped_report(ws) -> str:
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


@app.command()
def plan(
    workspace: Workspace = Path("."),
    service: Services = None,
    env: Envs = None,
    infra: Infras = None,
    var: Vars = None,
    artifact: Artifact = None,
    state_dir: StateDir = None,
    format: Format = "text",
    out_file: Annotated[Path | None, typer.Option("--out", help="Save the plan to this file for `apply FILE`.")] = None,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 0 no changes, 2 changes, 1 error.")
    ] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Plan to delete functions in state that the workspace no longer defines.")
    ] = False,
    parallelism: Parallelism = 10,
    stats: ShowStats = False,
    show_values: ShowValues = False,
    verbose: Verbose = False,
    debug: Debug = False,
    no_color: NoColor = False,
) -> None:
    """Refresh what is live, diff it, and print the plan. Read-only."""
    out = Out(verbose, no_color)
    ctx = aws = the_plan = None
    try:
        import json

        from reconciler.cli.views import render_plan
        from reconciler.engine.refresh import make_plan

        _check_format(format)
        ctx = _context(workspace, service, env, infra, var, artifact, state_dir, out, parallelism)
        aws = _aws()
        the_plan = make_plan(ctx, aws, prune=prune)
        _finish(ctx, None, False)
        _warn_all(ctx, out)
        if out_file:
            from reconciler.store.backend import write_private

            write_private(out_file, json.dumps(the_plan.to_dict(), indent=2) + "\n")
            out.log(f"Saved the plan to {out_file}; apply it with: reconciler apply {out_file}")
        out.result(render_plan(the_plan, format, show_values))
    except ReconcilerError as exc:
        _finish(ctx, aws, stats, len(the_plan.functions) if the_plan else None)
        _fail(exc, debug)
    _finish(ctx, aws, stats, len(the_plan.functions))
    if detailed_exitcode and the_plan.has_changes:
        raise typer.Exit(2)


@app.command()
def apply(
    planfile: Annotated[
        Path | None, typer.Argument(help="A plan saved with `plan --out`; applied exactly, or refused if stale.")
    ] = None,
    workspace: Workspace = Path("."),
    service: Services = None,
    env: Envs = None,
    infra: Infras = None,
    var: Vars = None,
    artifact: Artifact = None,
    state_dir: StateDir = None,
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Apply without asking.")] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Delete functions in state that the workspace no longer defines.")
    ] = False,
    no_rollback: Annotated[
        bool, typer.Option("--no-rollback", help="On failure, leave things as they are for inspection.")
    ] = False,
    abort_rollout: Annotated[
        bool,
        typer.Option(
            "--abort-rollout",
            help="Instead of applying: put each selected function whose rollout was interrupted back on the version it "
            "ran before (its alias 100% on the old version, code and configuration restored).",
        ),
    ] = False,
    lock_timeout: LockTimeout = 0,
    parallelism: Parallelism = 10,
    stats: ShowStats = False,
    show_values: ShowValues = False,
    verbose: Verbose = False,
    debug: Debug = False,
    no_color: NoColor = False,
) -> None:
    """Create or update functions, publish a version, move aliases, and record the result."""
    out = Out(verbose, no_color)
    ctx = aws = the_plan = None
    try:
        import json

        from reconciler.cli.views import render_text
        from reconciler.engine.apply import apply_plan
        from reconciler.engine.refresh import make_plan
        from reconciler.model import PLAN_FORMAT_VERSION, Plan

        ctx = _context(workspace, service, env, infra, var, artifact, state_dir, out, parallelism)
        aws = _aws()
        if abort_rollout:
            if planfile is not None:
                raise ReconcilerError("--abort-rollout applies no plan: give it without PLANFILE")
            _abort_rollouts(ctx, aws, out, auto_approve, lock_timeout)
            return
        # the locks of the state files the plan reads are taken before it reads them and
        # held until the apply is over (through the confirmation, as Terraform does)
        with ExitStack() as hold:
            if planfile is not None:
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
                saved = True
            else:
                the_plan = make_plan(ctx, aws, prune=prune, hold=hold, lock_timeout=lock_timeout)
                _finish(ctx, None, False)
                _warn_all(ctx, out)
                saved = False
                out.result(render_text(the_plan, show_values))
                if not the_plan.has_changes:
                    hold.close()
                    _finish(ctx, aws, stats, len(the_plan.functions))
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
        _finish(ctx, aws, stats, len(the_plan.functions) if the_plan else None)
        _fail(exc, debug)
    _finish(ctx, aws, stats, len(the_plan.functions))


def _abort_rollouts(ctx, aws, out: Out, auto_approve: bool, lock_timeout: float) -> None:
    from reconciler.engine.rollback import execute, prepare

    steps = prepare(ctx, aws, rollouts_only=True)
    for s in steps:
        out.result(s.describe() + "\n")
    if not auto_approve:
        confirm(out, "apply --abort-rollout", "Abort these rollouts?")
    execute(ctx, aws, steps, out.log, lock_timeout=lock_timeout)
    out.result(f"\nRollout aborted: {len(steps)} function(s) back on the version they ran before.\n")


@app.command()
def rollback(
    workspace: Workspace = Path("."),
    service: Services = None,
    env: Envs = None,
    infra: Infras = None,
    state_dir: StateDir = None,
    to_version: Annotated[
        str | None,
        typer.Option("--to-version", help="Roll back to this published version instead of the previous deployment."),
    ] = None,
    function: Annotated[
        list[str] | None, typer.Option("--function", "-f", help="Only this function (repeatable).")
    ] = None,
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Roll back without asking.")] = False,
    lock_timeout: LockTimeout = 0,
    verbose: Verbose = False,
    debug: Debug = False,
    no_color: NoColor = False,
) -> None:
    """Restore the previous successful deployment recorded in state (aliases, $LATEST code and configuration)."""
    out = Out(verbose, no_color)
    try:
        from reconciler.engine.rollback import execute, prepare

        ctx = _context(workspace, service, env, infra, None, None, state_dir, out)
        steps = prepare(ctx, _aws(), to_version=to_version, functions=list(function or []))
        for s in steps:
            out.result(s.describe() + "\n")
        if not auto_approve:
            confirm(out, "rollback", "Roll back?")
        execute(ctx, _aws(), steps, out.log, lock_timeout=lock_timeout)
        out.result(f"\nRollback complete: {len(steps)} function(s).\n")
    except ReconcilerError as exc:
        _fail(exc, debug)


@app.command()
def history(
    workspace: Workspace = Path("."),
    state_dir: StateDir = None,
    env: Envs = None,
    infra: Infras = None,
    function: Annotated[
        list[str] | None, typer.Option("--function", "-f", help="Only this function (repeatable).")
    ] = None,
    format: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
    debug: Debug = False,
) -> None:
    """The deployments recorded in state: time, version, code SHA-256, outcome; and what pipeline
    stages' provisioner steps provisioned (outputs, stacks), under the table."""
    out = Out()
    try:
        import json

        _check_format(format, ("text", "json"))
        ctx = _context(workspace, None, env, infra, None, None, state_dir, out)
        rows = []
        from reconciler.store import state as st

        unreadable: list[ReconcilerError] = []  # damaged states: reported after the others' history
        for s in st.readable_states(ctx.state_dir, unreadable, env or (), infra or ()):
            for h in s.history:
                if function and h.get("function") not in function:
                    continue
                rows.append(
                    {
                        "time": h.get("started_at"),
                        "environment": s.environment,
                        "infrastructure": s.infrastructure,
                        "function": h.get("function"),
                        "operation": h.get("operation"),
                        "version": h.get("version"),
                        "code_sha256": h.get("code_sha256"),
                        "status": h.get("status"),
                        "id": h.get("id"),
                        "error": h.get("error"),
                        **(
                            {k: h.get(k) for k in ("pipeline", "stage", "region", "outputs", "provisioned")}
                            if h.get("operation") == "provision"
                            else {}
                        ),
                    }
                )
        rows.sort(key=lambda r: r["time"] or "")
        if format == "json":
            out.result(json.dumps(rows, indent=2) + "\n")
        elif not rows:
            out.result("No deployments recorded.\n")
        else:
            out.result(
                _table(
                    ["time", "function", "target", "operation", "version", "code_sha256", "status"],
                    [
                        [
                            r["time"],
                            r["function"] or "-",
                            f"{r['environment']}/{r['infrastructure']}",
                            r["operation"],
                            r["version"] or "-",
                            r["code_sha256"] or "-",
                            r["status"],
                        ]
                        for r in rows
                    ],
                )
            )
            from reconciler.pipeline.provisioners import history_lines

            out.result(history_lines(rows))
        if unreadable:
            raise unreadable[0] if len(unreadable) == 1 else ErrorList(unreadable)
    except ReconcilerError as exc:
        _fail(exc, debug)


def _table(headers: list[str], rows: list[list]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=False)).rstrip() for r in [headers, *rows]]
    return "\n".join(lines) + "\n"


@state_app.command("list")
def state_list(state_dir: StateDir = None, debug: Debug = False) -> None:
    """One line per function recorded: environment/infrastructure, function, service, version."""
    out = Out()
    try:
        from reconciler.store import state as st

        ctx = _context(Path("."), None, None, None, None, None, state_dir, out)
        rows = []
        for s in st.all_states(ctx.state_dir):
            for name, f in sorted(s.functions.items()):
                rows.append(
                    [
                        f"{s.environment}/{s.infrastructure}",
                        name,
                        f.get("service", ""),
                        f.get("version") or "-",
                        f.get("code_sha256") or "-",
                    ]
                )
        if not rows:
            out.result(f"No functions recorded in {ctx.state_dir}.\n")
            return
        out.result(_table(["target", "function", "service", "version", "code_sha256"], rows))
    except ReconcilerError as exc:
        _fail(exc, debug)


@state_app.command("show")
def state_show(
    name: Annotated[str, typer.Argument(help="Function name.")],
    state_dir: StateDir = None,
    env: Envs = None,
    infra: Infras = None,
    format: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
    show_values: ShowValues = False,
    debug: Debug = False,
) -> None:
    """Everything recorded about one function."""
    out = Out()
    try:
        import json

        from reconciler.store import state as st

        _check_format(format, ("text", "json"))
        ctx = _context(Path("."), None, env, infra, None, None, state_dir, out)
        found = [
            (s, s.functions[name])
            for s in st.all_states(ctx.state_dir)
            if name in s.functions and (not env or s.environment in env) and (not infra or s.infrastructure in infra)
        ]
        if not found:
            known = sorted({n for s in st.all_states(ctx.state_dir) for n in s.functions})
            from reconciler.errors import did_you_mean

            raise ReconcilerError(
                f"no function '{name}' in the state ({ctx.state_dir})", hint=did_you_mean(name, known)
            )
        docs = []
        for s, f in found:
            f = json.loads(json.dumps(f))
            env_vars = (f.get("configuration", {}).get("Environment") or {}).get("Variables")
            if isinstance(env_vars, dict):
                from reconciler.util.secrets import mask_vars

                f["configuration"]["Environment"]["Variables"] = mask_vars(env_vars, show_values)
            docs.append(
                {
                    "function": name,
                    "environment": s.environment,
                    "infrastructure": s.infrastructure,
                    "state_file": str(s.path),
                    **f,
                }
            )
        if format == "json":
            out.result(json.dumps(docs if len(docs) > 1 else docs[0], indent=2) + "\n")
            return
        for d in docs:
            for k, v in d.items():
                out.result(f"{k}: {json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v}\n")
            out.result("\n" if len(docs) > 1 else "")
    except ReconcilerError as exc:
        _fail(exc, debug)


@app.command()
def demo(
    keep: Annotated[
        Path | None, typer.Option("--keep", help="Keep the demo workspace and state in this directory.")
    ] = None,
    debug: Debug = False,
) -> None:
    """The whole story on an embedded AWS emulator (moto): plan, apply, a code change, drift, rollback. No AWS account needed."""
    try:
        from reconciler.cli.demo import run_demo

        raise typer.Exit(run_demo(keep))
    except ReconcilerError as exc:
        _fail(exc, debug)


def _terminated(signum, frame) -> None:
    # a cancelled CI job sends SIGTERM: treat it as Ctrl-C, so a running apply rolls back
    raise KeyboardInterrupt


def main() -> None:
    import signal

    from reconciler.util.secrets import guard_output

    signal.signal(signal.SIGTERM, _terminated)
    # a known secret value never reaches stdout or stderr, whatever prints it
    guard_output(show_sensitive="--show-values" in sys.argv[1:])
    try:
        app()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a bug: one line, the traceback only with --debug
        if "--debug" in sys.argv:
            raise
        print(
            f"error: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr
        )
        sys.exit(1)


# drift, refresh, import, state rm, force-unlock
# run, plan --pipeline, --provisioner-outputs
from reconciler.cli import (
    ops,  # noqa: E402,F401  (registers its commands on `app`)
    run,  # noqa: E402,F401  (registers `run` and the pipeline options on `app`)
    state,  # noqa: E402,F401  (state pull / push, on `state_app`)
)
