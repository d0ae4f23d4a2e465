"""What every state backend provides: Storage (read, conditional write, journal, targets,
the fingerprint key beside the state) and Locker (lock, force-unlock), together Backend;
the error a conditional write raises when another writer moved the state
(StateConflictError); and how an environment and an infrastructure name a state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.model import IDENTIFIER, IDENTIFIER_RULE
from reconciler.store.config import HISTORY_LIMIT


class StateConflictError(ReconcilerError):
    """The state changed between this run's read and its write: another writer, not holding
    the lock, wrote it. Nothing was overwritten."""


def target_of(path: Any) -> tuple[str, str]:
    """(environment, infrastructure) of a state path, local or remote."""
    p = PurePosixPath(str(path).replace("\\", "/"))
    name = p.name
    return p.parent.name, name[: -len(".json")] if name.endswith(".json") else p.stem


def path_part(identifier: str, what: str) -> str:
    """An environment or infrastructure identifier as one part of a state path: only
    Harness identifiers, so that no state is ever read or written outside the state directory."""
    if not isinstance(identifier, str) or not IDENTIFIER.fullmatch(identifier):
        raise ReconcilerError(
            f"{what} identifier {str(identifier)[:60]!r} is not a Harness identifier ({IDENTIFIER_RULE}); "
            "it cannot name a state file"
        )
    return identifier


# a state's path: a Path below the state directory (local), a RemotePath (s3), or the string
# of either (a saved plan's state_file)
StatePath = Any


class Storage:
    """Where states are kept: read, conditional write, the journal of steps (a backend
    without one rewrites the state whole), the list of states, and each state's
    fingerprint key, kept beside the state, not in it (reconciler.store.seals)."""

    type = "?"
    history_limit = HISTORY_LIMIT
    # a backend with a journal (local) records a step by appending one line to it
    journal = False

    def describe(self, state_dir: Path | None = None) -> str:
        raise NotImplementedError

    def state_path(self, state_dir: Path, environment: str, infrastructure: str) -> PurePath:
        raise NotImplementedError

    def read(self, path: StatePath) -> tuple[str | None, Any]:
        """(text, version token) of one state, (None, None) when there is none."""
        raise NotImplementedError

    # a backend that keeps the previous version as a backup (local) rather than relying on
    # the store's own versions (s3)
    keeps_backup = False

    def write(
        self, path: StatePath, text: str, expected: Any, unbumped: tuple[str, int] | None, backup: str | None = None
    ) -> Any:
        """Replace the state if it is still at `expected` (None: must not exist); returns the
        new token. `backup`: with keeps_backup, the text to keep the previous version as,
        instead of the stored file as it is."""
        raise NotImplementedError

    def replay(self, path: StatePath, data: dict, text: str, token: Any) -> Any:
        """Bring `data`, the parsed stored document, up to date with the journal (in place);
        returns the version token (None: the state changed while reading, read it again)."""
        return token

    def append(self, path: StatePath, line: bytes, expected: Any, sync: bool) -> Any:
        """Append one journal line if the state is still at `expected`; returns the new token."""
        raise NotImplementedError

    def targets(self, state_dir: Path) -> list[tuple[str, str]]:
        """(environment, infrastructure) of every state kept."""
        raise NotImplementedError

    def unreadable_hint(self, path: StatePath) -> str | None:
        return None

    def read_key(self, path: StatePath) -> bytes | None:
        """The state's fingerprint key, None when it has none."""
        raise NotImplementedError

    def create_key(self, path: StatePath, key: bytes) -> bytes:
        """Store `key` unless a key exists (a concurrent run made one): returns the key kept,
        never one that is not stored."""
        raise NotImplementedError


class Locker:
    """The lock of one state, held for one operation, and its removal by ID."""

    def lock(self, path: StatePath, operation: str, timeout: float = 0) -> AbstractContextManager[str]:
        """Hold the lock (a context manager yielding its ID); a lock held elsewhere raises
        LockError saying who holds it, after waiting up to `timeout` seconds."""
        raise NotImplementedError

    def force_unlock(self, state_dir: Path, lock_id: str) -> PurePath:
        """Remove the lock with this ID; returns the path of its state."""
        raise NotImplementedError


class Backend(Storage, Locker):
    """What reconciler.store.state needs from a backend: Storage and Locker."""


KEY_SUFFIX = ".key"
# how long a run waits for a fingerprint key another run is creating to be readable whole
KEY_WAIT_SECONDS = 5.0
KEY_POLL_SECONDS = 0.1


def keep_one_key(key: bytes, create: Callable[[], bool], read: Callable[[], bytes | None], where: str) -> bytes:
    """The fingerprint key a state keeps: `key` if `create` stores it (True; False: a key is
    there already), else the stored one, read once it can be read whole (another run may be
    writing it), up to KEY_WAIT_SECONDS. Never a key that is not stored."""
    deadline = time.monotonic() + KEY_WAIT_SECONDS
    while True:
        if create():
            return key
        stored = read()
        if stored is not None:
            return stored
        if time.monotonic() >= deadline:
            raise ReconcilerError(
                "the state's fingerprint key is there but stays empty",
                where,
                hint="a run was killed while creating it; remove it (nothing sealed under it can be checked) "
                "and run again",
            )
        time.sleep(KEY_POLL_SECONDS)


CONFLICT_HINT = "another writer changed it without holding the lock; look at `reconciler history` and run again"


def conflict_message(expected: Any, found: Any) -> str:
    def fmt(v: Any) -> str:
        if v is None:
            return "no state"
        if isinstance(v, tuple):
            return f"lineage {v[0]} serial {v[1]}"
        return f"version {v}"

    return f"state changed since this run read it (read {fmt(expected)}, now {fmt(found)}); not overwritten"
