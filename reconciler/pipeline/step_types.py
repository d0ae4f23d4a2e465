"""The registry of step types: step `type` → its `step_base.StepType`. The pipeline checks
use it to check each step's spec (and to say which types are supported where), the runner
to run each step. A new step type is one module under `steps/` and one line here."""

from __future__ import annotations

from reconciler.pipeline import provisioners
from reconciler.pipeline.step_base import StepType
from reconciler.pipeline.steps import approval, deploy, rollback, shell, traffic_shift, wait

STEP_TYPES: dict[str, StepType] = {
    "AwsLambdaDeploy": deploy.AwsLambdaDeploy(),
    "AwsLambdaRollback": rollback.AwsLambdaRollback(),
    "ShellScript": shell.ShellScript(),
    "Wait": wait.Wait(),
    "AwsLambdaTrafficShift": traffic_shift.AwsLambdaTrafficShift(),
    "HarnessApproval": approval.HarnessApproval(),
    # environment.provisioner steps: one module per kind under provisioners/
    **provisioners.registered(),
}


def supported(phase: str) -> tuple[str, ...]:
    """The step types that may stand in `phase` (execution, rollback, provision, provision_rollback)."""
    return tuple(name for name, t in STEP_TYPES.items() if phase in t.phases)
