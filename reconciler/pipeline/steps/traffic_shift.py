"""`AwsLambdaTrafficShift`: set `spec.trafficPercentage` of the stage alias's traffic on the
new version the stage's deploy published (reconciler.pipeline.shift: its checks against the
steps before it, the weight put on the alias and recorded in the state)."""

from __future__ import annotations

from reconciler.errors import ConfigError
from reconciler.pipeline import shift
from reconciler.pipeline.model import StepDef
from reconciler.pipeline.step_base import EXECUTION_PHASES, ErrorAt, StepContext, StepOutput


class AwsLambdaTrafficShift:
    phases = EXECUTION_PHASES

    def check(self, step: StepDef, spec: dict, err: ErrorAt) -> list[ConfigError]:
        return []  # checked with the steps before it: shift.check_step, from checks.check_pipeline

    def run(self, ctx: StepContext) -> StepOutput:
        return StepOutput(shift.run_shift(ctx.run, ctx.sr, ctx.step))
