"""The state: one JSON document per infrastructure definition, read, written and locked
through the current backend (reconciler.store.backend).

The local backend (the default) keeps `<state-dir>/<environment>/<infrastructure>.json`,
written atomically (temp file, fsync, rename) with the previous copy kept as `.backup`
(sealed, if that copy held a value in clear that this version seals),
and locked with filelock while an apply or rollback is writing it. An apply records each
step by appending one line to `<infrastructure>.json.journal` (State.append) instead of
rewriting the file; every read replays it, and a full write compacts it away. The s3 backend keeps
the same JSON in `s3://<bucket>/<key_prefix>/<environment>/<infrastructure>.json`.
Every write is conditional on the version this run read, so a writer that did not take
the lock is detected, not overwritten. The format is documented in state/README.md.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.store import backend as _backend
from reconciler.store.base import StateConflictError  # noqa: F401  (re-exported)
from reconciler.store.local import LocalBackend, LocalVersion
from reconciler.store.seals import LazySealer, sealer_for
from reconciler.util import secrets as _secrets

FORMAT_VERSION = 1

# one journal line: compact JSON through json's C encoder (never a newline inside)
_encode_line = json.JSONEncoder(separators=(",", ":"), default=str).encode


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def state_dir_default() -> Path:
    return Path(os.environ.get("RECONCILER_STATE_DIR") or "state")


@dataclass
class State:
    """The content of one state file."""

    path: PurePath  # a Path (local) or an s3:// RemotePath
    environment: str
    infrastructure: str
    lineage: str = field(default_factory=lambda: str(uuid.uuid4()))
    serial: int = 0
    region: str = ""
    functions: dict[str, dict] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)  # "s3://b/k#etag" → sha256 (base64)
    exists: bool = False
    # the version of the stored document this State was read from or last wrote: the next
    # write is conditional on it (local: (lineage, serial); s3: the object's ETag)
    read_version: Any = field(default=None, repr=False, compare=False)
    backend: Any = field(default=None, repr=False, compare=False)
    # the stored file was checked to hold no value in clear that this version seals (its
    # backup may be kept as it is)
    backup_checked: bool = field(default=False, init=False, repr=False, compare=False)

    def to_dict(self) -> dict:
        """The stored document: every sensitive environment value sealed (never in clear)."""
        return sealed(
            {
                "format_version": FORMAT_VERSION,
                "lineage": self.lineage,
                "serial": self.serial,
                "environment": self.environment,
                "infrastructure": self.infrastructure,
                "region": self.region,
                "functions": dict(sorted(self.functions.items())),
                "artifacts": self.artifacts,
                "history": self.history,
            },
            LazySealer(self.path),
        )

    @property
    def ref(self) -> dict:
        return {"lineage": self.lineage if self.exists else None, "serial": self.serial if self.exists else None}

    def write(self, *, bump: bool = True) -> None:
        """Bump the serial and replace the stored state, if it is still the version this run
        read (else StateConflictError, nothing written). Local: atomic, previous copy kept."""
        b = self.backend or _backend.current()
        before = (self.lineage, self.serial) if self.exists else None
        self.history = prune_history(self.history, b.history_limit)
        if bump:
            self.serial += 1
        text = dumps(self.to_dict())
        try:
            backup = self._sealed_backup(b)
            token = b.write(self.path, text, self.read_version, before, backup)
        except BaseException:
            if bump:
                self.serial -= 1
            raise
        self.read_version = token if token is not None else (self.lineage, self.serial)
        self.backend = b
        self.exists = True
        self.backup_checked = True  # the stored file is now this version's, sealed

    def _sealed_backup(self, b: Any) -> str | None:
        """What the backup of the stored file must hold when that file holds a value in
        clear that this version seals (it was written before sealing existed, or before
        the policy counted the value sensitive): the file's document sealed. None: keep
        the file as it is. Checked once: after a write, the stored file is sealed."""
        if not self.exists or not b.keeps_backup or self.backup_checked:
            return None
        text, _ = b.read(self.path)
        try:
            data = json.loads(text) if text is not None else None
        except ValueError:
            return None  # an unreadable file is kept as it is (restoring it is what a backup is for)
        if not isinstance(data, dict):
            return None
        out = sealed(data, LazySealer(self.path))
        return dumps(out) if out != data else None

    def append(self, functions: Iterable[str] = (), records: Iterable[dict] = (), *, sync: bool | None = None) -> None:
        """Record one step without rewriting the state: bump the serial and append one line
        to the journal, holding the current value of each named entry of `functions` (null:
        removed), the given history records (whole; replay upserts them by id) and the
        region. Conditional like write() (StateConflictError, nothing written). A state not
        stored yet, or a backend without a journal (s3), gets a full write() instead; a
        journal grown larger than the state file is compacted (write()).

        fsync: a line is complete once its single write() returns, which is all a killed
        process needs; `sync` (default: when a record starts in flight, i.e. in_progress
        with no step yet) also fsyncs it, so the marker a killed apply leaves for the next
        plan survives a power loss too. Later steps are not fsync'ed (~0.2 ms each on this
        kind of disk, more than the append itself): losing them to a power cut leaves the
        record in flight, which the next apply converges."""
        b = self.backend or _backend.current()
        if not (self.exists and b.journal and isinstance(self.read_version, LocalVersion)):
            self.write()
            return
        recs: list[dict] = []
        for r in records:
            if not any(r is x for x in recs):
                recs.append(r)
        sealer = LazySealer(self.path)
        named = {name: _secrets.seal_entry(self.functions.get(name), sealer) for name in functions}
        line = (
            _encode_line(
                {
                    "lineage": self.lineage,
                    "serial": self.serial + 1,
                    "region": self.region,
                    "functions": named,
                    "records": [_secrets.seal_record(r, sealer) for r in recs],
                }
            ).encode("utf-8")
            + b"\n"
        )
        if sync is None:
            sync = any(r.get("status") == "in_progress" and not r.get("steps") for r in recs)
        version = b.append(self.path, line, self.read_version, sync)
        self.serial, self.read_version, self.backend = version.serial, version, b
        if version.journal_size > version.file_size:
            self.write()

    def compact(self) -> None:
        """Write the state whole if steps are journaled (the journal is then removed)."""
        v = self.read_version
        if self.exists and isinstance(v, LocalVersion) and v.journal_size:
            self.write()

    def deployments(self, function: str | None = None) -> list[dict]:
        return [h for h in self.history if function is None or h.get("function") == function]


def sealed(doc: dict, sealer: _secrets.Seals) -> dict:
    """A state document with every sensitive environment value of its functions and of its
    history's snapshots sealed (the document itself is not changed)."""
    out = dict(doc)
    functions, history = doc.get("functions"), doc.get("history")
    if isinstance(functions, dict):
        out["functions"] = {k: _secrets.seal_entry(v, sealer) for k, v in functions.items()}
    if isinstance(history, list):
        out["history"] = [_secrets.seal_record(h, sealer) if isinstance(h, dict) else h for h in history]
    return out


