"""What every command shares at its edge: `Out` (stdout for results and machine output,
stderr for logs, progress and errors), the confirmation prompt, the one place that turns a
`ReconcilerError` into `error: ...` lines and exit 1 (`fail`), the --format check, the plain
tables, and the process edge of `main` (SIGTERM as Ctrl-C, exit 130; an unexpected exception
as one `internal error` line, its traceback only with --debug).

Imports typer and `reconciler.errors` only (the secret guard lazily), never a command.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

import typer

from reconciler.errors import ErrorList, ReconcilerError


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


def fail(exc: BaseException, debug: bool) -> NoReturn:
    """The error edge of every command: `error: ...` on stderr (one line per error of an
    ErrorList), the traceback only with --debug, exit 1."""
    if debug:
        import traceback

        traceback.print_exception(exc)
    if isinstance(exc, ErrorList):
        for e in exc.errors:
            print(f"error: {e}", file=sys.stderr)
    else:
        print(f"error: {exc}", file=sys.stderr)
    raise typer.Exit(1)


def check_format(fmt: str, allowed: Sequence[str] = ("text", "json", "markdown")) -> str:
    if fmt not in allowed:
        raise ReconcilerError(f"--format must be one of {', '.join(allowed)}, not '{fmt}'")
    return fmt


def table(headers: list[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns two spaces apart, a header row first."""
    rows = list(rows)
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=False)).rstrip() for r in [headers, *rows]]
    return "\n".join(lines) + "\n"


def _terminated(signum: int, frame: object) -> None:
    # a cancelled CI job sends SIGTERM: treat it as Ctrl-C, so a running apply rolls back
    raise KeyboardInterrupt


def run_guarded(app: Callable[[], Any]) -> None:
    """Run the app as the process: SIGTERM as Ctrl-C (exit 130), no known secret value on
    stdout or stderr, an unexpected exception as one line (its traceback with --debug)."""
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
