"""A Deploy stage's `environment.provisioner`: its `steps` run before the stage's execution
steps and give the `<+provisioner.NAME>` values of the stage's infrastructure definition;
its `rollbackSteps` run after the execution's rollback steps when the stage rolls back —
the order Harness runs them in ("Map Dynamically Provisioned Infrastructure").

One module per kind of provisioner, each a `base.Kind` (check: the step's spec without
running anything; run: the step, giving its outputs); `registered()` wraps each in a
`ProvisionerStep`, the `step_base.StepType` that `step_types.STEP_TYPES` names, which both
the pipeline check and the runner use:

- shell.py: `ShellScriptProvision` (the script writes JSON to $PROVISIONER_OUTPUT_PATH);
- cloudformation.py: `CloudformationCreateStack`, `CloudformationDeleteStack`,
  `CloudformationRollbackStack`;
- terraform.py: `TerraformPlan`, `TerraformApply`, `TerraformRollback`, `TerraformDestroy`
  and the Terragrunt ones.

The pipeline checks and runner call in here through a few hooks: the stage's provisioner
steps as StepDefs, the target rendered again with their outputs, and the rollback steps.
`base.py` holds what the kinds share, `history.py` the `provision` record of the state
history, `planning.py` what `plan --pipeline` and `apply PLANFILE` do with these steps. What a stage provisioned (step, outputs, stack) is
recorded in the state history as a `provision` record; secret-looking outputs are masked.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

from reconciler.errors import ConfigError, ReconcilerError
from reconciler.pipeline.model import StepDef, StepFailed, StepResult
from reconciler.pipeline.provisioners import history
from reconciler.pipeline.provisioners.base import MASK, Kind, ProvisionContext, is_secret, masked, memory, resolve_tree
from reconciler.pipeline.provisioners.history import history_lines
from reconciler.pipeline.provisioners.planning import plan_text, refuse_saved_plan
from reconciler.pipeline.stage import RunView, StageRun
from reconciler.pipeline.step_base import PROVISION_PHASES, ErrorAt, StepContext, StepOutput
from reconciler.store import state as st
from reconciler.workspace.expr import leaves
from reconciler.workspace.load import Entity
from reconciler.workspace.schema import DEFERRED

NOT_SUPPORTED = {
    "TerraformCloudRun": "Terraform Cloud runs are not supported: run the configuration with TerraformPlan/TerraformApply "
    "steps (terraform on PATH), or pass its outputs with --provisioner-outputs FILE",
}


def _registry() -> dict[str, Kind]:
    from reconciler.pipeline.provisioners import cloudformation, shell, terraform

    return {**shell.KINDS, **cloudformation.KINDS, **terraform.KINDS}


_LOADED: dict[str, Kind] = {}


def step_types() -> dict[str, Kind]:
    """The provisioner kinds: step type name → Kind (the modules load when a pipeline is checked or run)."""
    if not _LOADED:
        _LOADED.update(_registry())
    return _LOADED


def step_type(name: str) -> Kind:
    return step_types()[name]


class ProvisionerStep:
    """A provisioner kind as a pipeline step type: its check, and its run through `run_step`
    (outputs masked and kept for the stage, the state history's `provision` record)."""

    phases = PROVISION_PHASES

    def __init__(self, kind: Kind):
        self.kind = kind

    def check(self, step: StepDef, spec: dict, err: ErrorAt) -> list[ConfigError]:
        errors = [
            err(path, _no_secret_message(path))
            for value, path in leaves(spec)
            if isinstance(value, str) and "secrets.getValue" in value and _field(path) in NO_SECRET
        ]
        return errors + self.kind.check(spec, err)

    def run(self, ctx: StepContext) -> StepOutput:
        outputs, output = run_step(ctx.run, ctx.sr, ctx.step, ctx.timeout)
        return StepOutput(outputs, output)


def registered() -> dict[str, ProvisionerStep]:
    """The provisioner kinds as step types, for step_types.STEP_TYPES."""
    return {name: ProvisionerStep(kind) for name, kind in step_types().items()}


# ---------------------------------------------------------------- the pipeline check


def where(phase: str) -> str:
    return "in environment.provisioner" if phase in PROVISION_PHASES else "in execution"


def rejected(step_type_name: Any, phase: str) -> str | None:
    if step_type_name in NOT_SUPPORTED:
        return NOT_SUPPORTED[step_type_name]
    if phase not in PROVISION_PHASES and step_type_name in step_types():
        return "provisioner steps run in the stage's environment.provisioner.steps (and rollbackSteps)"
    return None


def stage_provisioner(
    pipe: Entity, stage: dict, path: tuple, errors: list, flatten: Callable
) -> tuple[list[StepDef], list[StepDef]]:
    """The StepDefs of a stage's environment.provisioner steps and rollbackSteps."""
    env = (stage.get("spec") or {}).get("environment") if isinstance(stage.get("spec"), dict) else None
    prov = env.get("provisioner") if isinstance(env, dict) else None
    if prov is None:
        return [], []
    pp = (*path, "spec", "environment", "provisioner")
    if not isinstance(prov, dict):
        errors.append(pipe.error(pp, "environment.provisioner must be a mapping {steps: [...], rollbackSteps: [...]}"))
        return [], []
    steps = flatten(pipe, prov.get("steps"), (*pp, "steps"), "provision", errors)
    rollback = flatten(pipe, prov.get("rollbackSteps"), (*pp, "rollbackSteps"), "provision_rollback", errors)
    seen: set[str] = set()
    for s in steps + rollback:
        if s.identifier in seen:
            errors.append(
                pipe.error(
                    (*s.path, "identifier"),
                    f"step identifier '{s.identifier}' is used twice in the provisioner of stage '{stage.get('identifier')}'",
                )
            )
        seen.add(s.identifier)
    return steps, rollback


# fields of a provisioner step that name or locate things (a stack, a folder, a workspace, a
# region, a connector): recorded in the state history and shown in the log, so no secret there
NO_SECRET = (
    "provisionerIdentifier",
    "stackName",
    "region",
    "connectorRef",
    "folderPath",
    "workspace",
    "paths",
    "files",
    "templateUrl",
    "type",
    "identifier",
    "name",
)


def _field(path: tuple) -> str | None:
    """The name of the field a value is in (a list's: `paths` for paths[0])."""
    return next((p for p in reversed(path) if isinstance(p, str)), None)


def _no_secret_message(path: tuple) -> str:
    return (
        f"a secret reference cannot be used in {_field(path)}: it names or locates what the step works on, which "
        "the state history records and the log shows"
    )


def _no_secret_here(pipe: Entity, s: StepDef, path: tuple) -> ConfigError:
    return pipe.error((*s.path, "spec", *path), _no_secret_message(path))


def with_secrets(runner: RunView, sr: StageRun, step: StepDef, spec: Any) -> Any:
    """A provisioner step's resolved spec with its secret references (a parameter, a var
    file's content, an environment variable...) replaced by their values, read from the
    store now with the stage's infrastructure's connector and region; the values are
    scrubbed from every output of the run from now on."""
    import json

    from reconciler.aws.secrets import read_values
    from reconciler.util import secrets as sec

    ids = sec.references(spec)
    if not ids:
        return spec
    for value, path in leaves(spec):
        if sec.references(value) and _field(path) in NO_SECRET:
            raise _no_secret_here(runner.pipe, step, path)
    s = sr.spec
    conn = json.dumps(s.connector, sort_keys=True) if s.connector else None
    region = s.region
    where = f"{step.type} step {step.identifier} ({runner.pipe.file}:{runner.pipe.line(*step.path)})"
    if DEFERRED in str(region):
        # the infrastructure's region is what the provisioner makes: the step's own region,
        # else the runner's (AWS_REGION)
        conf = (spec.get("configuration") or {}) if isinstance(spec, dict) else {}
        region = str(conf.get("region") or runner.aws.default_region() or "")
        if not region or DEFERRED in region:
            raise ReconcilerError(
                f"{where} uses a secret, but the region to read it in is not known yet (the infrastructure's region "
                "comes from this stage's provisioner)",
                hint="give the step a configuration.region, or set AWS_REGION",
            )
    values = read_values(runner.aws, {(region, sid, conn): [where] for sid in ids})
    runner.masker.add(*values.values())
    return sec.fill(spec, region, values)


def step_strings(s: StepDef) -> list[tuple[str, tuple]]:
    """Every string with an expression in a provisioner step's spec and timeout, with its path."""
    out = [(v, p) for v, p in leaves(s.body.get("spec"), (*s.path, "spec")) if isinstance(v, str) and "<+" in v]
    if isinstance(s.body.get("timeout"), str) and "<+" in s.body["timeout"]:
        out.append((s.body["timeout"], (*s.path, "timeout")))
    return out


# ---------------------------------------------------------------- the run


def pending_settings(settings: dict | None) -> dict:
    """Options.provisioner for a stage whose provisioner steps have not run yet: an output
    they would give stands as `(provisioner.NAME)` (unless --provisioner-outputs has it)."""
    out = dict(settings or {})
    out["stage"] = {"pending": True, "outputs": None, "used": []}
    return out


def run_step(runner: RunView, sr: StageRun, step: StepDef, timeout: float) -> tuple[dict, str]:
    """Run one provisioner step (pipeline hook): its outputs join the stage's provisioner
    outputs; the run summary gets them masked."""
    mem = memory(runner, sr)
    mem["ran"] = True
    mem.setdefault("started_at", st.now())
    spec = resolve_tree(sr, step, step.body.get("spec") or {}, (*step.path, "spec"))
    ctx = ProvisionContext(runner, sr, step, spec, timeout, mem)
    try:
        ctx.spec = with_secrets(runner, sr, step, spec)
        got = step_type(step.type).run(ctx)
    except (StepFailed, ReconcilerError) as exc:
        if isinstance(exc, StepFailed):
            exc.outputs = masked(exc.outputs)
        if step.phase == "provision":
            mem["records"].append({"step": step.identifier, "type": step.type, "status": "failed", "error": str(exc)})
            history.record(runner, sr, "failed")  # updated if the stage goes on (a failure strategy that ignores it)
        raise
    shown = masked(got.outputs, got.sensitive)
    from reconciler.util import secrets

    for k, v in shown.items():  # a sensitive value is scrubbed from every later output of the run
        if v == MASK and got.outputs[k] is not None:
            secrets.remember(str(got.outputs[k]), secret=True)
    runner.masker.add(*(str(got.outputs[k]) for k, v in shown.items() if v == MASK and got.outputs[k] is not None))
    if step.phase == "provision":
        mem["outputs"].update(got.outputs)
        mem.setdefault("sensitive", set()).update(k for k in got.outputs if k in got.sensitive or is_secret(k))
        mem["records"].append(
            {"step": step.identifier, "type": step.type, "status": "succeeded", "outputs": shown, **got.record}
        )
    else:
        mem.setdefault("rollback_records", []).append(
            {"step": step.identifier, "type": step.type, "status": "succeeded", **got.record}
        )
    for k, v in shown.items():
        runner.log(f"   output {k} = {v}")
    return {**got.summary, **shown}, got.output


def provisioned(runner: RunView, sr: StageRun) -> StepResult | None:
    """After the provisioner steps (pipeline hook): render the stage's target again with
    their outputs and record what was provisioned in the state history. A StepResult when
    the target cannot be rendered with them (the stage then rolls back), else None."""
    from reconciler.workspace.render import render_target, target_scope

    mem = memory(runner, sr)
    settings = dict(sr.opts.provisioner or {})
    settings["stage"] = {
        "pending": False,
        "outputs": dict(mem["outputs"]),
        "where": f"the outputs of stage '{sr.stage.identifier}' provisioner steps",
    }
    opts = copy.copy(sr.opts)
    opts.provisioner = settings
    try:
        warnings: list[str] = []
        spec = render_target(runner.ws, sr.target, opts, warnings)
        scope = target_scope(runner.ws, sr.target, opts)
    except ReconcilerError as exc:
        r = StepResult(
            sr.stage.identifier,
            sr.stage.name,
            sr.target,
            "provisionerOutputs",
            "map provisioner outputs",
            "Provisioner",
            "provision",
            status="Failed",
            started_at=st.now(),
            error=str(exc),
            error_type="Unknown",
            reason="StageRollback",
        )
        runner.log(f"-- provisioner outputs: the infrastructure cannot use them: {exc}")
        mem["records"].append({"step": "provisionerOutputs", "status": "failed", "error": str(exc)})
        history.record(runner, sr, "failed")
        return r
    for w in warnings:
        if w not in runner.warnings:
            runner.log(f"warning: {w}")
    sr.opts, sr.spec, sr.base_scope = opts, spec, scope
    runner.log(
        f"-- provisioned: {sr.target} deploys to {spec.region}" + (f" (function {spec.name})" if spec.name else "")
    )
    history.record(runner, sr, "succeeded")
    return None


def rollback_steps(runner: RunView, sr: StageRun) -> Iterator[StepDef]:
    """The steps of a stage's rollback (pipeline hook): the execution's rollbackSteps, then
    the provisioner's rollbackSteps if any provisioner step ran; afterwards the provision
    record in the state history says what the rollback did."""
    yield from sr.stage.rollback_steps
    if not sr.stage.provision_rollback_steps:
        return
    mem = memory(runner, sr)
    if not mem["ran"]:
        for s in sr.stage.provision_rollback_steps:
            runner.record_skip(sr, s, "no provisioner step ran")
        return
    runner.log("   provisioner rollback steps")
    if not mem.get("record_id"):
        history.record(runner, sr, "failed")
    yield from sr.stage.provision_rollback_steps
    results = [
        r
        for r in runner.steps
        if r.stage == sr.stage.identifier and r.target == sr.target and r.phase == "provision_rollback"
    ]
    ok = all(r.status in ("Success", "Skipped", "IgnoreFailed") for r in results) and any(
        r.status == "Success" for r in results
    )
    history.update_record(
        runner,
        sr,
        {
            "rolled_back": [
                {"step": r.step, "type": r.type, "status": r.status, **({"error": r.error} if r.error else {})}
                for r in results
            ],
            "rollback_records": mem.get("rollback_records", []),
            **({"status": "rolled_back"} if ok else {}),
        },
    )


__all__ = [  # what the pipeline, the command line and the tests use of the provisioner steps
    "MASK",
    "ProvisionerStep",
    "history_lines",
    "is_secret",
    "masked",
    "memory",
    "pending_settings",
    "plan_text",
    "provisioned",
    "refuse_saved_plan",
    "registered",
    "rejected",
    "resolve_tree",
    "rollback_steps",
    "run_step",
    "stage_provisioner",
    "step_strings",
    "step_type",
    "step_types",
    "where",
]