def prune_history(history: list[dict], keep: int) -> list[dict]:
    """The newest `keep` records of each function (the list is oldest first), so that old
    configurations do not stay in the state for ever; an unfinished record (its process
    was killed, or its rollback failed) is always kept, for the next apply to converge."""
    from reconciler.model import unfinished

    seen: dict[str, int] = {}
    out = []
    for h in reversed(history):
        fn = str(h.get("function"))
        seen[fn] = seen.get(fn, 0) + 1
        if seen[fn] <= keep or unfinished(h):
            out.append(h)
    if len(out) == len(history):
        return history
    out.reverse()
    return out


def dumps(doc: dict) -> str:
    """The state as JSON with one line per top-level field, per function and per history
    record: readable and diff-friendly, and fast to write after every apply step (each
    line goes through json's C encoder; an indented dump is several times slower)."""

    def block(key: str, body: str, open_: str, close: str) -> str:
        return f"  {json.dumps(key)}: {open_}\n{body}\n  {close}" if body else f"  {json.dumps(key)}: {open_}{close}"

    parts = []
    for key, value in doc.items():
        if key in ("functions", "artifacts") and isinstance(value, dict):
            body = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v, default=str)}" for k, v in value.items())
            parts.append(block(key, body, "{", "}"))
        elif key == "history" and isinstance(value, list):
            parts.append(block(key, ",\n".join(f"    {json.dumps(v, default=str)}" for v in value), "[", "]"))
        else:
            parts.append(f"  {json.dumps(key)}: {json.dumps(value, default=str)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def state_path(state_dir: Path, environment: str, infrastructure: str):
    """Where the state of one infrastructure lives: a Path (local) or an s3:// RemotePath."""
    return _backend.current().state_path(state_dir, environment, infrastructure)


def parse(text: str, path: Any, environment: str, infrastructure: str, hint: str | None = None) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReconcilerError(f"state file is unreadable: {exc}", str(path), hint=hint) from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise ReconcilerError(
            f"state file has format_version {data.get('format_version') if isinstance(data, dict) else '?'}; this reconciler reads {FORMAT_VERSION}",
            str(path),
        )
    if (
        not isinstance(data.get("lineage"), str)
        or not isinstance(data.get("serial"), int)
        or isinstance(data.get("serial"), bool)
    ):
        raise ReconcilerError("state file has no lineage/serial", str(path), hint=hint)
    return data


# the shape every reader relies on: top-level fields, and in function entries and history
# records the fields that hold mappings or lists (a null is accepted where a field is optional)
_TOP = {
    "lineage": str,
    "serial": int,
    "environment": str,
    "infrastructure": str,
    "region": str,
    "functions": dict,
    "history": list,
    "artifacts": dict,
}
_FUNCTION = {
    "service": str,
    "region": str,
    "arn": str,
    "version": str,
    "code_sha256": str,
    "configuration": dict,
    "tags": dict,
    "aliases": dict,
    "code_source": dict,
    "code_params": dict,
    "architectures": list,
}
_RECORD = {
    "id": str,
    "function": str,
    "operation": str,
    "status": str,
    "previous": dict,
    "steps": list,
    "code_source": dict,
}
_NAMES = {str: "a string", int: "an integer", dict: "a mapping", list: "a list"}


def check_shape(data: dict, path: Any, hint: str | None = None) -> None:
    """A state document has the types every command relies on; else one clear error naming
    the state file and the first field that is wrong."""

    def bad(where: str, want: type, got: Any) -> ReconcilerError:
        kind = "null" if got is None else "true/false" if isinstance(got, bool) else type(got).__name__
        return ReconcilerError(
            f"state file is damaged: {where} must be {_NAMES[want]}, got {kind}",
            str(path),
            hint=hint or "restore it from its .backup or with `reconciler state push`",
        )

    def ok(value: Any, want: type) -> bool:
        return isinstance(value, want) and not (want is int and isinstance(value, bool))

    for key, want in _TOP.items():
        if (
            key in data
            and not ok(data[key], want)
            and not (data[key] is None and key in ("region", "environment", "infrastructure"))
        ):
            raise bad(key, want, data[key])
    for name, rec in (data.get("functions") or {}).items():
        if not ok(rec, dict):
            raise bad(f"functions.{name}", dict, rec)
        for key, want in _FUNCTION.items():
            if rec.get(key) is not None and not ok(rec[key], want):
                raise bad(f"functions.{name}.{key}", want, rec[key])
    for i, rec in enumerate(data.get("history") or []):
        if not ok(rec, dict):
            raise bad(f"history[{i}]", dict, rec)
        for key, want in _RECORD.items():
            if rec.get(key) is not None and not ok(rec[key], want):
                raise bad(f"history[{i}].{key}", want, rec[key])
    for key, value in (data.get("artifacts") or {}).items():
        if not ok(value, str):
            raise bad(f"artifacts.{key}", str, value)


def from_dict(
    data: dict, path: Any, environment: str, infrastructure: str, version: Any = None, backend: Any = None
) -> State:
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
        read_version=version if version is not None else (data["lineage"], int(data["serial"])),
        backend=backend,
    )


