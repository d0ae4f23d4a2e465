"""`plan --pipeline`: what a pipeline's stages would change, as one plan over every stage
target with an AwsLambdaDeploy step, planned as `run` would prepare them (inputs, stage
variables, artifacts). Targets of stages with provisioner steps are planned when their
provisioner outputs are known (--provisioner-outputs, existing stacks); the others are
listed in the plan's `provisioners`. Nothing is changed."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.model import Plan
from reconciler.pipeline.model import RunSettings
from reconciler.pipeline.provisioners.planning import plan_provisioning
from reconciler.pipeline.runner import Runner
from reconciler.pipeline.stage import StageRun
from reconciler.store import state as st


def pipeline_plan(settings: RunSettings, aws: Any, log: Callable[[str], None]) -> tuple[Plan, list[str]]:
    """What the pipeline's stages would change: one plan over every stage target."""
    from reconciler.engine.context import Context
    from reconciler.engine.planner import make_plan

    runner = Runner(settings, lambda: aws, log)
    prepared = runner.prepare()
    merged: Plan | None = None
    seen: set[tuple[str, str]] = set()
    warnings = list(runner.warnings) + [
        f"stage '{stage.get('identifier')}' is skipped: {why}" for _, stage, why in runner.skipped
    ]
    provisioning: list[dict] = []  # stages whose provisioner steps `run` would run first
    for stage, items in prepared:
        if not any(s.type == "AwsLambdaDeploy" for s in stage.steps):
            continue
        for t, opts, spec, scope in items:
            if stage.provision_steps:
                planned = plan_provisioning(runner, StageRun(runner, stage, t, opts, spec, scope), provisioning)
                if planned is None:
                    continue  # its values wait for the provisioner steps: planned when the pipeline runs
                opts = planned
            ctx = Context(
                workspace=settings.workspace, state_dir=settings.state_dir, options=copy.deepcopy(opts), log=log
            )
            p = make_plan(ctx, aws)
            warnings += ctx.warnings
            if merged is None:
                merged = Plan(functions=[], state_refs={}, workspace=p.workspace, created_at=p.created_at)
            _merge(merged, p, seen)
    if merged is None and provisioning:
        merged = Plan(functions=[], state_refs={}, workspace=str(settings.workspace), created_at=st.now())
    if merged is None:
        raise ReconcilerError(f"pipeline '{settings.pipeline}' has no AwsLambdaDeploy step: it deploys nothing")
    merged.provisioners = provisioning
    return merged, list(dict.fromkeys(warnings))


def _merge(merged: Plan, p: Plan, seen: set[tuple[str, str]]) -> None:
    """One target's plan into the pipeline's: each function once (stages may share a target)."""
    merged.state_refs.update(p.state_refs)
    for fp in p.functions:
        key = (fp.state_file, fp.name)
        if key not in seen:
            seen.add(key)
            merged.functions.append(fp)
