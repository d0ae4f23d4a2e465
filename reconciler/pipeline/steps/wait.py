"""`Wait`: sleep `spec.duration` (a Harness duration); longer than the step's timeout fails
the step with a Timeout once the timeout has passed."""

from __future__ import annotations

import time

from reconciler.errors import ConfigError
from reconciler.pipeline.conditions import parse_duration
from reconciler.pipeline.model import StepDef, StepFailed
from reconciler.pipeline.step_base import EXECUTION_PHASES, ErrorAt, StepContext, StepOutput


class Wait:
    phases = EXECUTION_PHASES

    def check(self, step: StepDef, spec: dict, err: ErrorAt) -> list[ConfigError]:
        try:
            parse_duration(spec.get("duration"))
        except ValueError as exc:
            return [err(("duration",), f"Wait step '{step.identifier}': duration {exc}")]
        return []

    def run(self, ctx: StepContext) -> StepOutput:
        d = parse_duration((ctx.step.body.get("spec") or {}).get("duration"))
        if d > ctx.timeout:
            time.sleep(ctx.timeout)
            raise StepFailed(f"timed out after {ctx.timeout:g}s (Wait {d:g}s)", "Timeout")
        ctx.log(f"   waiting {d:g}s")
        time.sleep(d)
        return StepOutput()
