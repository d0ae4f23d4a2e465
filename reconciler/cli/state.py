"""`reconciler state pull` and `state push`: move state between backends (and migrate a
local state directory to S3 in one command). Registered on the state_app of cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reconciler.cli.app import Debug, Envs, Infras, LockTimeout, Out, StateDir, Workspace, _context, _fail, state_app
from reconciler.errors import ConfigError, ReconcilerError

BackendConfigOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--backend-config",
        help="Override one backend setting: KEY=VALUE, keys type, bucket, key_prefix, region, lock, table (repeatable).",
    ),
]


def _backend(workspace: Path, state_dir, backend_config, out: Out):
    from reconciler.store.backend import configure

    ctx = _context(workspace, None, None, None, None, None, state_dir, out)
    return ctx, configure(workspace, list(backend_config or []))


@state_app.command("pull")
def state_pull(
    env: Envs = None,
    infra: Infras = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write <DIR>/<environment>/<infrastructure>.json for every selected state instead of printing one.",
        ),
    ] = None,
    workspace: Workspace = Path("."),
    state_dir: StateDir = None,
    backend_config: BackendConfigOpt = None,
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
            from reconciler.store.backend import private_mkdir, write_private

            private_mkdir(dst.parent)
            tmp = dst.with_name(f".{dst.name}.tmp")
            write_private(tmp, text)
            tmp.replace(dst)
            out.result(f"Pulled {src} → {dst}\n")
    except ReconcilerError as exc:
        _fail(exc, debug)


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


@state_app.command("push")
def state_push(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="State files to push; a directory pushes every <environment>/<infrastructure>.json below it (migration)."
        ),
    ],
    force: Annotated[
        bool, typer.Option("--force", help="Push even if the lineage differs or the serial is not higher.")
    ] = False,
    lock_timeout: LockTimeout = 0,
    workspace: Workspace = Path("."),
    state_dir: StateDir = None,
    backend_config: BackendConfigOpt = None,
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
        _fail(exc, debug)


__all__ = ["state_pull", "state_push"]
