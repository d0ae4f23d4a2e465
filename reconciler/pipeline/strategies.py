"""Failure strategies: which `failureStrategies` action answers a step's failure (the
step's own, then its step group's, the stage's, the pipeline's; none matching: the stage
rolls back), and what that action does in an unattended run (ManualIntervention takes its
onTimeout action; Retry waits its interval, then takes its onRetryFailure action)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from reconciler.pipeline.conditions import parse_duration
from reconciler.pipeline.model import StepDef

GOES_ON = ("Ignore", "MarkAsSuccess")  # the stage goes on after these
STOPS = ("StageRollback", "StepGroupRollback", "PipelineRollback", "Abort")  # the stage stops after these
ROLLS_BACK = ("StageRollback", "StepGroupRollback", "PipelineRollback")


def strategy_for(step: StepDef, stage_body: dict, pipe_body: dict, error_type: str) -> dict:
    """The action of the first failure strategy whose errors match `error_type`."""
    for items in (
        step.body.get("failureStrategies"),
        step.group_strategies,
        stage_body.get("failureStrategies"),
        pipe_body.get("failureStrategies"),
    ):
        for item in items or []:
            of = item.get("onFailure") or {}
            errors = of.get("errors") or []
            if "AllErrors" in errors or error_type in errors:
                return of.get("action") or {}
    return {"type": "StageRollback"}  # no strategy matches: the stage rolls back (SPEC §5 spirit)


@dataclass
class Decision:
    kind: str | None  # the action taken: StageRollback, Abort, Ignore, ... (Retry while retrying)
    retry_in: float | None = None  # seconds to wait before the next attempt, when retrying


def decide(action: dict, attempt: int, log: Callable[[str], None]) -> Decision:
    """What `action` does after the step's `attempt`-th retry (0: its first run) failed."""
    kind = action.get("type", "StageRollback")
    spec = action.get("spec") or {}
    if kind == "ManualIntervention":
        sub = (spec.get("onTimeout") or {}).get("action") or {"type": "Abort"}
        log(
            f"   ManualIntervention needs a person; reconciler run is unattended: taking its onTimeout action {sub.get('type')}"
        )
        kind, spec = sub.get("type"), sub.get("spec") or {}
    if kind == "Retry" and attempt < int(spec.get("retryCount") or 1):
        intervals = spec.get("retryIntervals") or ["1s"]
        wait = parse_duration(intervals[min(attempt, len(intervals) - 1)])
        log(f"   retry {attempt + 1}/{spec.get('retryCount') or 1} in {wait:g}s")
        return Decision("Retry", wait)
    if kind == "Retry":
        sub = (spec.get("onRetryFailure") or {}).get("action") or {"type": "StageRollback"}
        kind = sub.get("type", "StageRollback")
    return Decision(kind)
