"""The local state backend: one JSON file per infrastructure definition.

`<state-dir>/<environment>/<infrastructure>.json`, written atomically (temp file,
fsync, rename) with the previous copy kept as `.backup`, and locked with filelock
while an apply or rollback is writing it. The format is documented in state/README.md.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import socket
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from reconciler.errors import LockError, ReconcilerError

FORMAT_VERSION = 1


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def state_dir_default() -> Path:
    return Path(os.environ.get("RECONCILER_STATE_DIR") or "state")


@dataclass
class State:
    """The content of one state file."""

    path: Path
    environment: str
    infrastructure: str
    lineage: str = field(default_factory=lambda: str(uuid.uuid4()))
    serial: int = 0
    region: str = ""
    functions: dict[str, dict] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)  # "s3://b/k#etag" → sha256 (base64)
    exists: bool = False

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "lineage": self.lineage,
            "serial": self.serial,
            "environment": self.environment,
            "infrastructure": self.infrastructure,
            "region": self.region,
            "functions": dict(sorted(self.functions.items())),
            "artifacts": self.artifacts,
            "history": self.history,
        }

    @property
    def ref(self) -> dict:
        return {"lineage": self.lineage if self.exists else None, "serial": self.serial if self.exists else None}

    def write(self) -> None:
        """Bump the serial and replace the file atomically, keeping the previous copy."""
        self.serial += 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False, default=str) + "\n"
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if self.path.exists():
            backup = self.path.with_name(self.path.name + ".backup")
            os.replace(self.path, backup) if False else _copy_atomic(self.path, backup)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self.exists = True

    def deployments(self, function: str | None = None) -> list[dict]:
        return [h for h in self.history if function is None or h.get("function") == function]


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    with open(src, "rb") as r, open(tmp, "wb") as w:
        w.write(r.read())
        w.flush()
        os.fsync(w.fileno())
    os.replace(tmp, dst)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def state_path(state_dir: Path, environment: str, infrastructure: str) -> Path:
    return Path(state_dir) / environment / f"{infrastructure}.json"


def load(state_dir: Path, environment: str, infrastructure: str) -> State:
    path = state_path(state_dir, environment, infrastructure)
    if not path.exists():
        return State(path=path, environment=environment, infrastructure=infrastructure)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        hint = f"restore it from {path.name}.backup" if path.with_name(path.name + ".backup").exists() else None
        raise ReconcilerError(f"state file is unreadable: {exc}", str(path), hint=hint) from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise ReconcilerError(f"state file has format_version {data.get('format_version') if isinstance(data, dict) else '?'}; this reconciler reads {FORMAT_VERSION}", str(path))
    return State(
        path=path,
        environment=data.get("environment", environment),
        infrastructure=data.get("infrastructure", infrastructure),
        lineage=data["lineage"],
        serial=int(data["serial"]),
        region=data.get("region", ""),
        functions=data.get("functions", {}),
        history=data.get("history", []),
        artifacts=data.get("artifacts", {}),
        exists=True,
    )


def all_states(state_dir: Path) -> list[State]:
    """Every state file below the state directory."""
    out = []
    root = Path(state_dir)
    if not root.is_dir():
        return out
    for env_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(env_dir.glob("*.json")):
            out.append(load(root, env_dir.name, f.stem))
    return out


# ---------------------------------------------------------------- locking


def _lock_info_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock.info")


@contextmanager
def locked(path: Path, operation: str, timeout: float = 0) -> Iterator[str]:
    """Hold the state file's lock (filelock) for one operation; say who holds it otherwise."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_name(path.name + ".lock")))
    info_path = _lock_info_path(path)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        holder = {}
        try:
            holder = json.loads(info_path.read_text())
        except (OSError, ValueError):
            pass
        who = ", ".join(f"{k}={holder[k]}" for k in ("id", "who", "operation", "created") if k in holder) or "unknown holder"
        raise LockError(f"state is locked ({who})", str(path), hint="wait with --lock-timeout, or if its runner died: reconciler force-unlock ID") from None
    lock_id = str(uuid.uuid4())
    try:
        info_path.write_text(json.dumps({"id": lock_id, "who": f"{getpass.getuser()}@{socket.gethostname()}", "pid": os.getpid(),
                                         "operation": operation, "created": now()}))
        yield lock_id
    finally:
        try:
            info_path.unlink()
        except OSError:
            pass
        lock.release()


def describe(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def force_unlock(state_dir: Path, lock_id: str) -> Path:
    """Remove the lock record with this ID. A local lock is an OS file lock that dies with
    its process, so only a record left behind by a dead runner can be removed; a lock
    still held by a live process is refused with its details."""
    from filelock import FileLock, Timeout

    root = Path(state_dir)
    for info_path in sorted(root.glob("*/*.json.lock.info")) if root.is_dir() else []:
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        if info.get("id") != lock_id:
            continue
        lock = FileLock(str(info_path.with_name(info_path.name[: -len(".info")])))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise LockError(f"lock {lock_id} is held by a running process ({info.get('who')}, pid {info.get('pid')}, {info.get('operation')}); "
                            "stop it first", str(info_path)) from None
        try:
            info_path.unlink()
        finally:
            lock.release()
        return info_path.with_name(info_path.name[: -len(".lock.info")])
    raise LockError(f"no lock with ID {lock_id} in {root}")
