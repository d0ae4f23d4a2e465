"""`reconciler state ...`: what reconciler recorded about each function. `list` and `show`
read it; `rm` forgets functions without touching AWS; `pull` and `push` move state between
the configured backend and local files (a local state directory migrates to S3 in one push).
Registered on the `state` group of reconciler.cli.app."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from reconciler.cli import context
from reconciler.cli.options import (
    BackendConfig,
    Debug,
    Envs,
    Infras,
    LockTimeout,
    ShowValues,
    StateDir,
    TextOrJson,
    Workspace,
)
from reconciler.cli.output import Out, check_format, fail, table
from reconciler.errors import ConfigError, ReconcilerError

if TYPE_CHECKING:
    from reconciler.engine.context import Context
    from reconciler.store.base import Backend

FunctionName = Annotated[str, typer.Argument(help="Function name.")]
FunctionNames = Annotated[list[str], typer.Argument(help="Function names to forget.")]
PullOut = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Write <DIR>/<environment>/<infrastructure>.json for every selected state instead of printing one.",
    ),
]
PushFiles = Annotated[
    list[Path],
    typer.Argument(
        help="State files to push; a directory pushes every <environment>/<infrastructure>.json below it (migration)."
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Push even if the lineage differs or the serial is not higher.")]


def _not_in_state(name: str, state_dir: Path) -> ReconcilerError:
    """No function of this name in any state: the error, with the nearest recorded name."""
    from reconciler.errors import did_you_mean
    from reconciler.store import state as st

    known = sorted({n for s in st.all_states(state_dir) for n in s.functions})
    return ReconcilerError(f"no function '{name}' in the state ({state_dir})", hint=did_you_mean(name, known))


def state_list(state_dir: StateDir = None, debug: Debug = False) -> None:
    """One line per function recorded: environment/infrastructure, function, service, version."""
    out = Out()
    try:
        from reconciler.store import state as st

        ctx = context.make_context(Path("."), None, None, None, None, None, state_dir, out)
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
        out.result(table(["target", "function", "service", "version", "code_sha256"], rows))
    except ReconcilerError as exc:
        fail(exc, debug)


def state_show(
    name: FunctionName,
    state_dir: StateDir = None,
    env: Envs = None,
    infra: Infras = None,
    format: TextOrJson = "text",
    show_values: ShowValues = False,
    debug: Debug = False,
) -> None:
    """Everything recorded about one function."""
    out = Out()
    try:
        import json

        from reconciler.store import state as st

        check_format(format, ("text", "json"))
        ctx = context.make_context(Path("."), None, env, infra, None, None, state_dir, out)
        found = [
            (s, s.functions[name])
            for s in st.all_states(ctx.state_dir)
            if name in s.functions and (not env or s.environment in env) and (not infra or s.infrastructure in infra)
        ]
        if not found:
            raise _not_in_state(name, ctx.state_dir)
        from reconciler.util.secrets import mask_places

        docs: list[dict[str, Any]] = []
        for s, f in found:
            f = json.loads(json.dumps(f))
            env_vars = (f.get("configuration", {}).get("Environment") or {}).get("Variables")
            if isinstance(env_vars, dict):
                from reconciler.util.secrets import mask_vars

                f["configuration"]["Environment"]["Variables"] = mask_vars(env_vars, show_values)
            f = mask_places(f)  # a description, a tag... that uses a secret
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
        fail(exc, debug)


def state_rm(
    names: FunctionNames,
    state_dir: StateDir = None,
    env: Envs = None,
    infra: Infras = None,
    lock_timeout: LockTimeout = 0,
    debug: Debug = False,
) -> None:
    """Forget functions in the state without touching AWS."""
    out = Out()
    try:
        from reconciler.store import state as st

        ctx = context.make_context(Path("."), None, env, infra, None, None, state_dir, out)
        removed = []
        for s in st.all_states(ctx.state_dir):
            if (env and s.environment not in env) or (infra and s.infrastructure not in infra):
                continue
            hits = [n for n in names if n in s.functions]
            if not hits:
                continue
            with st.locked(s.path, "state rm", timeout=lock_timeout):
                fresh = st.load(ctx.state_dir, s.environment, s.infrastructure)
                for n in hits:
                    fresh.functions.pop(n, None)
                    fresh.history.append(
                        {
                            "id": st.now(),
                            "function": n,
                            "operation": "state rm",
                            "status": "succeeded",
                            "started_at": st.now(),
                            "finished_at": st.now(),
                        }
                    )
                    removed.append(f"{s.environment}/{s.infrastructure}/{n}")
                fresh.write()
        missing = [n for n in names if not any(r.endswith("/" + n) for r in removed)]
        if missing:
            raise _not_in_state(missing[0], ctx.state_dir)
        for r in removed:
            out.result(f"Removed {r} from the state (Lambda is unchanged).\n")
    except ReconcilerError as exc:
        fail(exc, debug)


def _backend(
    workspace: Path, state_dir: Path | None, backend_config: list[str] | None, out: Out
) -> tuple[Context, Backend]:
    from reconciler.store.backend import configure

    ctx = context.make_context(workspace, None, None, None, None, None, state_dir, out)
    return ctx, configure(workspace, list(backend_config or []))


def state_pull(
    env: Envs = None,
    infra: Infras = None,
    out_dir: PullOut = None,
    workspace: Workspace = Path("."),
    state_dir: StateDir = None,
    backend_config: BackendConfig = None,
    debug: Debug = False,
) -> None:
    """Print the state JSON of one infrastructure from the configured backend (or --out DIR: write local files)."""
    out = Out()
    try:
        from reconciler.store import state as st

        ctx, b = _backend(workspace, state_dir, backend_config, out)
        targets = [(e, i) for e, i in b.targets(ctx.state_dir) if (not env or e in env) and (not infra or i in infra)]
        if not targets:
            raise ReconcilerError(
                f"no state{' for ' + '/'.join(filter(None, [','.join(env or []), ','.join(infra or [])])) if env or infra else ''} "
                f"in {b.describe(ctx.state_dir)}"
            )
        if out_dir is None:
            if len(targets) > 1:
                raise ReconcilerError(
                    f"{len(targets)} states match: choose one with -e ENV -i INFRA, or write them all with --out DIR",
                    hint="states: " + ", ".join(f"{e}/{i}" for e, i in targets),
                )
            text = st.stored_text(b.state_path(ctx.state_dir, *targets[0]), b)
            if text is None:
                raise ReconcilerError(f"state {targets[0][0]}/{targets[0][1]} disappeared while reading it")
            out.result(text if text.endswith("\n") else text + "\n")
            return
        for e, i in targets:
            src = b.state_path(ctx.state_dir, e, i)
            text = st.stored_text(src, b)
            if text is None:
                continue
            dst = out_dir / e / f"{i}.json"
            from reconciler.store.files import private_mkdir, write_private

            private_mkdir(dst.parent)
            tmp = dst.with_name(f".{dst.name}.tmp")
            write_private(tmp, text)
            tmp.replace(dst)
            out.result(f"Pulled {src} → {dst}\n")
    except ReconcilerError as exc:
        fail(exc, debug)


def _state_files(paths: list[Path]) -> list[Path]:
    """FILEs as given; a directory stands for every <environment>/<infrastructure>.json below it."""
    files = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.glob("*/*.json") if f.is_file())
            if not found:
                raise ConfigError(f"no state files (<environment>/<infrastructure>.json) in {p}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ConfigError(f"no such file or directory: {p}")
    return files


def state_push(
    files: PushFiles,
    force: Force = False,
    lock_timeout: LockTimeout = 0,
    workspace: Workspace = Path("."),
    state_dir: StateDir = None,
    backend_config: BackendConfig = None,
    debug: Debug = False,
) -> None:
    """Push local state files to the configured backend, under its lock. Refuses a lineage
    mismatch or a serial that is not higher than the stored one, unless --force."""
    out = Out()
    try:
        from reconciler.store import state as st

        ctx, b = _backend(workspace, state_dir, backend_config, out)
        for f in _state_files(list(files)):
            data = st.parse_file(f)  # with the steps journaled beside it, if any
            env, infra = data.get("environment"), data.get("infrastructure")
            if not env or not infra:
                raise ReconcilerError("state file names no environment/infrastructure", str(f))
            with st.locked(b.state_path(ctx.state_dir, env, infra), "state push", timeout=lock_timeout):
                cur = st.load(ctx.state_dir, env, infra)
                new = st.from_dict(data, cur.path, env, infra, backend=b)
                new.read_version, new.exists = cur.read_version, cur.exists
                if cur.exists:
                    if cur.to_dict() == new.to_dict():
                        out.result(f"{cur.path} is already at serial {cur.serial}: nothing to push.\n")
                        continue
                    if cur.lineage != new.lineage and not force:
                        raise ReconcilerError(
                            f"cannot push {f}: its lineage {new.lineage} differs from the stored state's {cur.lineage} "
                            "(a different state history)",
                            str(cur.path),
                            hint="pull it first, or --force to replace it",
                        )
                    if new.serial <= cur.serial and not force:
                        raise ReconcilerError(
                            f"cannot push {f}: its serial {new.serial} is not higher than the stored state's {cur.serial} "
                            "(it would overwrite newer changes)",
                            str(cur.path),
                            hint="pull it first, or --force to replace it",
                        )
                    if (
                        new.serial <= cur.serial
                    ):  # --force: still move forward, so saved plans made against it are stale
                        new.serial = cur.serial + 1
                new.write(bump=False)
                out.result(f"Pushed {f} → {new.path} (serial {new.serial}, lineage {new.lineage}).\n")
    except ReconcilerError as exc:
        fail(exc, debug)
