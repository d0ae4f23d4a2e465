"""Domain errors. Each one is printed as a single line by the CLI and exits 1."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ReconcilerError(Exception):
    """An error the user can act on: where it is, what is wrong, and the fix."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.hint = hint

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        text = f"{where}{self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigError(ReconcilerError):
    """Bad input in the workspace: YAML, JSON, expressions, references."""


class ErrorList(ReconcilerError):
    """Several configuration errors found in one pass, reported together."""

    def __init__(self, errors: list[ReconcilerError]):
        super().__init__(f"{len(errors)} error(s) in the workspace")
        self.errors = errors


class AwsError(ReconcilerError):
    """An AWS call failed in a way that retries did not fix; `code` is AWS's error code."""

    code: str = ""
    attempts: int = 0  # botocore's retries before the answer that failed


class StaleError(ReconcilerError):
    """A saved plan no longer matches the state or what is live."""


class LockError(ReconcilerError):
    """The state is locked by somebody else."""


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to `word` (case-insensitive), or None."""
    cands = list(candidates)
    lowered = {c.lower(): c for c in cands}
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    cands = sorted(set(candidates))
    best = closest(word, cands)
    if best:
        return f"did you mean '{best}'?"
    if cands and len(cands) <= 12:
        return "valid: " + ", ".join(cands)
    return None
