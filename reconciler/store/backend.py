"""State backends: where the state of each infrastructure definition lives and how it is locked.

- `local` (the default): `<state-dir>/<environment>/<infrastructure>.json`, written
  atomically with a `.backup` copy, locked with filelock (`.lock` + `.lock.info`).
- `s3`: `s3://<bucket>/<key_prefix>/<environment>/<infrastructure>.json`, the same JSON.
  Writes are conditional on the version read (`If-Match: <ETag>`, or `If-None-Match: *`
  for a new object), so a concurrent writer is detected, never overwritten. Locked with
  an S3 lock object `<key>.lock` created with `If-None-Match: *` (as Terraform >= 1.10),
  or with a DynamoDB table (hash key `LockID`, conditional put `attribute_not_exists`).

The backend is configured from `reconciler.yaml` at the workspace root, then the
`RECONCILER_BACKEND_*` environment variables, then `--backend-config KEY=VALUE`
(highest). `configure()` is called once per command by the CLI; reconciler.state
routes every read, write and lock through `current()`.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from reconciler.errors import ConfigError, LockError, ReconcilerError
from reconciler.model import IDENTIFIER, IDENTIFIER_RULE
from reconciler.util.settings import config_document

ENV_PREFIX = "RECONCILER_BACKEND_"
KEYS = ("type", "bucket", "key_prefix", "region", "lock", "table", "encryption", "kms_key_id", "history_limit")
TYPES = ("local", "s3")
LOCKS = ("s3", "dynamodb")
ENCRYPTIONS = ("AES256", "aws:kms")
HISTORY_LIMIT = 20  # history records kept per function (backend.history_limit)
PRIVATE = 0o600  # every file reconciler writes: read and written by its owner only
LOCK_POLL_SECONDS = 0.5


class StateConflictError(ReconcilerError):
    """The state changed between this run's read and its write: another writer, not holding
    the lock, wrote it. Nothing was overwritten."""


JOURNAL_SUFFIX = ".journal"
_LINE_HEAD = 96  # bytes of a journal line compared by the cheap check: its lineage and serial
_HEAD_RX = re.compile(r'\{\s*"format_version":\s*\d+,\s*"lineage":\s*"([^"]*)",\s*"serial":\s*(\d+)\s*,')


class LocalVersion(NamedTuple):
    """What a local state was read as or last written as (file + journal): the next write
    or append is conditional on it. [0], [1] are the logical (lineage, serial)."""

    lineage: str
    serial: int  # of the state, journal lines included
    file_serial: int  # in the state file's head
    file_size: int  # of the state file (characters): the journal is compacted beyond it
    journal_ino: int = 0  # 0: no journal
    journal_size: int = 0  # bytes read, a torn or stale tail included
    journal_end: int = 0  # after the last whole line (replayed or already compacted)
    last_at: int = -1  # where the last replayed line starts (-1: none replayed)
    last_head: bytes = b""  # its first bytes


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class BackendConfig:
    type: str = "local"
    bucket: str | None = None
    key_prefix: str = "reconciler"
    region: str | None = None
    lock: str = "s3"
    table: str | None = None
    encryption: str = "AES256"  # S3 server-side encryption of the state and lock objects
    kms_key_id: str | None = None  # with encryption aws:kms (None: the account's aws/s3 key)
    history_limit: str = str(HISTORY_LIMIT)
    sources: dict = field(default_factory=dict, compare=False, repr=False)  # key → where its value came from


def read_config(
    workspace: Path | str = ".", overrides: list[str] | tuple = (), environ: dict | None = None
) -> BackendConfig:
    """The backend configuration: defaults < reconciler.yaml < RECONCILER_BACKEND_* < --backend-config."""
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    doc = config_document(workspace)
    if doc is not None:
        from reconciler.errors import did_you_mean

        shown = doc.file
        be = doc.data.get("backend")
        if be is not None and not isinstance(be, dict):
            raise doc.error(("backend",), "'backend' must be a mapping (type, bucket, key_prefix, region, lock, table)")
        for k, v in (be or {}).items():
            if k not in KEYS:
                raise doc.error(("backend", k), f"unknown backend key '{k}'", did_you_mean(str(k), KEYS))
            if v is None:
                continue
            if isinstance(v, (dict, list)):
                raise doc.error(("backend", k), f"backend.{k} must be a string")
            values[k] = str(v)
            line = doc.line(("backend", k))
            sources[k] = f"{shown}:{line}" if line else shown
    for k in KEYS:
        v = environ.get(ENV_PREFIX + k.upper())
        if v:
            values[k] = v
            sources[k] = ENV_PREFIX + k.upper()
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"--backend-config '{item}' is not KEY=VALUE (keys: {', '.join(KEYS)})")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        if k not in KEYS:
            from reconciler.errors import did_you_mean

            raise ConfigError(f"--backend-config: unknown key '{k}'", hint=did_you_mean(k, KEYS))
        values[k] = v.strip()
        sources[k] = "--backend-config"
    cfg = BackendConfig(**dict(values.items()), sources=sources)
    return _validated(cfg)


def _validated(cfg: BackendConfig) -> BackendConfig:
    def bad(key: str, message: str) -> ConfigError:
        src = cfg.sources.get(key)
        if not src:
            return ConfigError(message)
        if src == "--backend-config" or src.startswith(ENV_PREFIX):
            return ConfigError(f"{src}: {message}")
        file, _, line = src.rpartition(":")
        return ConfigError(message, file, int(line)) if line.isdigit() else ConfigError(message, src)

    if cfg.type not in TYPES:
        raise bad("type", f"backend type must be one of {', '.join(TYPES)}, not '{cfg.type}'")
    if cfg.type == "s3":
        if not cfg.bucket:
            raise ConfigError(
                "the s3 backend needs a bucket: backend.bucket in reconciler.yaml, RECONCILER_BACKEND_BUCKET "
                "or --backend-config bucket=NAME"
            )
        if cfg.lock not in LOCKS:
            raise bad("lock", f"backend lock must be one of {', '.join(LOCKS)}, not '{cfg.lock}'")
        if cfg.lock == "dynamodb" and not cfg.table:
            raise bad(
                "lock",
                "lock: dynamodb needs a table (backend.table, RECONCILER_BACKEND_TABLE or --backend-config table=NAME)",
            )
    if cfg.encryption not in ENCRYPTIONS:
        raise bad("encryption", f"backend encryption must be one of {', '.join(ENCRYPTIONS)}, not '{cfg.encryption}'")
    if cfg.kms_key_id and cfg.encryption != "aws:kms":
        raise bad("kms_key_id", "backend.kms_key_id needs encryption: aws:kms")
    if not str(cfg.history_limit).strip().isdigit() or int(cfg.history_limit) < 1:
        raise bad(
            "history_limit",
            f"backend history_limit must be a whole number of records of at least 1, not '{cfg.history_limit}'",
        )
    return cfg


# ---------------------------------------------------------------- the current backend

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


def make(cfg: BackendConfig) -> Backend:
    b = S3Backend(cfg) if cfg.type == "s3" else LocalBackend()
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


# ---------------------------------------------------------------- private files


def private_open(path: Path | str, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """os.open() of a file reconciler writes, created 0600 (the mode is given at creation,
    never set afterwards). A file that already exists with group or other bits (written by
    an earlier version) is narrowed to 0600 before anything is written to it."""
    fd = os.open(path, flags, PRIVATE)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, PRIVATE)
    except OSError:
        pass
    return fd


def write_private(path: Path | str, text: str | bytes) -> None:
    """Replace a file's content, the file created 0600."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    fd = private_open(path)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def private_mkdir(path: Path) -> None:
    """Create a directory (and its parents) readable by the owner only when it is new."""
    Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)


