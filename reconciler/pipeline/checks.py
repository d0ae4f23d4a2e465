"""The pipeline, checked without running anything: its AwsLambda Deployment stages with
their steps flattened (step groups, parallel groups), every step's type and spec, `when`,
failure strategies; `check_workspace` for `validate`."""

from __future__ import annotations

from typing import Any

from reconciler.errors import ConfigError, did_you_mean
from reconciler.model import IDENTIFIER, IDENTIFIER_RULE
from reconciler.pipeline import provisioners, shift, step_types
from reconciler.pipeline.conditions import evaluate_condition, parse_duration
from reconciler.pipeline.model import StageDef, StepDef
from reconciler.workspace.load import Entity, Workspace, pipeline_stages, stage_skipped

REJECTED_STEPS = dict.fromkeys(
    ("JiraApproval", "ServiceNowApproval", "CustomApproval"),
    "an approval in another service: approve it there, then run the pipeline (HarnessApproval steps are supported)",
)
ERROR_TYPES = (
    "AllErrors",
    "Unknown",
    "Timeout",
    "Authentication",
    "Authorization",
    "Connectivity",
    "Verification",
    "DelegateProvisioning",
    "PolicyEvaluationFailure",
    "InputTimeoutError",
    "ApprovalRejection",
    "DelegateRestart",
    "UserMarkedFailure",
)
ACTIONS = (
    "StageRollback",
    "PipelineRollback",
    "StepGroupRollback",
    "Abort",
    "MarkAsFailure",
    "Ignore",
    "MarkAsSuccess",
    "Retry",
    "ManualIntervention",
)
STAGE_STATUSES = ("Success", "Failure", "All")


def flatten_steps(
    pipe: Entity, items: Any, path: tuple, phase: str, errors: list, group_when=None, strategies=None, group=None
) -> list[StepDef]:
    out: list[StepDef] = []
    if items is None:
        return out
    if not isinstance(items, list):
        errors.append(pipe.error(path, "steps must be a list of {step: ...}"))
        return out
    for i, item in enumerate(items):
        p = (*path, i)
        if not isinstance(item, dict):
            errors.append(pipe.error(p, "each entry needs 'step', 'stepGroup' or 'parallel'"))
        elif isinstance(item.get("step"), dict):
            out.append(StepDef(item["step"], (*p, "step"), phase, list(group_when or []), strategies, group))
        elif isinstance(item.get("stepGroup"), dict):
            g = item["stepGroup"]
            when = list(group_when or []) + ([(g["when"], (*p, "stepGroup", "when"))] if g.get("when") else [])
            out += flatten_steps(
                pipe,
                g.get("steps"),
                (*p, "stepGroup", "steps"),
                phase,
                errors,
                when,
                g.get("failureStrategies") or strategies,
                g.get("identifier"),
            )
        elif isinstance(item.get("parallel"), list):  # run one after the other
            out += flatten_steps(pipe, item["parallel"], (*p, "parallel"), phase, errors, group_when, strategies, group)
        else:
            errors.append(pipe.error(p, "each entry needs 'step', 'stepGroup' or 'parallel'"))
    return out


def check_pipeline(pipe: Entity, ws: Workspace, strict: bool = False) -> tuple[list[StageDef], list[ConfigError]]:
    """The pipeline's AwsLambda Deployment stages with their flattened steps, and every
    problem found without running anything. Other stages (CI, Custom, Approval, other
    deployment types) are not reconciler's: skipped (load.skipped_stages says why).
    `strict` (run) also refuses a pipeline with nothing to run."""
    errors: list[ConfigError] = []
    stages: list[StageDef] = []
    try:
        deploy_stages = pipeline_stages(pipe)
    except ConfigError as exc:
        return [], [exc]
    for path, stage in deploy_stages:
        sid = stage.get("identifier")
        if stage_skipped(ws, stage):
            continue
        if not isinstance(sid, str) or not IDENTIFIER.fullmatch(sid):
            errors.append(
                pipe.error(
                    (*path, "identifier"),
                    f"stage identifier {str(sid)[:60]!r} is not a Harness identifier ({IDENTIFIER_RULE})",
                )
            )
        ex = (*path, "spec", "execution")
        execution = (stage.get("spec") or {}).get("execution") or {}
        steps = flatten_steps(pipe, execution.get("steps"), (*ex, "steps"), "execution", errors)
        rb = flatten_steps(pipe, execution.get("rollbackSteps"), (*ex, "rollbackSteps"), "rollback", errors)
        psteps, prb = provisioners.stage_provisioner(pipe, stage, path, errors, flatten_steps)
        for s in steps + rb + psteps + prb:
            errors += _check_step(pipe, s)
        for i, s in enumerate(steps + rb):
            if s.type in (shift.SHIFT, shift.APPROVAL):
                errors += shift.check_step(pipe, s, (steps + rb)[:i])
        errors += _check_strategies(pipe, stage.get("failureStrategies"), (*path, "failureStrategies"))
        errors += _check_when(pipe, stage.get("when"), (*path, "when"), "pipelineStatus")
        seen: dict[str, tuple] = {}
        for s in steps + rb:
            if s.identifier in seen and s.phase == "execution":
                errors.append(
                    pipe.error(
                        (*s.path, "identifier"), f"step identifier '{s.identifier}' is used twice in stage '{sid}'"
                    )
                )
            seen.setdefault(s.identifier, s.path)
        stages.append(StageDef(stage, path, steps, rb, psteps, prb))
    if strict and not stages:
        errors.append(
            pipe.error(("stages",), f"pipeline '{pipe.identifier}' has no Deployment stage of deploymentType AwsLambda")
        )
    return stages, errors


