"""`AwsLambdaRollback`: put back what ran before this stage's deploys (the `previous`
snapshot each apply recorded in the state history), recorded as a rollback. Nothing when
the stage deployed nothing."""

from __future__ import annotations

from reconciler.errors import ConfigError
from reconciler.pipeline.model import StepDef
from reconciler.pipeline.restore import restore_stage
from reconciler.pipeline.step_base import EXECUTION_PHASES, ErrorAt, StepContext, StepOutput


class AwsLambdaRollback:
    phases = EXECUTION_PHASES

    def check(self, step: StepDef, spec: dict, err: ErrorAt) -> list[ConfigError]:
        return []

    def run(self, ctx: StepContext) -> StepOutput:
        sr = ctx.sr
        if not sr.deployed:
            ctx.log("   nothing was deployed in this stage: nothing to roll back")
            return StepOutput({"rolledBack": "false"})
        done = restore_stage(
            ctx.run, sr, f"pipeline {ctx.run.pipe.identifier}, stage {sr.stage.identifier}: step {ctx.step.identifier}"
        )
        return StepOutput(
            {
                "rolledBack": "true" if done else "false",
                "functionName": sr.spec.name,
                "version": sr.facts()["RECONCILER_VERSION"],
            }
        )