# ---------------------------------------------------------------- lock records

log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def _where() -> str:
    """The CI job holding the lock when there is one, else host:working directory."""
    e = os.environ
    if e.get("GITHUB_RUN_ID") and e.get("GITHUB_REPOSITORY"):
        return f"{e.get('GITHUB_SERVER_URL', 'https://github.com')}/{e['GITHUB_REPOSITORY']}/actions/runs/{e['GITHUB_RUN_ID']}"
    for var in ("CI_JOB_URL", "BUILD_URL", "CIRCLE_BUILD_URL"):
        if e.get(var):
            return e[var]
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "?"
    return f"{socket.gethostname()}:{cwd}"


def lock_info(operation: str, path: str) -> dict:
    """What a lock records: never a credential."""
    return {
        "id": str(uuid.uuid4()),
        "who": _who(),
        "where": _where(),
        "pid": os.getpid(),
        "operation": operation,
        "created": _now(),
        "path": path,
    }


@contextmanager
def file_lock(lock_path: Path, info: dict, timeout: float, busy: Callable[[dict], Exception]) -> Iterator[str]:
    """Hold an OS file lock (filelock: released by the OS if the process dies) with
    `<lock>.info` saying who holds it; a lock held elsewhere raises busy(its info) after
    waiting up to `timeout` seconds. Yields the lock's ID."""
    from filelock import FileLock, Timeout

    info_path = lock_path.with_name(lock_path.name + ".info")
    lock = FileLock(str(lock_path), thread_local=False, mode=PRIVATE)
    try:
        private_mkdir(lock_path.parent)
        lock.acquire(timeout=timeout)
    except Timeout:
        try:
            holder = json.loads(info_path.read_text())
        except (OSError, ValueError):
            holder = {}
        raise busy(holder) from None
    except (
        OSError
    ) as exc:  # (Timeout is one too, above) a read-only or full state directory: nothing has been changed yet
        raise ReconcilerError(
            f"cannot take the lock {lock_path.name}: {exc.strerror or exc}",
            str(lock_path.parent),
            hint="the state directory must be writable",
        ) from None
    try:
        try:
            write_private(info_path, json.dumps(info))
        except OSError as exc:
            raise ReconcilerError(
                f"cannot write the lock record {info_path.name}: {exc.strerror or exc}",
                str(lock_path.parent),
                hint="the state directory must be writable",
            ) from None
        yield info["id"]
    finally:
        try:
            info_path.unlink()
        except OSError:
            pass
        lock.release()


