"""`--stats` and progress: API calls by operation, Lambda calls by quota class (throttles,
time waiting for capacity, the floor the quotas set), wall time per phase, peak memory; a
progress bar (or plain lines) on stderr. Standard library only at import time (rich is
imported only when a bar is really drawn), so that the CLI starts fast."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress as Bar
    from rich.progress import TaskID

PHASES = ("load/render", "refresh", "plan", "apply")


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


class Stats:
    """Wall time per phase (summed when a phase runs more than once)."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t

    def to_dict(self, calls: dict[str, int] | None, quotas: dict[str, dict] | None = None) -> dict:
        d = {
            "calls": dict(sorted((calls or {}).items())),
            "phases": {k: round(v, 4) for k, v in self.phases.items()},
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
        if quotas:
            d["quotas"] = quotas
            d["floor_s"] = max(q["floor_s"] for q in quotas.values())
        return d

    def render(
        self, calls: dict[str, int] | None, functions: int | None = None, quotas: dict[str, dict] | None = None
    ) -> str:
        """A human table, then the machine line `stats: {json}`. `quotas`: per Lambda quota
        class {rate, calls (requests sent, retries included), throttled, waited_s, floor_s}."""
        d = self.to_dict(calls, quotas)
        lines = ["API calls:"]
        width = max([len(k) for k in d["calls"]] + [10])
        for op, n in d["calls"].items():
            lines.append(f"  {op.ljust(width)}  {n:>7}")
        total = sum(d["calls"].values())
        lines.append(f"  {'total'.ljust(width)}  {total:>7}")
        lam = sum(n for op, n in d["calls"].items() if op.startswith("lambda."))
        if functions:
            lines.append(f"  Lambda calls per function: {lam / functions:.2f} ({lam} for {functions} function(s))")
        if quotas:
            lines.append("Lambda quotas (per account and region):")
            lines.append(
                f"  {'class'.ljust(13)}  {'rate/s':>6}  {'requests':>8}  {'throttled':>9}  {'waited':>9}  {'floor':>8}"
            )
            for cls, q in quotas.items():
                lines.append(
                    f"  {cls.ljust(13)}  {q['rate']:>6g}  {q['calls']:>8}  {q['throttled']:>9}  {q['waited_s']:>8.2f}s  {q['floor_s']:>7.2f}s"
                )
            lines.append(f"  floor: {d['floor_s']:.2f} s (the slowest class; waited is summed over threads)")
        lines.append("Wall time:")
        for name in [p for p in PHASES if p in d["phases"]] + [p for p in d["phases"] if p not in PHASES]:
            lines.append(f"  {name.ljust(12)}  {d['phases'][name]:8.3f} s")
        lines.append(f"Peak memory: {d['peak_rss_mb']:.1f} MB")
        if functions is not None:
            d["functions"] = functions
        lines.append("stats: " + json.dumps(d, sort_keys=True, separators=(",", ":")))
        return "\n".join(lines) + "\n"


class Progress:
    """Per-function progress of a phase on stderr: a live rich bar when stderr is a
    terminal, else plain lines (only when verbose). Thread-safe; callable as
    `progress(phase, done, total, item)`."""

    def __init__(self, verbose: bool = False, tty: bool | None = None, color: bool = True) -> None:
        self.verbose = verbose
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.color = color
        self._lock = threading.Lock()
        self._bar: Bar | None = None
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, phase: str, done: int, total: int, item: str = "") -> None:
        with self._lock:
            if self.tty:
                self._draw(phase, done, total)
            elif self.verbose:
                print(f"{phase} {done}/{total} {item}".rstrip(), file=sys.stderr, flush=True)

    def _draw(self, phase: str, done: int, total: int) -> None:
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True, no_color=not self.color),
                transient=True,
            )
            self._bar.start()
        if phase not in self._tasks:
            self._tasks[phase] = self._bar.add_task(phase, total=total)
        self._bar.update(self._tasks[phase], completed=done, total=total)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
                self._tasks.clear()


def _no_progress(phase: str, done: int, total: int, item: str = "") -> None:
    """A progress callback that shows nothing."""


NO_PROGRESS: Callable[[str, int, int, str], None] = _no_progress
