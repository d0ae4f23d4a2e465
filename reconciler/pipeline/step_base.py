"""What every step type is: the `StepType` protocol (check the step's spec without running
anything; run the step), the context a step runs in, and what a run gives.

A step type is one module under `steps/` (or a provisioner kind under `provisioners/`)
with one registry line in `step_types.STEP_TYPES`; the checks and the runner find it there.
Step-type modules never import each other, nor the runner: what they use of the run is
`stage.RunView` (the runner as a step sees it) and the `stage.StageRun` they are given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from reconciler.errors import ConfigError
from reconciler.pipeline.model import StepDef
from reconciler.pipeline.stage import RunView, StageRun

EXECUTION_PHASES = ("execution", "rollback")
PROVISION_PHASES = ("provision", "provision_rollback")

# err(path under the step's spec, message, hint=None): an error naming the pipeline's file and line
ErrorAt = Callable[..., ConfigError]


@dataclass
class StepOutput:
    """What a step gave: its outputs (`<+...output.outputVariables.NAME>`) and the log text kept."""

    outputs: dict = field(default_factory=dict)
    output: str = ""


@dataclass
class StepContext:
    """One step about to run: the run, its stage run, the step and its timeout in seconds."""

    run: RunView
    sr: StageRun
    step: StepDef
    timeout: float

    @property
    def log(self) -> Callable[[str], None]:
        return self.run.log


class StepType(Protocol):
    """One kind of step."""

    @property
    def phases(self) -> tuple[str, ...]:
        """Where the step may stand: EXECUTION_PHASES or PROVISION_PHASES."""
        ...

    def check(self, step: StepDef, spec: dict, err: ErrorAt) -> list[ConfigError]:
        """Problems in the step's `spec` (a mapping), found without running or calling anything."""
        ...

    def run(self, ctx: StepContext) -> StepOutput:
        """Run the step; raise StepFailed (or a ReconcilerError) when it fails."""
        ...
