"""`AwsLambdaDeploy`: plan + apply (SPEC §5) of the stage's target, auto-approved — running
the pipeline is the approval. Its outputs: functionName, functionArn, version, alias,
region and the plan's action. The apply history records it made are the stage's deploys
(what AwsLambdaRollback and a stage rollback put back)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

from reconciler.errors import ConfigError
from reconciler.model import FunctionPlan, FunctionSpec, Plan
from reconciler.pipeline import shift
from reconciler.pipeline.model import StepDef, StepFailed
from reconciler.pipeline.stage import artifact_kind
from reconciler.pipeline.step_base import EXECUTION_PHASES, ErrorAt, StepContext, StepOutput
from reconciler.store import state as st


class AwsLambdaDeploy:
    phases = EXECUTION_PHASES

    def check(self, step: StepDef, spec: dict, err: ErrorAt) -> list[ConfigError]:
        return []

    def run(self, ctx: StepContext) -> StepOutput:
        spec, log = ctx.sr.spec, ctx.log
        plan, fp = plan_stage_function(ctx)
        held = hold_alias(ctx, fp)
        describe(log, spec, fp, ctx.run.settings.show_values)
        apply(ctx, plan, fp)
        facts = ctx.sr.facts()
        if fp.has_changes:
            report(ctx, fp, facts, held)
        log("Done")
        return StepOutput(
            {
                "functionName": spec.name,
                "functionArn": facts["RECONCILER_FUNCTION_ARN"],
                "version": facts["RECONCILER_VERSION"],
                "alias": facts["RECONCILER_ALIAS"],
                "region": spec.region,
                "action": fp.action,
            }
        )


def plan_stage_function(ctx: StepContext) -> tuple[Plan, FunctionPlan]:
    """The plan of the stage target's function (its manifest shown first)."""
    from reconciler.engine.context import Context
    from reconciler.engine.planner import make_plan

    s, spec, log = ctx.run.settings, ctx.sr.spec, ctx.log
    # a stage with traffic-shift steps moves its alias with them; else a rollout rule applies
    context = Context(
        workspace=s.workspace,
        state_dir=s.state_dir,
        options=copy.deepcopy(ctx.sr.opts),
        log=lambda m: None,
        rollout_rules=[] if _shifts(ctx) else list(s.rollout_rules),
    )
    log("Deploying..\n")
    log("Aws Lambda Manifest Content")
    log(json.dumps({"FunctionName": spec.name, **_masked_config(spec.config, s.show_values)}, indent=3))
    plan = make_plan(context, ctx.run.aws)
    plan.functions = [fp for fp in plan.functions if fp.name == spec.name and fp.action != "orphan"]
    for w in context.warnings:
        log(f"warning: {w}")
    if not plan.functions:
        raise StepFailed(f"the plan has no function {spec.name}")
    return plan, plan.functions[0]


def _shifts(ctx: StepContext) -> bool:
    """Whether the stage has traffic-shift steps (they move its alias, not the deploy)."""
    return any(x.type == shift.SHIFT for x in ctx.sr.stage.steps)


def hold_alias(ctx: StepContext, fp: FunctionPlan) -> str | None:
    """In a stage with traffic-shift steps: the alias the deploy leaves on its version (shift.hold), if any."""
    if not _shifts(ctx):
        return None
    from reconciler.aws.client import Lambda

    spec, s = ctx.sr.spec, ctx.run.settings
    held = shift.hold(
        fp, spec, s.rollout_rules, ctx.sr.stage.steps, Lambda(ctx.run.aws, spec.region, spec.connector), ctx.log
    )
    if held:
        ctx.log(
            f"Alias [{held}] stays on its version; the traffic-shift steps move it ({(fp.rollout or {}).get('description')})."
        )
    return held


def describe(log: Callable[[str], None], spec: FunctionSpec, fp: FunctionPlan, show_values: bool) -> None:
    """What the deploy will do, in the words of Harness's AwsLambdaDeploy log."""
    code_change = next((c for c in fp.changes if c.kind == "code" and c.path == "CodeSha256"), None)
    if fp.action == "create":
        log(f"Function: [{spec.name}] does not exist. Create and Publish.")
    elif fp.action == "update":
        log(f"Function: [{spec.name}] already exists. Update and Publish.")
    else:
        log(f"Function: [{spec.name}] already exists and matches the definition: nothing to deploy.")
    if code_change is not None and code_change.old:
        log(f"Existing Lambda Function Code Sha256: [{code_change.old}].")
    art = spec.artifact
    kind = artifact_kind(art)
    log(
        f"Artifact: {kind} with identifier: {art.get('id')}: {(fp.code.get('source') or {}).get('uri')} (Code Sha256 [{fp.code.get('sha256')}])"
    )
    for c in fp.changes if fp.action == "update" else []:
        if c.kind in ("config", "tag"):
            log(
                f"  ~ {c.path}"
                + (
                    ""
                    if c.kind == "config" and c.path.startswith("Environment") and not show_values
                    else f": {c.old!r} → {c.new!r}"
                )
            )


def apply(ctx: StepContext, plan: Plan, fp: FunctionPlan) -> None:
    """Apply the plan if it changes anything; the apply records it made join the stage's deploys."""
    from reconciler.engine.apply import ApplyFailed, apply_plan

    s, spec, sr = ctx.run.settings, ctx.sr.spec, ctx.sr
    before_ids = {h.get("id") for h in st.load(s.state_dir, spec.environment, spec.infrastructure).history}
    try:
        if fp.has_changes:
            apply_plan(plan, ctx.run.aws, s.state_dir, lambda m: ctx.log(f"  {m}"), lock_timeout=s.lock_timeout)
    except ApplyFailed as exc:
        raise StepFailed(str(exc)) from None
    finally:
        state = st.load(s.state_dir, spec.environment, spec.infrastructure)
        sr.deployed += [
            h["id"]
            for h in state.history
            if h.get("id") not in before_ids and h.get("function") == spec.name and h.get("operation") == "apply"
        ]


def report(ctx: StepContext, fp: FunctionPlan, facts: dict, held: str | None = None) -> None:
    """What was deployed: the function's status, the version published, the aliases moved."""
    from reconciler.engine.refresh import refresh_function

    spec, log = ctx.sr.spec, ctx.log
    live = refresh_function(ctx.run.aws, spec.region, spec.connector, spec.name)
    log("Verifying if status of function to be Successful")
    log(
        f"function: [{spec.name}], state: [{live.get('state')}], last update status: [{live.get('last_update_status')}]"
    )
    if fp.publish:
        log(f"Published new version: [{facts['RECONCILER_VERSION']}]")
        log(f"Published function ARN: [{facts['RECONCILER_VERSION_ARN']}]")
    log(f"Successfully deployed lambda function: [{spec.name}]")
    for a in [a for a in spec.aliases if a["Name"] != held]:
        log("\nAws Lambda Alias Manifest Content")
        log(json.dumps({k[:1].lower() + k[1:]: v for k, v in a.items()}, indent=3))
        log(f"Alias [{a['Name']}] of function {spec.name} → version {facts['RECONCILER_VERSION']}")


def _masked_config(config: dict, show_values: bool) -> dict:
    from reconciler.util.secrets import mask_vars

    out = copy.deepcopy(config)
    variables = (out.get("Environment") or {}).get("Variables")
    if isinstance(variables, dict):
        out["Environment"]["Variables"] = mask_vars(variables, show_values)
    return out
