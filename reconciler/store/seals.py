"""The sealers of states: each state's HMAC key, read from beside the state (`<state>.key`,
or the S3 object `<key>.key`) through the current backend, or created there. The seal
scheme itself is reconciler.util.secrets.Sealer."""

from __future__ import annotations

import os
import threading
from typing import Any, Literal, overload

from reconciler.store import backend as _backend
from reconciler.util.secrets import Sealer, register

_sealers: dict[str, Sealer] = {}  # str(state path) → its sealer
_sealers_lock = threading.Lock()


@overload
def sealer_for(path: Any, create: Literal[True] = True) -> Sealer: ...


@overload
def sealer_for(path: Any, create: bool) -> Sealer | None: ...


def sealer_for(path: Any, create: bool = True) -> Sealer | None:
    """The sealer of one state, its key read from beside the state (`<state>.key`, or the
    S3 object `<key>.key`), created (random, 256 bits, 0600 / encrypted) when there is none
    and `create`. None: no key and not created."""
    k = str(path)
    with _sealers_lock:
        if k in _sealers:
            return _sealers[k]
    b = _backend.current()
    key = b.read_key(path)
    if key is None:
        if not create:
            return None
        key = b.create_key(path, os.urandom(32).hex().encode())
    s = Sealer(key)
    with _sealers_lock:
        _sealers[k] = s
    register(s)
    return s


class LazySealer:
    """The sealer of a state, its key read or created only when a value is sealed."""

    def __init__(self, path: Any):
        self.path = path
        self._s: Sealer | None = None

    def seal(self, value: Any) -> str:
        if self._s is None:
            self._s = sealer_for(self.path, create=True)
        return self._s.seal(value)
