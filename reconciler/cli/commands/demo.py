"""`reconciler demo`: the whole story on an embedded emulator (the story itself is
reconciler.cli.demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reconciler.cli.options import Debug
from reconciler.cli.output import fail
from reconciler.errors import ReconcilerError

Keep = Annotated[Path | None, typer.Option("--keep", help="Keep the demo workspace and state in this directory.")]


def demo(keep: Keep = None, debug: Debug = False) -> None:
    """The whole story on an embedded AWS emulator (moto): plan, apply, a code change, drift, rollback. No AWS account needed."""
    try:
        from reconciler.cli.demo import run_demo

        raise typer.Exit(run_demo(keep))
    except ReconcilerError as exc:
        fail(exc, debug)
