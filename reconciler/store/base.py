"""What every state backend provides (Backend: read, conditional write, journal, targets,
lock, force-unlock, the fingerprint key beside the state), the error a conditional write
raises when another writer moved the state (StateConflictError), and how an environment and
infrastructure name a state.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.model import IDENTIFIER, IDENTIFIER_RULE
from reconciler.store.config import HISTORY_LIMIT


class StateConflictError(ReconcilerError):
    """The state changed between this run's read and its write: another writer, not holding
    the lock, wrote it. Nothing was overwritten."""


def _target_of(path: Any) -> tuple[str, str]:
    """(environment, infrastructure) of a state path, local or remote."""
    p = PurePosixPath(str(path).replace("\\", "/"))
    name = p.name
    return p.parent.name, name[: -len(".json")] if name.endswith(".json") else p.stem


def _part(identifier: str, what: str) -> str:
    """An environment or infrastructure identifier as one part of a state path: only
    Harness identifiers, so that no state is ever read or written outside the state directory."""
    if not isinstance(identifier, str) or not IDENTIFIER.fullmatch(identifier):
        raise ReconcilerError(
            f"{what} identifier {str(identifier)[:60]!r} is not a Harness identifier ({IDENTIFIER_RULE}); "
            "it cannot name a state file"
        )
    return identifier


class Backend:
    """What reconciler.state needs from a backend."""

    type = "?"
    history_limit = HISTORY_LIMIT

    def describe(self, state_dir: Path | None = None) -> str:
        raise NotImplementedError

    def state_path(self, state_dir: Path, environment: str, infrastructure: str):
        raise NotImplementedError

    def read(self, path) -> tuple[str | None, Any]:
        """(text, version token) of one state, (None, None) when there is none."""
        raise NotImplementedError

    def write(self, path, text: str, expected: Any, unbumped: tuple[str, int] | None) -> Any:
        """Replace the state if it is still at `expected` (None: must not exist); returns the new token."""
        raise NotImplementedError

    # a backend with a journal (local) records a step by appending one line to it
    journal = False

    def replay(self, path, data: dict, text: str, token: Any) -> Any:
        """Bring `data`, the parsed stored document, up to date with the journal (in place);
        returns the version token (None: the state changed while reading, read it again)."""
        return token

    def append(self, path, line: bytes, expected: Any, sync: bool) -> Any:
        """Append one journal line if the state is still at `expected`; returns the new token."""
        raise NotImplementedError

    def targets(self, state_dir: Path) -> list[tuple[str, str]]:
        raise NotImplementedError

    def lock(self, path, operation: str, timeout: float = 0):
        raise NotImplementedError

    def force_unlock(self, state_dir: Path, lock_id: str):
        raise NotImplementedError

    def unreadable_hint(self, path) -> str | None:
        return None

    # the state's fingerprint key (reconciler.secrets), kept beside the state, not in it
    def read_key(self, path) -> bytes | None:
        raise NotImplementedError

    def create_key(self, path, key: bytes) -> bytes:
        """Store `key` unless a key exists (a concurrent run made one): returns the key kept."""
        raise NotImplementedError


KEY_SUFFIX = ".key"


CONFLICT_HINT = "another writer changed it without holding the lock; look at `reconciler history` and run again"


def _conflict_message(expected: Any, found: Any) -> str:
    def fmt(v):
        if v is None:
            return "no state"
        if isinstance(v, tuple):
            return f"lineage {v[0]} serial {v[1]}"
        return f"version {v}"

    return f"state changed since this run read it (read {fmt(expected)}, now {fmt(found)}); not overwritten"