def describe_holder(holder: dict) -> str:
    return (
        ", ".join(f"{k}={holder[k]}" for k in ("id", "who", "where", "operation", "created") if holder.get(k))
        or "unknown holder"
    )


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


LOCK_HINT = "wait with --lock-timeout, or if its runner died: reconciler force-unlock ID"


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


# ---------------------------------------------------------------- backends


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


class LocalBackend(Backend):
    """One JSON file per infrastructure below the state directory, and beside it the
    journal of the steps recorded since it was last written whole."""

    type = "local"
    journal = True

    def describe(self, state_dir: Path | None = None) -> str:
        return f"local ({state_dir})" if state_dir else "local"

    def state_path(self, state_dir: Path, environment: str, infrastructure: str) -> Path:
        return Path(state_dir) / _part(environment, "environment") / f"{_part(infrastructure, 'infrastructure')}.json"

    def read(self, path) -> tuple[str | None, Any]:
        path = Path(path)
        try:
            return path.read_text(encoding="utf-8"), None
        except FileNotFoundError:
            return None, None

    def read_key(self, path) -> bytes | None:
        try:
            return Path(str(path) + KEY_SUFFIX).read_bytes().strip() or None
        except FileNotFoundError:
            return None

    def create_key(self, path, key: bytes) -> bytes:
        kp = Path(str(path) + KEY_SUFFIX)
        private_mkdir(kp.parent)
        try:
            fd = private_open(kp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return self.read_key(path) or key
        try:
            os.write(fd, key + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        return key

    def unreadable_hint(self, path) -> str | None:
        path = Path(path)
        return f"restore it from {path.name}.backup" if path.with_name(path.name + ".backup").exists() else None

    @staticmethod
    def journal_path(path) -> Path:
        path = Path(path)
        return path.with_name(path.name + JOURNAL_SUFFIX)

    @staticmethod
    def peek(path: Path) -> tuple[str, int] | None:
        """(lineage, serial) of the file on disk, None if there is none: the head of the file
        is enough (to_dict writes them first); a hand-formatted file is parsed whole."""
        try:
            with open(path, "rb") as f:
                head = f.read(512).decode("utf-8", errors="replace")
        except FileNotFoundError:
            return None
        m = _HEAD_RX.match(head)
        if m:
            return m.group(1), int(m.group(2))
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return str(data.get("lineage")), int(data.get("serial"))
        except (OSError, ValueError, TypeError, AttributeError):
            return ("?", -1)

    # -- the journal: `<state>.json.journal`, one JSON line per recorded step (state/README.md)

    def replay(self, path, data: dict, text: str, token: Any = None) -> LocalVersion | None:
        """Apply the journal's lines to `data` (the parsed state file), in place: lines of the
        file's lineage, skipping those at or below its serial (already compacted), then each
        exactly one serial higher than the previous; the first torn, unreadable or
        non-contiguous line ends it. Returns the version read (None: the file was replaced
        while the journal was read)."""
        lineage, file_serial = data["lineage"], int(data["serial"])
        try:
            with open(self.journal_path(path), "rb") as f:
                ino, raw = os.fstat(f.fileno()).st_ino, f.read()
        except FileNotFoundError:
            return LocalVersion(lineage, file_serial, file_serial, len(text))
        serial, pos, end, last_at = file_serial, 0, 0, -1
        functions, history, index = data.setdefault("functions", {}), data.setdefault("history", []), None
        loads = json.loads
        while True:
            nl = raw.find(b"\n", pos)
            if nl < 0:
                break  # nothing more, or a torn last line
            try:
                entry = loads(raw[pos:nl])
                s, fns, recs = entry["serial"], entry["functions"], entry["records"]
                if (
                    entry["lineage"] != lineage
                    or type(s) is not int
                    or not isinstance(fns, dict)
                    or not isinstance(recs, list)
                    or not all(isinstance(r, dict) for r in recs)
                ):
                    break
            except (ValueError, KeyError, TypeError):
                break
            if s <= file_serial and serial == file_serial:
                pos = end = nl + 1  # compacted before the journal was removed
                continue
            if s != serial + 1:
                break
            for name, value in fns.items():
                if value is None:
                    functions.pop(name, None)
                else:
                    functions[name] = value
            if recs:
                if index is None:
                    index = {h.get("id"): i for i, h in enumerate(history)}
                for r in recs:
                    i = index.get(r.get("id"))
                    if i is None:
                        index[r.get("id")] = len(history)
                        history.append(r)
                    else:
                        history[i] = r
            if "region" in entry:
                data["region"] = entry["region"]
            serial, last_at, pos = s, pos, nl + 1
            end = pos
        if last_at >= 0:
            data["serial"] = serial
            if self.peek(path) != (lineage, file_serial):
                return None  # compacted meanwhile: these lines may belong to a newer file
        return LocalVersion(
            lineage,
            serial,
            file_serial,
            len(text),
            ino,
            len(raw),
            end,
            last_at,
            raw[last_at : last_at + _LINE_HEAD] if last_at >= 0 else b"",
        )

    def _stored(self, path: Path) -> LocalVersion | tuple | None:
        """The version stored now, read whole (file + journal): the slow path of a check."""
        for _ in range(5):
            text, _tok = self.read(path)
            if text is None:
                return None
            try:
                data = json.loads(text)
                data["lineage"], data["serial"] = str(data["lineage"]), int(data["serial"])
            except (ValueError, TypeError, KeyError):
                return ("?", -1)
            data.setdefault("functions", {})
            data.setdefault("history", [])
            version = self.replay(path, data, text)
            if version is not None:
                return version
        return ("?", -1)

    def _journal_unchanged(self, fd: int | None, expected: LocalVersion) -> bool:
        """The cheap half of a check: the journal (open as fd, None: absent) is the one this
        run read or left, to the byte count, with the same last line. False: not sure."""
        stat = os.fstat(fd) if fd is not None else None
        size = stat.st_size if stat is not None else 0
        if size == 0 or expected.journal_size == 0:
            return size == expected.journal_size
        if (
            stat.st_ino != expected.journal_ino
            or size != expected.journal_size
            or size != expected.journal_end
            or expected.last_at < 0
        ):
            return False
        os.lseek(fd, expected.last_at, os.SEEK_SET)  # (appends go to the end whatever the offset)
        return os.read(fd, len(expected.last_head)) == expected.last_head

    def _check(self, path: Path, expected: Any, fd: int | None) -> LocalVersion | None:
        """The stored state is still the version `expected` (None: no state): checked by the
        file's head and the journal's size and last line, or, when they moved, by reading it
        whole (a torn line is not a change). Returns the version to continue from; else
        StateConflictError."""
        head = self.peek(path)
        if expected is None:
            if head is None:
                return None
            raise StateConflictError(_conflict_message(expected, self._stored(path)), str(path), hint=CONFLICT_HINT)
        if (
            isinstance(expected, LocalVersion)
            and head == (expected.lineage, expected.file_serial)
            and self._journal_unchanged(fd, expected)
        ):
            return expected
        now = self._stored(path) if head is not None else None
        if isinstance(now, LocalVersion) and (now.lineage, now.serial) == (expected[0], expected[1]):
            return now
        raise StateConflictError(_conflict_message(expected, now), str(path), hint=CONFLICT_HINT)

    @staticmethod
    def _open_journal(path: Path) -> int | None:
        try:
            return os.open(LocalBackend.journal_path(path), os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            return None

    def write(self, path, text: str, expected: Any, unbumped: tuple[str, int] | None) -> Any:
        """Atomic replace (temp file, fsync, rename) keeping the previous copy as .backup,
        after checking that the state is still the one this run read (lineage + serial of
        the file, and its journal); then the journal, now compacted into it, is removed."""
        path = Path(path)
        private_mkdir(path.parent)
        fd = self._open_journal(path)
        try:
            self._check(path, expected, fd)
        finally:
            if fd is not None:
                os.close(fd)
        _sweep_temp_files(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(private_open(tmp), "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            _copy_atomic(path, path.with_name(path.name + ".backup"))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        # a crash before this leaves lines at or below the new serial: replay skips them
        try:
            os.unlink(self.journal_path(path))
        except FileNotFoundError:
            pass
        m = _HEAD_RX.match(text)
        if m:
            return LocalVersion(m.group(1), int(m.group(2)), int(m.group(2)), len(text))
        return None  # the caller records (lineage, serial) as the new version

    def append(self, path, line: bytes, expected: Any, sync: bool) -> LocalVersion:
        """Append one line (one write(), so a killed process leaves it whole or torn, never
        interleaved) to the journal, if the state is still `expected`; a torn or stale tail
        left by a killed writer is cut first. fsync'ed when `sync`: without it a line
        survives the process being killed, not the machine losing power."""
        path = Path(path)
        jpath = self.journal_path(path)
        fd = self._open_journal(path)
        try:
            base = self._check(path, expected, fd)
            if base is None:
                raise StateConflictError("cannot append to a state that does not exist", str(path))
            created = fd is None
            if created:
                try:
                    fd = private_open(jpath, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL)
                except FileExistsError:
                    raise StateConflictError(
                        _conflict_message(expected, self._stored(path)), str(path), hint=CONFLICT_HINT
                    ) from None
            elif base is not expected and os.fstat(fd).st_ino != base.journal_ino:
                # read whole meanwhile, and the journal open is not the one read: replaced
                raise StateConflictError(_conflict_message(expected, self._stored(path)), str(path), hint=CONFLICT_HINT)
            keep = base.journal_end if base.last_at >= 0 else 0
            if os.fstat(fd).st_size != keep:
                os.ftruncate(fd, keep)  # a torn line, or lines already compacted
            n = os.write(fd, line)
            if n != len(line):
                os.ftruncate(fd, keep)
                raise OSError(f"short write to {jpath} ({n} of {len(line)} bytes)")
            if sync:
                os.fsync(fd)
                if created:
                    _fsync_dir(path.parent)
            ino = os.fstat(fd).st_ino
        finally:
            if fd is not None:
                os.close(fd)
        return base._replace(
            serial=base.serial + 1,
            journal_ino=ino,
            journal_size=keep + len(line),
            journal_end=keep + len(line),
            last_at=keep,
            last_head=line[:_LINE_HEAD],
        )

    def targets(self, state_dir: Path) -> list[tuple[str, str]]:
        root = Path(state_dir)
        if not root.is_dir():
            return []
        return [
            (env_dir.name, f.stem)
            for env_dir in sorted(p for p in root.iterdir() if p.is_dir())
            for f in sorted(env_dir.glob("*.json"))
        ]

    def lock(self, path, operation: str, timeout: float = 0):
        """Hold the state file's lock (filelock) for one operation; say who holds it otherwise."""
        path = Path(path)
        return file_lock(
            path.with_name(path.name + ".lock"),
            lock_info(operation, str(path)),
            timeout,
            lambda holder: LockError(f"state is locked ({describe_holder(holder)})", str(path), hint=LOCK_HINT),
        )

    def force_unlock(self, state_dir: Path, lock_id: str) -> Path:
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
            lock = FileLock(str(info_path.with_name(info_path.name[: -len(".info")])), mode=PRIVATE)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                raise LockError(
                    f"lock {lock_id} is held by a running process ({info.get('who')}, pid {info.get('pid')}, "
                    f"{info.get('operation')}); stop it first",
                    str(info_path),
                ) from None
            try:
                info_path.unlink()
            finally:
                lock.release()
            return info_path.with_name(info_path.name[: -len(".lock.info")])
        raise LockError(f"no lock with ID {lock_id} in {root}")


CONFLICT_HINT = "another writer changed it without holding the lock; look at `reconciler history` and run again"


def _conflict_message(expected: Any, found: Any) -> str:
    def fmt(v):
        if v is None:
            return "no state"
        if isinstance(v, tuple):
            return f"lineage {v[0]} serial {v[1]}"
        return f"version {v}"

    return f"state changed since this run read it (read {fmt(expected)}, now {fmt(found)}); not overwritten"


def _sweep_temp_files(path: Path) -> None:
    """Remove the temp files other processes left beside this state file
    (`.<name>.<pid>.tmp`, `.<name>.backup.<pid>.tmp`): a writer killed between creating one
    and renaming it. Every full write runs this while holding the state's lock, and every
    writer writes only under that lock, so a temp file of another process is never one
    being written now: it is removed whatever its process id, without guessing from
    process ids (which the system reuses) whether its writer is alive."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}(?:\.backup)?\.(\d+)\.tmp$")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if m and int(m.group(1)) != os.getpid():
            try:
                os.unlink(path.parent / name)
            except OSError:
                pass


def _copy_atomic(src: Path, dst: Path) -> None:
    """dst becomes the current content of src, atomically. A hard link shares the file
    without copying it (src is then replaced by a new file, never written in place);
    filesystems without links get a copy."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        if tmp.exists():
            tmp.unlink()
        os.link(src, tmp)
        if os.stat(tmp).st_mode & 0o077:  # a state file written by an earlier version
            os.chmod(tmp, PRIVATE)
        os.replace(tmp, dst)
        return
    except OSError:
        pass
    with open(src, "rb") as r, open(private_open(tmp), "wb") as w:
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


# ---------------------------------------------------------------- S3


class RemotePath(PurePosixPath):
    """`s3://bucket/key` as a path: str() gives the URL; .parent.name / .stem give the
    environment and infrastructure like a local state path."""

    @classmethod
    def of(cls, bucket: str, key: str) -> RemotePath:
        return cls("s3:", bucket, *key.split("/"))

    def __str__(self) -> str:
        parts = self.parts
        return "s3://" + "/".join(parts[1:]) if parts and parts[0] == "s3:" else super().__str__()

    def __fspath__(self) -> str:
        return str(self)


class S3Backend(Backend):
    """One object per infrastructure: s3://bucket/key_prefix/environment/infrastructure.json."""

    type = "s3"

    def __init__(self, cfg: BackendConfig, session=None):
        self.cfg = cfg
        self.bucket = cfg.bucket
        self.prefix = (cfg.key_prefix or "").strip("/")
        self._session = session
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()

    # -- AWS: the default credential chain, as deployments without a connector
    def client(self, service: str):
        with self._clients_lock:
            return self._client(service)

    def _client(self, service: str):
        if service not in self._clients:
            import boto3
            from botocore.config import Config

            session = self._session or boto3.session.Session()
            region = self.cfg.region or session.region_name or os.environ.get("AWS_REGION")
            if not region:
                raise ConfigError(
                    "the s3 backend needs a region: backend.region in reconciler.yaml, RECONCILER_BACKEND_REGION "
                    "or AWS_REGION / AWS_DEFAULT_REGION"
                )
            self._clients[service] = session.client(
                service,
                region_name=region,
                config=Config(retries={"mode": "standard", "max_attempts": 8}, connect_timeout=10, read_timeout=60),
            )
        return self._clients[service]

    @property
    def s3(self):
        return self.client("s3")

    def _aws_error(self, what: str, exc: Exception) -> ReconcilerError:
        from reconciler.errors import AwsError

        code = _code(exc)
        if code == "NoSuchBucket":
            return AwsError(
                f"{what}: the state bucket '{self.bucket}' does not exist", hint="create it, with versioning enabled"
            )
        if code == "ResourceNotFoundException" and self.cfg.lock == "dynamodb":
            return AwsError(
                f"{what}: the lock table '{self.cfg.table}' does not exist",
                hint="create it with the string hash key LockID",
            )
        return AwsError(f"{what}: {exc}")

    def encryption(self) -> dict:
        """The server-side encryption every object reconciler puts is written with."""
        if self.cfg.encryption == "aws:kms":
            return {
                "ServerSideEncryption": "aws:kms",
                **({"SSEKMSKeyId": self.cfg.kms_key_id} if self.cfg.kms_key_id else {}),
            }
        return {"ServerSideEncryption": "AES256"}

    def describe(self, state_dir: Path | None = None) -> str:
        lock = f"DynamoDB table {self.cfg.table}" if self.cfg.lock == "dynamodb" else "S3 lock objects"
        return f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''} (lock: {lock})"

    def key(self, environment: str, infrastructure: str) -> str:
        return "/".join(
            p
            for p in (self.prefix, _part(environment, "environment"), f"{_part(infrastructure, 'infrastructure')}.json")
            if p
        )

    def state_path(self, state_dir: Path, environment: str, infrastructure: str) -> RemotePath:
        return RemotePath.of(self.bucket, self.key(environment, infrastructure))

    def _key_of(self, path) -> str:
        return self.key(*_target_of(path))

    def unreadable_hint(self, path) -> str | None:
        return "restore an earlier version of the object (keep versioning enabled on the bucket)"

    def read_key(self, path) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key_of(path) + KEY_SUFFIX
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read().strip() or None
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._aws_error(f"cannot read the state's fingerprint key s3://{self.bucket}/{key}", exc) from None
        except BotoCoreError as exc:
            raise self._aws_error(f"cannot read the state's fingerprint key s3://{self.bucket}/{key}", exc) from None

    def create_key(self, path, key: bytes) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        name = self._key_of(path) + KEY_SUFFIX
        try:
            self.s3.put_object(Bucket=self.bucket, Key=name, Body=key + b"\n", IfNoneMatch="*", **self.encryption())
            return key
        except ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return self.read_key(path) or key
            raise self._aws_error(f"cannot store the state's fingerprint key s3://{self.bucket}/{name}", exc) from None
        except BotoCoreError as exc:
            raise self._aws_error(f"cannot store the state's fingerprint key s3://{self.bucket}/{name}", exc) from None

    def read(self, path) -> tuple[str | None, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key_of(path)
        try:
            r = self.s3.get_object(Bucket=self.bucket, Key=key)
            return r["Body"].read().decode("utf-8"), r["ETag"]
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None, None
            raise self._aws_error(f"cannot read the state s3://{self.bucket}/{key}", exc) from None
        except BotoCoreError as exc:
            raise self._aws_error(f"cannot read the state s3://{self.bucket}/{key}", exc) from None

    def write(self, path, text: str, expected: Any, unbumped: tuple[str, int] | None) -> Any:
        """PutObject conditional on the ETag read (If-Match), or on there being no object
        (If-None-Match: *): a concurrent writer makes S3 refuse the put."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key_of(path)
        cond = {"IfMatch": expected} if expected else {"IfNoneMatch": "*"}
        try:
            r = self.s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=text.encode("utf-8"),
                ContentType="application/json",
                **cond,
                **self.encryption(),
            )
        except ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "412", "NoSuchKey", "ConditionalRequestConflict", "409"):
                now = None
                try:
                    now_text, _ = self.read(path)
                    if now_text:
                        d = json.loads(now_text)
                        now = (d.get("lineage"), d.get("serial"))
                except (ReconcilerError, ValueError):
                    pass
                raise StateConflictError(
                    _conflict_message(unbumped, now), f"s3://{self.bucket}/{key}", hint=CONFLICT_HINT
                ) from None
            raise self._aws_error(f"cannot write the state s3://{self.bucket}/{key}", exc) from None
        except BotoCoreError as exc:
            raise self._aws_error(f"cannot write the state s3://{self.bucket}/{key}", exc) from None
        return r["ETag"]

    def targets(self, state_dir: Path) -> list[tuple[str, str]]:
        from botocore.exceptions import BotoCoreError, ClientError

        prefix = f"{self.prefix}/" if self.prefix else ""
        rx = re.compile(re.escape(prefix) + r"([^/]+)/([^/]+)\.json$")
        out = []
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    m = rx.fullmatch(obj["Key"])
                    if m:
                        out.append((m.group(1), m.group(2)))
        except (ClientError, BotoCoreError) as exc:
            raise self._aws_error(f"cannot list the states in s3://{self.bucket}/{prefix}", exc) from None
        return sorted(out)

    # -- locking
    @contextmanager
    def lock(self, path, operation: str, timeout: float = 0) -> Iterator[str]:
        key = self._key_of(path)
        where = f"s3://{self.bucket}/{key}"
        info = lock_info(operation, where)
        locker = _DynamoLock(self, key) if self.cfg.lock == "dynamodb" else _S3Lock(self, key)
        deadline = time.monotonic() + max(0.0, timeout or 0)
        announced = False
        while True:
            holder = locker.acquire(info)
            if holder is None:
                break
            if time.monotonic() >= deadline:
                raise LockError(f"state is locked ({describe_holder(holder)})", where, hint=LOCK_HINT)
            if not announced:
                log(f"State {where} is locked ({describe_holder(holder)}); waiting up to {timeout:g} s for it.")
                announced = True
            time.sleep(min(LOCK_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        try:
            yield info["id"]
        finally:
            locker.release(info)

    def force_unlock(self, state_dir: Path, lock_id: str) -> RemotePath:
        locker_cls = _DynamoLock if self.cfg.lock == "dynamodb" else _S3Lock
        key = locker_cls.remove(self, lock_id)
        if key is None:
            raise LockError(f"no lock with ID {lock_id} in {self.describe()}")
        return RemotePath.of(self.bucket, key)


def _code(exc: Exception) -> str:
    resp = getattr(exc, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", ""))


def _lock_holder(body: bytes, etag: str) -> dict:
    """What a lock object says about its holder. A damaged one (not a JSON object with an
    id) gets the ID `damaged-<ETag>`, which force-unlock accepts like any other."""
    try:
        holder = json.loads(body)
    except ValueError:
        holder = None
    if not isinstance(holder, dict) or not isinstance(holder.get("id"), str):
        return {"id": "damaged-" + str(etag).strip('"'), "who": "unknown (the lock object is not a lock record)"}
    return holder


class _S3Lock:
    """`<key>.lock` created with If-None-Match: * (fails if it exists); removed with
    If-Match on its own ETag, so a lock taken over after a force-unlock is never removed."""

    def __init__(self, backend: S3Backend, key: str):
        self.b = backend
        self.key = key + ".lock"
        self.etag = None

    def acquire(self, info: dict) -> dict | None:
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = self.b.s3
        try:
            r = s3.put_object(
                Bucket=self.b.bucket,
                Key=self.key,
                Body=json.dumps(info).encode(),
                ContentType="application/json",
                IfNoneMatch="*",
                **self.b.encryption(),
            )
            self.etag = r["ETag"]
            return None
        except ClientError as exc:
            if _code(exc) not in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise self.b._aws_error(f"cannot lock the state s3://{self.b.bucket}/{self.key}", exc) from None
        except BotoCoreError as exc:
            raise self.b._aws_error(f"cannot lock the state s3://{self.b.bucket}/{self.key}", exc) from None
        try:
            r = s3.get_object(Bucket=self.b.bucket, Key=self.key)
        except (ClientError, BotoCoreError):
            return {"id": "?"}  # released meanwhile: poll again
        return _lock_holder(r["Body"].read(), r["ETag"])

    def release(self, info: dict) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.b.s3.delete_object(Bucket=self.b.bucket, Key=self.key, IfMatch=self.etag)
        except ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                log(
                    f"warning: the state lock {info['id']} on s3://{self.b.bucket}/{self.key} was removed by someone else "
                    "(force-unlock) while this run held it"
                )
                return
            log(
                f"warning: could not release the state lock s3://{self.b.bucket}/{self.key}: {exc} "
                f"(remove it with: reconciler force-unlock {info['id']})"
            )
        except BotoCoreError as exc:
            log(
                f"warning: could not release the state lock s3://{self.b.bucket}/{self.key}: {exc} "
                f"(remove it with: reconciler force-unlock {info['id']})"
            )

    @staticmethod
    def remove(b: S3Backend, lock_id: str) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        prefix = f"{b.prefix}/" if b.prefix else ""
        try:
            for page in b.s3.get_paginator("list_objects_v2").paginate(Bucket=b.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith(".json.lock"):
                        continue
                    try:
                        r = b.s3.get_object(Bucket=b.bucket, Key=obj["Key"])
                    except ClientError:
                        continue
                    holder = _lock_holder(r["Body"].read(), r["ETag"])
                    if holder.get("id") != lock_id:
                        continue
                    try:  # only the lock object read: not one that replaced it meanwhile
                        b.s3.delete_object(Bucket=b.bucket, Key=obj["Key"], IfMatch=r["ETag"])
                    except ClientError as exc:
                        if _code(exc) in ("PreconditionFailed", "412", "NoSuchKey"):
                            return None
                        raise
                    return obj["Key"][: -len(".lock")]
        except (ClientError, BotoCoreError) as exc:
            raise b._aws_error("cannot remove the lock", exc) from None
        return None


class _DynamoLock:
    """An item LockID = "<bucket>/<key>" (Terraform's convention) put with
    attribute_not_exists(LockID); deleted only if its ID is ours."""

    def __init__(self, backend: S3Backend, key: str):
        self.b = backend
        self.lock_key = f"{backend.bucket}/{key}"

    def acquire(self, info: dict) -> dict | None:
        from botocore.exceptions import BotoCoreError, ClientError

        ddb = self.b.client("dynamodb")
        item = {
            "LockID": {"S": self.lock_key},
            "ID": {"S": info["id"]},
            "Operation": {"S": info["operation"]},
            "Who": {"S": info["who"]},
            "Created": {"S": info["created"]},
            "Info": {"S": json.dumps(info)},
        }
        try:
            ddb.put_item(
                TableName=self.b.cfg.table,
                Item=item,
                ConditionExpression="attribute_not_exists(LockID)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return None
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise self.b._aws_error(f"cannot lock the state in DynamoDB table {self.b.cfg.table}", exc) from None
            old = exc.response.get("Item") or {}
        except BotoCoreError as exc:
            raise self.b._aws_error(f"cannot lock the state in DynamoDB table {self.b.cfg.table}", exc) from None
        try:
            return (
                json.loads(old.get("Info", {}).get("S", ""))
                if old.get("Info")
                else {"id": old.get("ID", {}).get("S", "?")}
            )
        except ValueError:
            return {"id": old.get("ID", {}).get("S", "?")}

    def release(self, info: dict) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.b.client("dynamodb").delete_item(
                TableName=self.b.cfg.table,
                Key={"LockID": {"S": self.lock_key}},
                ConditionExpression="ID = :id",
                ExpressionAttributeValues={":id": {"S": info["id"]}},
            )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                log(
                    f"warning: the state lock {info['id']} ({self.lock_key}) was removed by someone else (force-unlock) "
                    "while this run held it"
                )
                return
            log(
                f"warning: could not release the state lock {self.lock_key}: {exc} (remove it with: reconciler force-unlock {info['id']})"
            )
        except BotoCoreError as exc:
            log(
                f"warning: could not release the state lock {self.lock_key}: {exc} (remove it with: reconciler force-unlock {info['id']})"
            )

    @staticmethod
    def remove(b: S3Backend, lock_id: str) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        ddb = b.client("dynamodb")
        mine = f"{b.bucket}/{b.prefix + '/' if b.prefix else ''}"
        try:
            for page in ddb.get_paginator("scan").paginate(
                TableName=b.cfg.table, FilterExpression="ID = :id", ExpressionAttributeValues={":id": {"S": lock_id}}
            ):
                for item in page.get("Items", []):
                    lock_key = item["LockID"]["S"]
                    if not lock_key.startswith(mine):
                        continue
                    try:
                        ddb.delete_item(
                            TableName=b.cfg.table,
                            Key={"LockID": {"S": lock_key}},
                            ConditionExpression="ID = :id",
                            ExpressionAttributeValues={":id": {"S": lock_id}},
                        )
                    except ClientError as exc:
                        if _code(exc) == "ConditionalCheckFailedException":
                            return None
                        raise
                    return lock_key[len(b.bucket) + 1 :]
        except (ClientError, BotoCoreError) as exc:
            raise b._aws_error("cannot remove the lock", exc) from None
        return None
