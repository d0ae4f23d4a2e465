"""Per-function deployment locks: with allowSimultaneousDeployments each function is
deployed under its own lock (`<state>.<function>.lock` beside the state file, with `.info`
beside it), so one function is never deployed twice at once."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reconciler.errors import LockError


def function_lock_path(state_path: Path, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return state_path.with_name(f"{state_path.name}.{safe}.lock")


@contextmanager
def function_lock(state_path: Path, name: str, operation: str, timeout: float = 0) -> Iterator[str]:
    """Hold one function's deployment lock (`<state>.<function>.lock`, with `.info` beside it)."""
    from reconciler.store.files import file_lock
    from reconciler.store.locks import lock_info

    if not isinstance(state_path, Path):
        # a remote backend: its state lock, held for the whole deployment, serialises them
        yield ""
        return

    def busy(holder: dict) -> LockError:
        who = (
            ", ".join(f"{k}={holder[k]}" for k in ("id", "who", "pid", "operation", "created") if k in holder)
            or "unknown holder"
        )
        return LockError(
            f"function {name} is being deployed by another reconciler process ({who})",
            str(state_path),
            hint="wait with --lock-timeout",
        )

    with file_lock(
        function_lock_path(state_path, name), {**lock_info(operation, str(state_path)), "function": name}, timeout, busy
    ) as lock_id:
        yield lock_id
