"""`plan --pipeline` and `apply PLANFILE` for stages with provisioner steps: which of their
targets can be planned now (outputs from --provisioner-outputs or existing stacks), what
`run` would run first (shown above the plan), and the refusal of a saved plan that needs them."""

from __future__ import annotations

import copy
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.pipeline.provisioners.base import resolve_tree
from reconciler.pipeline.stage import RunView, StageRun
from reconciler.workspace.render import Options


def plan_provisioning(runner: RunView, sr: StageRun, infos: list) -> Options | None:
    """plan --pipeline, for a target of a stage with provisioner steps: the Options to plan it
    with, or None when one of its values waits for the steps (it is planned when the pipeline
    runs). Outputs are known from --provisioner-outputs, or read (DescribeStacks, nothing
    else) from the stacks that exist of the stage's CloudformationCreateStack steps."""
    from reconciler.workspace.render import render_target

    known, sources = _existing_stack_outputs(runner, sr)
    settings = dict(sr.opts.provisioner or {})
    settings["stage"] = {"pending": True, "outputs": known, "used": []}
    opts = copy.copy(sr.opts)
    opts.provisioner = settings
    spec = render_target(runner.ws, sr.target, opts, [])
    used = sorted(set(settings["stage"]["used"]))
    infos.append(
        {
            "pipeline": runner.pipe.identifier,
            "stage": sr.stage.identifier,
            "service": sr.target.service,
            "environment": sr.target.environment,
            "infrastructure": sr.target.infrastructure,
            "function": spec.name,
            "region": spec.region,
            "steps": [{"step": s.identifier, "type": s.type} for s in sr.stage.provision_steps],
            "rollback_steps": [{"step": s.identifier, "type": s.type} for s in sr.stage.provision_rollback_steps],
            "waiting_for": [f"provisioner.{n}" for n in used],
            "known_from_stacks": sources,
        }
    )
    return None if used else opts


def _existing_stack_outputs(runner: RunView, sr: StageRun) -> tuple[dict, dict]:
    from reconciler.aws.client import CloudFormation

    known: dict = {}
    sources: dict = {}
    for s in sr.stage.provision_steps:
        if s.type != "CloudformationCreateStack":
            continue
        try:
            spec = resolve_tree(sr, s, s.body.get("spec") or {}, (*s.path, "spec"))
            conf = spec["configuration"]
            from reconciler.workspace.connectors import aws_connector

            stack = CloudFormation(
                runner.aws, conf["region"], aws_connector(runner.ws, conf.get("connectorRef"))
            ).describe(conf["stackName"])
        except (KeyError, TypeError, ReconcilerError):
            continue
        if stack is None or str(stack.get("StackStatus", "")).endswith(
            ("FAILED", "ROLLBACK_COMPLETE", "DELETE_COMPLETE")
        ):
            continue
        for o in stack.get("Outputs") or []:
            known[o["OutputKey"]] = o.get("OutputValue")
            sources[o["OutputKey"]] = conf["stackName"]
    return known, sources


def plan_text(infos: list) -> str:
    """plan --pipeline: the provisioner steps `run` would run, above the plan."""
    if not infos:
        return ""
    out = ["Provisioner steps that `reconciler run` runs before these stages (`apply` does not run them):"]
    for i in infos:
        steps = ", ".join(f"{s['step']} ({s['type']})" for s in i["steps"])
        out.append(f"  stage {i['stage']} [{i['service']} → {i['environment']}/{i['infrastructure']}]: {steps}")
        if i["rollback_steps"]:
            out.append("    on rollback: " + ", ".join(f"{s['step']} ({s['type']})" for s in i["rollback_steps"]))
        for name, stack in sorted(i["known_from_stacks"].items()):
            out.append(f"    provisioner.{name}: from the outputs of existing stack {stack}")
        if i["waiting_for"]:
            out.append(
                f"? {i['function']}  [{i['service']} → {i['environment']}/{i['infrastructure']}, {i['region']}] "
                f"planned when the pipeline runs: it depends on {', '.join('(' + w + ')' for w in i['waiting_for'])}"
            )
    return "\n".join(out) + "\n\n"


def refuse_saved_plan(data: Any, path: str) -> None:
    """apply PLANFILE: a plan whose stages have provisioner steps is refused (only `run` runs them)."""
    infos = data.get("provisioners") if isinstance(data, dict) else None
    if infos:
        pipes = sorted({i.get("pipeline") for i in infos})
        stages = ", ".join(sorted({str(i.get("stage")) for i in infos}))
        raise ReconcilerError(
            f"this plan needs the provisioner steps of stage(s) {stages}, which `apply` does not run",
            path,
            hint=f"run the pipeline instead: reconciler run {' / '.join(pipes)}",
        )
