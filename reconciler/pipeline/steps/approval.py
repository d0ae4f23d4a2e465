"""`HarnessApproval`: a person says yes — on the terminal, or in advance with `run --approve
STEP_ID`; an unattended run without it fails the step (reconciler.pipeline.shift)."""

from __future__ import annotations

from reconciler.errors import ConfigError
from reconciler.pipeline import shift
from reconciler.pipeline.model import StepDef
from reconciler.pipeline.step_base import EXECUTION_PHASES, ErrorAt, StepContext, StepOutput


class HarnessApproval:
    phases = EXECUTION_PHASES

    def check(self, step: StepDef, spec: dict, err: ErrorAt) -> list[ConfigError]:
        return []  # checked with the steps before it: shift.check_step, from checks.check_pipeline

    def run(self, ctx: StepContext) -> StepOutput:
        return StepOutput(shift.run_approval(ctx.run, ctx.sr, ctx.step, ctx.timeout))
