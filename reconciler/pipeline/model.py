"""The pipeline's data: stage and step definitions as checked (StageDef, StepDef), what a
run gives (StepResult, StageResult), how a step fails (StepFailed) and the run's settings.
Plain data, no behaviour beyond reading its own fields."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.model import Target

SHELL_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # fullmatch: "$" would let a trailing newline through


class _Named:
    """A stage or step of the pipeline document: its identifier and name (the identifier when unnamed)."""

    body: dict

    @property
    def identifier(self) -> str:
        return str(self.body.get("identifier", ""))

    @property
    def name(self) -> str:
        return str(self.body.get("name") or self.identifier)


@dataclass
class StepDef(_Named):
    body: dict
    path: tuple  # in the pipeline document
    phase: str  # execution | rollback | provision | provision_rollback
    group_when: list = field(default_factory=list)
    group_strategies: list | None = None
    group: str | None = None  # the step group identifier, if any

    @property
    def type(self) -> str:
        return str(self.body.get("type", ""))


@dataclass
class StageDef(_Named):
    body: dict
    path: tuple
    steps: list[StepDef]
    rollback_steps: list[StepDef]
    # environment.provisioner: steps before the execution, rollbackSteps after its rollback (reconciler.provisioners)
    provision_steps: list[StepDef] = field(default_factory=list)
    provision_rollback_steps: list[StepDef] = field(default_factory=list)


@dataclass
class StepResult:
    stage: str
    stage_name: str
    target: Target
    step: str
    name: str
    type: str
    phase: str
    status: str = "Skipped"  # Success | Failed | Skipped | IgnoreFailed
    started_at: str | None = None
    duration: float = 0.0
    outputs: dict = field(default_factory=dict)
    output: str = ""
    error: str | None = None
    error_type: str | None = None
    reason: str | None = None  # why skipped, or the failure action taken

    @classmethod
    def of(cls, stage: StageDef, target: Target, step: StepDef, **fields: Any) -> StepResult:
        """The result of `step` of `stage` for `target` (Skipped until it runs)."""
        return cls(stage.identifier, stage.name, target, step.identifier, step.name, step.type, step.phase, **fields)

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "stage_name": self.stage_name,
            "service": self.target.service,
            "environment": self.target.environment,
            "infrastructure": self.target.infrastructure,
            "step": self.step,
            "name": self.name,
            "type": self.type,
            "phase": self.phase,
            "status": self.status,
            "started_at": self.started_at,
            "duration": round(self.duration, 3),
            "outputs": self.outputs,
            "output": self.output,
            "error": self.error,
            "reason": self.reason,
        }


@dataclass
class StageResult:
    stage: str
    name: str
    target: Target | None
    status: str = "Skipped"  # Success | Failed | Aborted | Skipped
    rolled_back: bool = False
    reason: str | None = None

    def to_dict(self) -> dict:
        t = self.target
        return {
            "stage": self.stage,
            "name": self.name,
            "service": t.service if t else None,
            "environment": t.environment if t else None,
            "infrastructure": t.infrastructure if t else None,
            "status": self.status,
            "rolled_back": self.rolled_back,
            "reason": self.reason,
        }


class StepFailed(Exception):
    def __init__(self, message: str, error_type: str = "Unknown", outputs: dict | None = None, output: str = ""):
        super().__init__(message)
        self.error_type = error_type
        self.outputs = outputs or {}
        self.output = output


@dataclass
class RunSettings:
    workspace: Path
    state_dir: Path
    pipeline: str
    variables: dict = field(default_factory=dict)  # --var
    artifact: str | None = None  # --artifact
    inputs_file: Path | None = None
    provisioner: dict | None = None  # Options.provisioner
    show_values: bool = False
    lock_timeout: float = 0.0
    rollout_rules: list = field(default_factory=list)  # reconciler.engine.rollout.Rule, from reconciler.yaml
    approve: tuple[str, ...] = ()  # --approve: HarnessApproval steps approved in advance
