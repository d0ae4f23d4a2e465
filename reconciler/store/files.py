"""The files reconciler writes: created 0600 (private_open, write_private), directories 0700,
atomic replacement helpers (temp files, hard-link copies, directory fsync), and the OS file
lock with its `.info` record that holds a local state (file_lock).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from reconciler.errors import ReconcilerError

PRIVATE = 0o600  # every file reconciler writes: read and written by its owner only


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
    # (Timeout is an OSError too, caught above) a read-only or full state directory: nothing
    # has been changed yet
    except OSError as exc:
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
        with suppress(OSError):
            info_path.unlink()
        lock.release()


def sweep_temp_files(path: Path) -> None:
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
            with suppress(OSError):
                os.unlink(path.parent / name)


def copy_atomic(src: Path, dst: Path) -> None:
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


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` (0600, it must not exist) holding `data`, fsync'ed."""
    fd = private_open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def create_whole(path: Path, data: bytes) -> bool:
    """Create `path` holding `data`, never to be seen empty or partly written: written to a
    temp file and hard-linked into place (a link fails if `path` exists). False: `path`
    exists, nothing changed. A filesystem without hard links gets `path` created
    exclusively and then written (a reader may then see it empty for a moment)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    _write_new(tmp, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:  # no hard links here
        try:
            _write_new(path, data)
        except FileExistsError:
            return False
    finally:
        with suppress(OSError):
            os.unlink(tmp)
    fsync_dir(path.parent)
    return True


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (a temp file `.<name>.<pid>.tmp`, 0600, fsync,
    rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with suppress(FileNotFoundError):
        tmp.unlink()
    _write_new(tmp, data)
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
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
