"""Shell scripts of pipeline steps and script provisioners: expressions passed as environment
variables (never pasted as shell text), a minimal environment, and processes that never
outlive their step.

- `prepare_script`: each `<+...>` of a script becomes a reference to an environment
  variable `RECONCILER_EXPR_<n>` holding its value, quoted for where it stands (unquoted:
  `"${V}"`, in double quotes or an unquoted here-document: `${V}`, in single quotes:
  `'"${V}"'`, in $'...': `'"${V}"$'`). No expression value is ever read by the shell as code. An expression in a
  quoted here-document (`<<'EOF'`), where the shell expands nothing, is an error.
- `base_environment`: PATH, HOME, LANG, LC_ALL, TZ and TMPDIR of the runner; nothing else of
  its environment (no credentials) reaches a script unless the step asks for it.
- `run_script`: bash in a new session; the step ends when its shell ends. Then, and on a
  timeout or any exception (SIGTERM/SIGINT of reconciler included), every process the step
  started is killed: its process group, every process carrying the step's marker variable
  (RECONCILER_STEP_RUN) in its environment, their descendants, and on Linux the orphans
  reconciler adopts as a child subreaper (prctl PR_SET_CHILD_SUBREAPER) while the step runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError
from reconciler.workspace.expr import Expr, split_expressions

EXPR_VARIABLE = "RECONCILER_EXPR_"
MARKER = "RECONCILER_STEP_RUN"
PASSED_FROM_RUNNER = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL for what a step leaves behind


# ---------------------------------------------------------------- expressions in script text

_SENTINEL = "\x00"


class _Lexer:
    """Just enough of bash's quoting to know, at each expression, whether it stands unquoted
    ("plain"), in double quotes or an unquoted here-document ("double"), in single quotes
    ("single"), or in a quoted here-document ("literal")."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.contexts: list[str] = []

    def run(self) -> list[str]:
        t, n = self.text, len(self.text)
        stack: list[list] = [["N", 0]]  # N: command (paren depth), D, S, A ($'...'), B (`...`), C (comment)
        pending: list[
            tuple[str, bool, bool]
        ] = []  # here-documents opened on this line: (delimiter, quoted, strip tabs)
        i = 0
        while i < n:
            c = t[i]
            top = stack[-1][0]
            if c == _SENTINEL:
                self.contexts.append(
                    {"N": "plain", "B": "plain", "C": "plain", "D": "double", "S": "single", "A": "dollar"}[top]
                )
                i += 1
                continue
            if top in ("S", "A"):
                if top == "A" and c == "\\":  # only $'...' knows backslash escapes
                    i += 2
                    continue
                if c == "'":
                    stack.pop()
                i += 1
                continue
            if top == "C":
                if c == "\n":
                    stack.pop()
                    continue  # the newline is handled in the command context
                i += 1
                continue
            if c == "\\":
                i += 2
                continue
            if top == "D":
                if c == '"':
                    stack.pop()
                elif t.startswith("$(", i):
                    stack.append(["N", 0])
                    i += 2
                    continue
                elif c == "`":
                    stack.append(["B", 0])
                i += 1
                continue
            # N or B: a command
            if c == "'":
                stack.append(["S"])
            elif c == '"':
                stack.append(["D"])
            elif t.startswith("$'", i):
                stack.append(["A"])
                i += 2
                continue
            elif t.startswith("$(", i):
                stack.append(["N", 0])
                i += 2
                continue
            elif c == "`":
                if top == "B":
                    stack.pop()
                else:
                    stack.append(["B", 0])
            elif c == "(" and top == "N":
                stack[-1][1] += 1
            elif c == ")" and top == "N":
                if stack[-1][1] > 0:
                    stack[-1][1] -= 1
                elif len(stack) > 1:
                    stack.pop()
            elif c == "#" and (i == 0 or t[i - 1] in " \t\n;&|()"):
                stack.append(["C"])
            elif t.startswith("<<", i) and not t.startswith("<<<", i):
                i = self._heredoc_operator(i + 2, pending)
                continue
            elif c == "\n" and pending:
                i = self._heredoc_bodies(i + 1, pending)
                pending = []
                continue
            i += 1
        return self.contexts

    def _heredoc_operator(self, i: int, pending: list) -> int:
        t = self.text
        strip = t.startswith("-", i)
        if strip:
            i += 1
        while i < len(t) and t[i] in " \t":
            i += 1
        j = i
        while j < len(t) and t[j] not in " \t\n;&|<>()":
            j += 1
        word = t[i:j]
        quoted = any(q in word for q in "'\"\\")
        delim = word.replace("'", "").replace('"', "").replace("\\", "")
        if delim:
            pending.append((delim, quoted, strip))
        return j

    def _heredoc_bodies(self, i: int, pending: list) -> int:
        t = self.text
        for delim, quoted, strip in pending:
            while i < len(t):
                end = t.find("\n", i)
                end = len(t) if end < 0 else end
                line = t[i:end]
                if (line.lstrip("\t") if strip else line) == delim:
                    i = end + 1
                    break
                self.contexts += ["literal" if quoted else "double"] * line.count(_SENTINEL)
                i = end + 1
        return i


