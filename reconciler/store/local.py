"""The local backend (the default): `<state-dir>/<environment>/<infrastructure>.json`, written
atomically with a `.backup` copy, locked with filelock (`.lock` + `.lock.info`), and beside
it the journal `<infrastructure>.json.journal`: one line per step recorded since the file
was last written whole (state/README.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

from reconciler.errors import LockError
from reconciler.store.base import (
    CONFLICT_HINT,
    KEY_SUFFIX,
    Backend,
    StateConflictError,
    conflict_message,
    keep_one_key,
    path_part,
)
from reconciler.store.files import (
    PRIVATE,
    copy_atomic,
    create_whole,
    file_lock,
    fsync_dir,
    private_mkdir,
    private_open,
    sweep_temp_files,
    write_atomic,
)
from reconciler.store.locks import LOCK_HINT, describe_holder, lock_info

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


class LocalBackend(Backend):
    """One JSON file per infrastructure below the state directory, and beside it the
    journal of the steps recorded since it was last written whole."""

    type = "local"
    journal = True
    keeps_backup = True

    def describe(self, state_dir: Path | None = None) -> str:
        return f"local ({state_dir})" if state_dir else "local"

    def state_path(self, state_dir: Path, environment: str, infrastructure: str) -> Path:
        return (
            Path(state_dir)
            / path_part(environment, "environment")
            / f"{path_part(infrastructure, 'infrastructure')}.json"
        )

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
        """Store `key` as `<state>.key` unless it exists, linked into place whole (never
        seen empty); when another run made it first, its key, once readable whole."""
        kp = Path(str(path) + KEY_SUFFIX)
        private_mkdir(kp.parent)
        return keep_one_key(key, lambda: create_whole(kp, key + b"\n"), lambda: self.read_key(path), str(kp))

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
        if fd is None:
            return expected.journal_size == 0
        stat = os.fstat(fd)
        size = stat.st_size
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
            raise StateConflictError(conflict_message(expected, self._stored(path)), str(path), hint=CONFLICT_HINT)
        if (
            isinstance(expected, LocalVersion)
            and head == (expected.lineage, expected.file_serial)
            and self._journal_unchanged(fd, expected)
        ):
            return expected
        now = self._stored(path) if head is not None else None
        if isinstance(now, LocalVersion) and (now.lineage, now.serial) == (expected[0], expected[1]):
            return now
        raise StateConflictError(conflict_message(expected, now), str(path), hint=CONFLICT_HINT)

    @staticmethod
    def _open_journal(path: Path) -> int | None:
        try:
            return os.open(LocalBackend.journal_path(path), os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            return None

    def write(self, path, text: str, expected: Any, unbumped: tuple[str, int] | None, backup: str | None = None) -> Any:
        """Atomic replace (temp file, fsync, rename) keeping the previous copy as .backup
        (the file as it is, or `backup` when given: the state sealed), after checking that the state is still the one this run read (lineage + serial of
        the file, and its journal); then the journal, now compacted into it, is removed."""
        path = Path(path)
        private_mkdir(path.parent)
        fd = self._open_journal(path)
        try:
            self._check(path, expected, fd)
        finally:
            if fd is not None:
                os.close(fd)
        sweep_temp_files(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(private_open(tmp), "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            if backup is None:
                copy_atomic(path, path.with_name(path.name + ".backup"))
            else:
                write_atomic(path.with_name(path.name + ".backup"), backup.encode("utf-8"))
        os.replace(tmp, path)
        fsync_dir(path.parent)
        # a crash before this leaves lines at or below the new serial: replay skips them
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.journal_path(path))
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
            if fd is None:
                try:
                    fd = private_open(jpath, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL)
                except FileExistsError:
                    raise StateConflictError(
                        conflict_message(expected, self._stored(path)), str(path), hint=CONFLICT_HINT
                    ) from None
            elif base is not expected and os.fstat(fd).st_ino != base.journal_ino:
                # read whole meanwhile, and the journal open is not the one read: replaced
                raise StateConflictError(conflict_message(expected, self._stored(path)), str(path), hint=CONFLICT_HINT)
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
                    fsync_dir(path.parent)
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