def _check_step(pipe: Entity, s: StepDef) -> list[ConfigError]:
    errs: list[ConfigError] = []
    p, b = s.path, s.body
    if not s.identifier:
        errs.append(pipe.error(p, "a step needs an 'identifier'"))
    elif not IDENTIFIER.fullmatch(s.identifier):
        errs.append(
            pipe.error(
                (*p, "identifier"),
                f"step identifier {s.identifier[:60]!r} is not a Harness identifier ({IDENTIFIER_RULE})",
            )
        )
    t = b.get("type")
    supported = step_types.supported(s.phase)
    if t not in supported:
        hint = REJECTED_STEPS.get(str(t)) or provisioners.rejected(t, s.phase) or did_you_mean(str(t), supported)
        errs.append(
            pipe.error(
                (*p, "type"),
                f"step '{s.identifier}' has type '{t}', which reconciler run does not support "
                f"{provisioners.where(s.phase)}; supported: {', '.join(supported)}",
                hint if hint and not hint.startswith("valid:") else None,
            )
        )
        return errs
    timeout = b.get("timeout")
    if timeout is not None and not (isinstance(timeout, str) and "<+" in timeout):
        try:
            parse_duration(timeout)
        except ValueError as exc:
            errs.append(pipe.error((*p, "timeout"), f"step '{s.identifier}': timeout {exc}"))
    spec = b.get("spec") or {}
    if not isinstance(spec, dict):
        errs.append(pipe.error((*p, "spec"), f"step '{s.identifier}': spec must be a mapping"))
        return errs
    errs += step_types.STEP_TYPES[str(t)].check(
        s, spec, lambda path, message, hint=None: pipe.error((*p, "spec", *tuple(path)), message, hint)
    )
    errs += _check_when(pipe, b.get("when"), (*p, "when"), "stageStatus")
    errs += _check_strategies(pipe, b.get("failureStrategies"), (*p, "failureStrategies"))
    return errs


def _check_when(pipe: Entity, when: Any, path: tuple, status_key: str) -> list[ConfigError]:
    if when is None:
        return []
    if not isinstance(when, dict):
        return [pipe.error(path, f"when must be a mapping {{{status_key}, condition}}")]
    errs = []
    if when.get(status_key, "Success") not in STAGE_STATUSES:
        errs.append(
            pipe.error(
                (*path, status_key),
                f"when.{status_key} must be one of {', '.join(STAGE_STATUSES)}",
                did_you_mean(str(when.get(status_key)), STAGE_STATUSES),
            )
        )
    cond = when.get("condition")
    if cond is not None:
        try:
            evaluate_condition(cond, lambda e: "true")
        except ValueError as exc:
            if "is not true or false" not in str(exc):
                errs.append(pipe.error((*path, "condition"), f"when.condition: {exc}"))
    return errs


def _check_strategies(pipe: Entity, items: Any, path: tuple) -> list[ConfigError]:
    if items is None:
        return []
    if not isinstance(items, list):
        return [pipe.error(path, "failureStrategies must be a list of {onFailure: {errors, action}}")]
    errs = []
    for i, item in enumerate(items):
        of = (item or {}).get("onFailure") if isinstance(item, dict) else None
        p = (*path, i, "onFailure")
        if not isinstance(of, dict):
            errs.append(pipe.error((*path, i), "each failure strategy needs onFailure: {errors, action}"))
            continue
        for j, e in enumerate(of.get("errors") or []):
            if e not in ERROR_TYPES:
                errs.append(
                    pipe.error(
                        (*p, "errors", j),
                        f"error type '{e}' is not one of {', '.join(ERROR_TYPES)}",
                        did_you_mean(str(e), ERROR_TYPES),
                    )
                )
        errs += _check_action(pipe, of.get("action"), (*p, "action"))
    return errs


def _check_action(pipe: Entity, action: Any, path: tuple) -> list[ConfigError]:
    t = action.get("type") if isinstance(action, dict) else None
    if t not in ACTIONS:
        return [
            pipe.error(
                (*path, "type"),
                f"failure action '{t}' is not supported; use one of {', '.join(ACTIONS)}",
                did_you_mean(str(t), ACTIONS),
            )
        ]
    spec = action.get("spec") or {}
    if t == "Retry":
        errs = []
        count = spec.get("retryCount")
        if (
            count is not None
            and not (isinstance(count, int) and not isinstance(count, bool) and 0 <= count <= 100)
            and not (isinstance(count, str) and count.isdigit() and int(count) <= 100)
        ):
            errs.append(
                pipe.error(
                    (*path, "spec", "retryCount"),
                    f"retryCount must be a whole number from 0 to 100, got {str(count)[:40]!r}",
                )
            )
        for j, d in enumerate(spec.get("retryIntervals") or []):
            try:
                parse_duration(d)
            except ValueError as exc:
                errs.append(pipe.error((*path, "spec", "retryIntervals", j), f"retry interval {exc}"))
        sub = (spec.get("onRetryFailure") or {}).get("action")
        if sub is not None:
            errs += _check_action(pipe, sub, (*path, "spec", "onRetryFailure", "action"))
        return errs
    if t == "ManualIntervention":
        sub = (spec.get("onTimeout") or {}).get("action")
        return _check_action(pipe, sub, (*path, "spec", "onTimeout", "action")) if sub is not None else []
    return []


def check_workspace(ws: Workspace) -> list[ConfigError]:
    """validate: every pipeline's stages and steps, and every infrastructure's provisioner shape."""
    from reconciler.workspace.provision import check_shape

    errors: list[ConfigError] = []
    for pipe in ws.pipelines.values():
        errors += check_pipeline(pipe, ws)[1]
    for infra in ws.infrastructures.values():
        errors += check_shape(infra)
    return list({str(e): e for e in errors}.values())  # a loop's iterations share their lines