def prepare_script(
    text: str, resolve: Callable[[Expr], Any], where: Callable[[], tuple[str, int | None]]
) -> tuple[str, dict[str, str]]:
    """The script with each expression replaced by a reference to an environment variable,
    and those variables' values. `resolve` gives one expression's value."""
    if "<+" not in text:
        return text, {}
    parts = split_expressions(text, where)
    contexts = _Lexer("".join(p if isinstance(p, str) else _SENTINEL for p in parts)).run()
    out: list[str] = []
    names: dict[str, str] = {}
    values: dict[str, str] = {}
    k = 0
    for p in parts:
        if isinstance(p, str):
            out.append(p)
            continue
        ctx = contexts[k] if k < len(contexts) else "plain"
        k += 1
        if ctx == "literal":
            file, line = where()
            raise ConfigError(
                f"expression '{p.source[:40]}' stands in a quoted here-document (<<'EOF'), where the shell expands "
                "nothing: its value would be pasted into the script as code",
                file,
                line,
                "use an unquoted here-document (<<EOF), or pass the value in environmentVariables and read it there",
            )
        name = names.get(p.source)
        if name is None:
            name = names[p.source] = f"{EXPR_VARIABLE}{len(names) + 1}"
            value = resolve(p)
            values[name] = (
                "" if value is None else ("true" if value is True else "false" if value is False else str(value))
            )
        ref = "${" + name + "}"
        out.append({"plain": f'"{ref}"', "double": ref, "single": f"'\"{ref}\"'", "dollar": f"'\"{ref}\"$'"}[ctx])
    return "".join(out), values


def base_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """What a script gets of the runner's environment: PATH, HOME, LANG, LC_ALL, TZ, TMPDIR."""
    env = os.environ if environ is None else environ
    out = {k: env[k] for k in PASSED_FROM_RUNNER if env.get(k)}
    out.setdefault("PATH", DEFAULT_PATH)
    return out


# ---------------------------------------------------------------- running


@dataclass
class ScriptResult:
    exit_code: int | None
    timed_out: bool
    output: str
    outputs: dict
    errors: str = ""  # stderr, when it was kept apart (separate_stderr)


def run_script(
    script: str,
    env: dict,
    cwd: Path,
    timeout: float | None,
    outputs: list[tuple[str, str]],
    on_line: Callable[[str], None] = lambda line: None,
    mask: Callable[[str], str] = lambda s: s,
    separate_stderr: bool = False,
) -> ScriptResult:
    """Run `script` with bash and exactly the environment `env`. The shell variables named in
    `outputs` ((output name, shell variable)) are read back when it exits. Every line the
    script prints goes through `mask`, then to `on_line` (stderr too, unless
    `separate_stderr`: then it is kept in `errors`). Whatever the script started is killed
    when its shell exits, on the timeout, and on any exception."""
    with tempfile.TemporaryDirectory(prefix="reconciler-step-") as tmp:
        out_file = Path(tmp) / "outputs"
        path = Path(tmp) / "script.sh"
        names = " ".join(sorted({var for _, var in outputs}))
        trailer = ""
        if names:
            trailer = (
                f'__reconciler_outputs() {{ for __n in {names}; do if [ -n "${{!__n+x}}" ]; then '
                f'printf \'%s\\0%s\\0\' "$__n" "${{!__n}}"; fi; done > {_sh_quote(str(out_file))}; }}\n'
                "trap __reconciler_outputs EXIT\n"
            )
        path.write_text(trailer + script + "\n", encoding="utf-8")
        marker = uuid.uuid4().hex
        chunks: list[str] = []
        timed_out = False
        err_path = Path(tmp) / "stderr"
        with _subreaper() as before, open(err_path, "wb") as err_file:
            proc = subprocess.Popen(
                ["bash", str(path)],
                cwd=str(cwd),
                env={**env, MARKER: marker},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err_file if separate_stderr else subprocess.STDOUT,
                start_new_session=True,
            )
            reader = _Reader(proc.stdout, lambda line: _emit(mask(line), chunks, on_line))
            try:
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
            finally:
                with _signals_deferred():  # a second Ctrl-C or SIGTERM must not cut the clean-up short
                    kill_step(proc, marker, before)
                    reader.finish()
        got: dict[str, str] = {}
        if out_file.exists():
            parts = out_file.read_bytes().decode("utf-8", errors="replace").split("\0")
            values = dict(zip(parts[0::2], parts[1::2], strict=False))
            got = {name: mask(values[var]) for name, var in outputs if var in values}
        errors = mask(err_path.read_bytes()[-65536:].decode("utf-8", errors="replace")) if separate_stderr else ""
        return ScriptResult(None if timed_out else proc.returncode, timed_out, "\n".join(chunks), got, errors)


