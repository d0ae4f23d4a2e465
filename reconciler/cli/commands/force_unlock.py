"""`reconciler force-unlock LOCK_ID`: remove a state lock left behind by a run that died."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reconciler.cli import context
from reconciler.cli.options import Debug, StateDir
from reconciler.cli.output import Out, fail
from reconciler.errors import ReconcilerError

LockId = Annotated[str, typer.Argument(help="The lock ID that the lock error printed.")]


def force_unlock(lock_id: LockId, state_dir: StateDir = None, debug: Debug = False) -> None:
    """Remove a state lock left behind by a runner that died."""
    out = Out()
    try:
        from reconciler.store import state as st

        ctx = context.make_context(Path("."), None, None, None, None, None, state_dir, out)
        path = st.force_unlock(ctx.state_dir, lock_id)
        out.result(f"Lock {lock_id} on {path} removed.\n")
    except ReconcilerError as exc:
        fail(exc, debug)