def _read(b, path: Any, environment: str, infrastructure: str) -> tuple[dict | None, Any, str | None]:
    """(document, version, stored text) of one state, journaled steps replayed into the
    document; (None, None, None) when there is none."""
    for _ in range(5):
        try:
            text, token = b.read(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ReconcilerError(f"state file is unreadable: {exc}", str(path), hint=b.unreadable_hint(path)) from None
        if text is None:
            return None, None, None
        data = parse(text, path, environment, infrastructure, hint=b.unreadable_hint(path))
        check_shape(data, path, b.unreadable_hint(path))
        version = b.replay(path, data, text, token)
        if version is not None and (b.journal or _secrets.SEAL_PREFIX in text):
            sealer_for(path, create=False)  # its seals can be checked (drift, rollback)
        if version is not None:
            check_shape(data, path, b.unreadable_hint(path))
            return data, version, text
    raise ReconcilerError("state file keeps being replaced while it is read", str(path), hint="run again")


def load(state_dir: Path, environment: str, infrastructure: str) -> State:
    b = _backend.current()
    path = b.state_path(state_dir, environment, infrastructure)
    data, version, _ = _read(b, path, environment, infrastructure)
    if data is None:
        return State(path=path, environment=environment, infrastructure=infrastructure, backend=b)
    return from_dict(data, path, environment, infrastructure, version, b)


def stored_text(path: Any, b: Any = None) -> str | None:
    """The stored state as JSON text (None: there is none): the stored document as it is,
    or, when steps are journaled beside a local file, the state they make."""
    b = b or _backend.current()
    data, version, text = _read(b, path, "", "")
    if data is None:
        return None
    if isinstance(version, LocalVersion) and version.serial != version.file_serial:
        return dumps(from_dict(data, path, "", "").to_dict())
    return text


def parse_file(path: Path) -> dict:
    """A local state file parsed, with the steps journaled beside it (`<file>.journal`)."""
    b = LocalBackend()
    data, _, _ = _read(b, Path(path), "", "")
    if data is None:
        raise ReconcilerError("cannot read state file: no such file", str(path))
    return data


def targets(state_dir: Path) -> list[tuple[str, str]]:
    """(environment, infrastructure) of every state below the state directory / key prefix."""
    return _backend.current().targets(state_dir)


def all_states(state_dir: Path) -> list[State]:
    """Every state below the state directory (local) or the key prefix (s3)."""
    return [load(state_dir, env, infra) for env, infra in _backend.current().targets(state_dir)]


def readable_states(
    state_dir: Path, errors: list, environments: Iterable[str] = (), infrastructures: Iterable[str] = ()
) -> list[State]:
    """The states below the state directory (of these environments and infrastructures, if
    given) that can be read; the error of each that cannot is appended to `errors`, so that
    one damaged state does not hide the others."""
    envs, infras = set(environments), set(infrastructures)
    out = []
    for env, infra in _backend.current().targets(state_dir):
        if (envs and env not in envs) or (infras and infra not in infras):
            continue
        try:
            out.append(load(state_dir, env, infra))
        except ReconcilerError as exc:
            errors.append(exc)
    return out


# ---------------------------------------------------------------- locking


def locked(path: Any, operation: str, timeout: float = 0):
    """Hold the lock of one state for one operation (a context manager yielding the lock ID);
    a held lock raises LockError saying who holds it, after waiting up to `timeout` seconds."""
    return _backend.current().lock(path, operation, timeout)


def describe(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def force_unlock(state_dir: Path, lock_id: str):
    """Remove the lock with this ID (local: only a record left behind by a dead runner;
    s3/dynamodb: the lock object/item, if its ID still matches). Returns the state's path."""
    return _backend.current().force_unlock(state_dir, lock_id)