def _emit(line: str, chunks: list[str], on_line: Callable[[str], None]) -> None:
    chunks.append(line)
    on_line(line)


class _Reader:
    """Reads a step's output in a thread, line by line, without ever waiting on the pipe after
    the step has ended: a process that escaped with a copy of it cannot hold the step up."""

    def __init__(self, stream, on_line: Callable[[str], None]) -> None:
        self.fd = stream.fileno()
        self.stream = stream
        self.on_line = on_line
        self.stop = threading.Event()
        self.deadline = 0.0
        self.buf = b""
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if self.stop.is_set() and (not ready or time.monotonic() > self.deadline):
                break  # the step has ended: what is left in the pipe now is all there is
            if not ready:
                continue
            data = os.read(self.fd, 65536)
            if not data:
                break
            self.buf += data
            *lines, self.buf = self.buf.split(b"\n")
            for raw in lines:
                self.on_line(raw.decode("utf-8", errors="replace").rstrip("\r"))
        if self.buf:
            self.on_line(self.buf.decode("utf-8", errors="replace"))
            self.buf = b""

    def finish(self) -> None:
        self.deadline = time.monotonic() + 1.0
        self.stop.set()
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            with contextlib.suppress(OSError):
                self.stream.close()


# ---------------------------------------------------------------- killing what a step started


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37


@contextlib.contextmanager
def _subreaper() -> Iterator[set[int]]:
    """While the step runs, make this process the child subreaper (Linux): orphans of the
    step (a `setsid` child whose parent exited) become its children instead of init's, so
    they can be found and killed. Yields the pids of the children that existed before."""
    before = set(_children())
    libc = None
    was = ctypes.c_int(0)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            libc = None
    try:
        yield before
    finally:
        if libc is not None and not was.value:
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _proc_table() -> dict[int, tuple[int, int, int, str]]:
    """pid → (ppid, pgid, session, state) of every process (Linux /proc; empty elsewhere)."""
    table: dict[int, tuple[int, int, int, str]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for e in entries:
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        if len(rest) >= 4:
            table[int(e)] = (int(rest[1]), int(rest[2]), int(rest[3]), rest[0])
    return table


def _children() -> list[int]:
    me = os.getpid()
    return [pid for pid, (ppid, _, _, _) in _proc_table().items() if ppid == me]


def _has_marker(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return needle in f.read()
    except OSError:
        return False


def step_processes(shell_pid: int, marker: str, before: set[int]) -> set[int]:
    """Every live process the step started: its process group and session, the processes
    carrying its marker, orphans this process adopted during the step, and all their descendants."""
    table = _proc_table()
    me = os.getpid()
    needle = f"{MARKER}={marker}\0".encode()
    found = {
        pid
        for pid, (ppid, pgid, sid, state) in table.items()
        if pid != me
        and state != "Z"
        and (
            pgid == shell_pid
            or sid == shell_pid
            or pid == shell_pid
            or (ppid == me and pid not in before)
            or _has_marker(pid, needle)
        )
    }
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _, state) in table.items():
        if state != "Z":
            kids.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in kids.get(todo.pop(), []):
            if child not in found and child != me:
                found.add(child)
                todo.append(child)
    return found


def kill_step(proc: subprocess.Popen, marker: str, before: set[int]) -> None:
    """Kill everything the step started (SIGTERM, then SIGKILL after KILL_GRACE), reap it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = step_processes(proc.pid, marker, before)
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, sig)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (KILL_GRACE if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            _reap(before, proc.pid)
            if proc.poll() is not None and not step_processes(proc.pid, marker, before):
                break
            time.sleep(0.02)
        else:
            continue
        break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    _reap(before, proc.pid)


def _reap(before: set[int], shell_pid: int) -> None:
    """Collect the exit status of adopted orphans that have ended (zombies of this process)."""
    me = os.getpid()
    for pid, (ppid, _, _, state) in _proc_table().items():
        if ppid == me and state == "Z" and pid not in before and pid != shell_pid:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
