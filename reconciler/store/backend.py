"""The backend of this command: the registry of backend types (BACKENDS), make() from a
BackendConfig, and current(), through which reconciler.store.state routes every read,
write and lock. The command line calls configure() once per command.

- `local` (the default): reconciler.store.local.
- `s3`: reconciler.store.s3, locked with S3 lock objects or DynamoDB (reconciler.store.locks).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from reconciler.store.base import Backend
from reconciler.store.config import BackendConfig, read_config
from reconciler.store.files import file_lock, private_mkdir, write_private
from reconciler.store.local import LocalBackend
from reconciler.store.locks import lock_info
from reconciler.store.s3 import S3Backend

# file_lock, private_mkdir, write_private and lock_info lived here before the store was split
# into modules: code not yet moved to import them from reconciler.store.files / .locks finds
# them here meanwhile
__all__ = [
    "BACKENDS",
    "Backend",
    "BackendConfig",
    "LocalBackend",
    "S3Backend",
    "configure",
    "current",
    "file_lock",
    "lock_info",
    "make",
    "private_mkdir",
    "read_config",
    "use",
    "write_private",
]

_current: Backend | None = None


def current() -> Backend:
    """The backend configured for this command (the local backend unless configured)."""
    global _current
    if _current is None:
        _current = LocalBackend()
    return _current


def use(backend: Backend | None) -> Backend | None:
    """Make `backend` current (None: back to the default); returns the previous one."""
    global _current
    previous, _current = _current, backend
    return previous


# backend.type in the configuration → how to make it (config.TYPES names the same)
BACKENDS: dict[str, Callable[[BackendConfig], Backend]] = {
    "local": lambda cfg: LocalBackend(),
    "s3": S3Backend,
}


def make(cfg: BackendConfig) -> Backend:
    """The backend a configuration describes (the configuration is read by the caller)."""
    b = BACKENDS[cfg.type](cfg)
    b.history_limit = int(cfg.history_limit)
    return b


def configure(workspace: Path | str = ".", overrides: list[str] | tuple = ()) -> Backend:
    """Read the configuration for this workspace and make its backend current (and its
    `secrets` section: the secret store and the masking policy)."""
    from reconciler.util import secrets

    backend = make(read_config(workspace, overrides))
    use(backend)
    secrets.configure(workspace)
    return backend
