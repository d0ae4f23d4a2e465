"""A Deploy stage's `environment.provisioner`: its `steps` run before the stage's execution
steps and give the `<+provisioner.NAME>` values of the stage's infrastructure definition;
its `rollbackSteps` run after the execution's rollback steps when the stage rolls back —
the order Harness runs them in ("Map Dynamically Provisioned Infrastructure").

One module per kind of provisioner, each a `StepType` (check: the step's spec without
running anything; run: the step, giving its outputs) in the `STEP_TYPES` registry, which
both the pipeline check and the runner use:

- shell.py: `ShellScriptProvision` (the script writes JSON to $PROVISIONER_OUTPUT_PATH);
- cloudformation.py: `CloudformationCreateStack`, `CloudformationDeleteStack`,
  `CloudformationRollbackStack`;
- terraform.py: `TerraformPlan`, `TerraformApply`, `TerraformRollback`, `TerraformDestroy`
  and the Terragrunt ones.

The pipeline runner (reconciler.pipeline) calls in here through a few hooks: the stage's
provisioner steps as StepDefs, their check, their run, the target rendered again with
their outputs, and the rollback steps. What a stage provisioned (step, outputs, stack) is
recorded in the state history as a `provision` record; secret-looking outputs are masked.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from reconciler.errors import ConfigError, ReconcilerError
from reconciler.workspace.expr import leaves
from reconciler.workspace.schema import DEFERRED

MASK = "(sensitive)"
PROVISION_PHASES = ("provision", "provision_rollback")
NOT_SUPPORTED = {
    "TerraformCloudRun": "Terraform Cloud runs are not supported: run the configuration with TerraformPlan/TerraformApply "
    "steps (terraform on PATH), or pass its outputs with --provisioner-outputs FILE",
}


class StepType(Protocol):
    """One kind of provisioner step."""

    def check(self, spec: dict, err: Callable[[tuple, str], ConfigError]) -> list[ConfigError]:
        """Problems in the step's spec, found without running or calling anything. `err(path
        under spec, message)` makes an error naming the pipeline's file and line."""

    def run(self, ctx: StepContext) -> Provisioned:
        """Run the step (its spec already resolved); raise StepFailed on failure."""


@dataclass
class Provisioned:
    """What one step gave: its outputs (the `<+provisioner.NAME>` values; none for a plan
    or a rollback), the names among them that are sensitive, the log text, and what the
    state history records about it (stack id, workspace, ...)."""

    outputs: dict = field(default_factory=dict)
    sensitive: set = field(default_factory=set)
    output: str = ""
    record: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)  # shown in the run summary besides the outputs


@dataclass
class StepContext:
    runner: Any  # reconciler.pipeline.Runner
    sr: Any  # reconciler.pipeline.StageRun
    step: Any  # reconciler.pipeline.StepDef
    spec: dict  # the step's spec, expressions resolved
    timeout: float
    memory: dict  # this stage run's provisioning: provisionerIdentifier → what earlier steps did

    @property
    def log(self) -> Callable[[str], None]:
        return self.runner.log

    @property
    def workspace(self) -> Path:
        return Path(self.runner.settings.workspace)

    @property
    def aws(self):
        return self.runner.aws

    def error(self, path: tuple, message: str, hint: str | None = None) -> ConfigError:
        return self.runner.pipe.error((*self.step.path, "spec", *tuple(path)), message, hint)

    def connector(self, ref: Any) -> dict | None:
        from reconciler.workspace.connectors import aws_connector

        return aws_connector(self.runner.ws, ref)

    def workspace_file(self, rel: Any, path: tuple) -> Path:
        """A file of the workspace named by the step (relative to the workspace root)."""
        return workspace_file(self.workspace, rel, lambda m, h=None: self.error(path, m, h))

    def by_identifier(self) -> dict:
        return self.memory.setdefault("by_identifier", {})


def workspace_file(root: Path, rel: Any, err: Callable[..., ConfigError], folder: bool = False) -> Path:
    if not isinstance(rel, str) or not rel.strip():
        raise err("a file path of the workspace is needed here")
    real = root.resolve()
    candidate = (real / rel.strip().lstrip("/")).resolve()
    if candidate != real and real not in candidate.parents:
        raise err(f"path '{rel}' leaves the workspace", "provisioner files must live inside the workspace")
    if folder and not candidate.is_dir():
        raise err(f"folder '{rel}' not found in the workspace ({real})")
    if not folder and not candidate.is_file():
        raise err(f"file '{rel}' not found in the workspace ({real})")
    return candidate


def _registry() -> dict[str, StepType]:
    from reconciler.pipeline.provisioners import cloudformation, shell, terraform

    return {**shell.STEP_TYPES, **cloudformation.STEP_TYPES, **terraform.STEP_TYPES}


_LOADED: dict[str, StepType] = {}


def step_types() -> dict[str, StepType]:
    """The registry: step type name → StepType (the modules load when a pipeline is checked or run)."""
    if not _LOADED:
        _LOADED.update(_registry())
    return _LOADED


def step_type(name: str) -> StepType:
    return step_types()[name]


# ---------------------------------------------------------------- the pipeline check


def supported(phase: str, execution_types: tuple) -> tuple:
    return tuple(step_types()) if phase in PROVISION_PHASES else execution_types


def where(phase: str) -> str:
    return "in environment.provisioner" if phase in PROVISION_PHASES else "in execution"


def rejected(step_type_name: Any, phase: str) -> str | None:
    if step_type_name in NOT_SUPPORTED:
        return NOT_SUPPORTED[step_type_name]
    if phase not in PROVISION_PHASES and step_type_name in step_types():
        return "provisioner steps run in the stage's environment.provisioner.steps (and rollbackSteps)"
    return None


def stage_provisioner(pipe, stage: dict, path: tuple, errors: list, flatten: Callable) -> tuple[list, list]:
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


def check_step(pipe, s) -> list[ConfigError]:
    """A provisioner step's spec, by its type's own check."""
    spec = s.body.get("spec") or {}
    if not isinstance(spec, dict):
        return []  # the pipeline check says so
    errors = [
        _no_secret_here(pipe, s, path)
        for value, path in leaves(spec)
        if isinstance(value, str) and "secrets.getValue" in value and _field(path) in NO_SECRET
    ]
    return errors + step_type(s.type).check(
        spec, lambda path, message, hint=None: pipe.error((*s.path, "spec", *tuple(path)), message, hint)
    )


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


def _no_secret_here(pipe, s, path: tuple) -> ConfigError:
    return pipe.error(
        (*s.path, "spec", *path),
        f"a secret reference cannot be used in {_field(path)}: it names or locates what the step works on, which "
        "the state history records and the log shows",
    )


def with_secrets(runner, sr, step, spec: Any) -> Any:
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


def step_strings(s) -> list[tuple[str, tuple]]:
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


def memory(runner, sr) -> dict:
    """This stage run's provisioning, kept on the runner."""
    store = runner.__dict__.setdefault("provisioning", {})
    return store.setdefault((sr.stage.identifier, sr.target), {"outputs": {}, "records": [], "ran": False})


def resolve_tree(sr, step, node: Any, path: tuple) -> Any:
    if isinstance(node, dict):
        return {k: resolve_tree(sr, step, v, (*path, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_tree(sr, step, v, (*path, i)) for i, v in enumerate(node)]
    return sr.resolve(node, path, step)


def is_secret(name: str) -> bool:
    """An output whose name the project's masking policy calls sensitive (reconciler.secrets:
    `sensitive_names`, by default PASSWORD, SECRET, TOKEN, KEY, CREDENTIAL, PRIVATE; `mask_all`)."""
    from reconciler.util import secrets

    return secrets.config().sensitive(str(name))


def masked(outputs: dict, sensitive: set | frozenset = frozenset()) -> dict:
    return {k: (MASK if (k in sensitive or is_secret(k)) else v) for k, v in outputs.items()}


def run_step(runner, sr, step, timeout: float) -> tuple[dict, str]:
    """Run one provisioner step (pipeline hook): its outputs join the stage's provisioner
    outputs; the run summary gets them masked."""
    from reconciler.pipeline.runner import StepFailed

    mem = memory(runner, sr)
    mem["ran"] = True
    mem.setdefault("started_at", _now())
    spec = resolve_tree(sr, step, step.body.get("spec") or {}, (*step.path, "spec"))
    ctx = StepContext(runner, sr, step, spec, timeout, mem)
    try:
        ctx.spec = with_secrets(runner, sr, step, spec)
        got = step_type(step.type).run(ctx)
    except (StepFailed, ReconcilerError) as exc:
        if isinstance(exc, StepFailed):
            exc.outputs = masked(exc.outputs)
        if step.phase == "provision":
            mem["records"].append({"step": step.identifier, "type": step.type, "status": "failed", "error": str(exc)})
            _record(runner, sr, "failed")  # updated if the stage goes on (a failure strategy that ignores it)
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


def provisioned(runner, sr):
    """After the provisioner steps (pipeline hook): render the stage's target again with
    their outputs and record what was provisioned in the state history. A StepResult when
    the target cannot be rendered with them (the stage then rolls back), else None."""
    from reconciler.pipeline.runner import StepResult
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
            started_at=_now(),
            error=str(exc),
            error_type="Unknown",
            reason="StageRollback",
        )
        runner.log(f"-- provisioner outputs: the infrastructure cannot use them: {exc}")
        mem["records"].append({"step": "provisionerOutputs", "status": "failed", "error": str(exc)})
        _record(runner, sr, "failed")
        return r
    for w in warnings:
        if w not in runner.warnings:
            runner.log(f"warning: {w}")
    sr.opts, sr.spec, sr.base_scope = opts, spec, scope
    runner.log(
        f"-- provisioned: {sr.target} deploys to {spec.region}" + (f" (function {spec.name})" if spec.name else "")
    )
    _record(runner, sr, "succeeded")
    return None


def rollback_steps(runner, sr) -> Iterator:
    """The steps of a stage's rollback (pipeline hook): the execution's rollbackSteps, then
    the provisioner's rollbackSteps if any provisioner step ran; afterwards the provision
    record in the state history says what the rollback did."""
    yield from sr.stage.rollback_steps
    if not sr.stage.provision_rollback_steps:
        return
    mem = memory(runner, sr)
    if not mem["ran"]:
        for s in sr.stage.provision_rollback_steps:
            runner._record_skip(sr, s, "no provisioner step ran")
        return
    runner.log("   provisioner rollback steps")
    if not mem.get("record_id"):
        _record(runner, sr, "failed")
    yield from sr.stage.provision_rollback_steps
    results = [
        r
        for r in runner.steps
        if r.stage == sr.stage.identifier and r.target == sr.target and r.phase == "provision_rollback"
    ]
    ok = all(r.status in ("Success", "Skipped", "IgnoreFailed") for r in results) and any(
        r.status == "Success" for r in results
    )
    _update_record(
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


# ---------------------------------------------------------------- the state history


def _now() -> str:
    from reconciler.store import state as st

    return st.now()


def _record(runner, sr, status: str) -> None:
    """The `provision` record of this stage run, in the history of its target's state
    (written once, then updated)."""
    from reconciler.store import state as st

    mem = memory(runner, sr)
    spec, s = sr.spec, runner.settings
    rec = {
        "id": mem.get("record_id") or str(uuid.uuid4()),
        "function": spec.name if DEFERRED not in str(spec.name) else None,
        "service": spec.service,
        "operation": "provision",
        "status": status,
        "started_at": mem.get("started_at") or _now(),
        "finished_at": _now(),
        "version": None,
        "code_sha256": None,
        "pipeline": runner.pipe.identifier,
        "stage": sr.stage.identifier,
        "region": spec.region if DEFERRED not in str(spec.region) else None,
        "outputs": masked(mem["outputs"], mem.get("sensitive", set())),
        "provisioned": mem["records"],
    }
    with st.locked(
        st.state_path(s.state_dir, sr.target.environment, sr.target.infrastructure), "provision", timeout=s.lock_timeout
    ):
        state = st.load(s.state_dir, sr.target.environment, sr.target.infrastructure)
        old = next((h for h in state.history if h.get("id") == rec["id"]), None)
        if old is None:
            state.history.append(rec)
        else:
            old.update(rec, started_at=old.get("started_at") or rec["started_at"])
        state.write()
    mem["record_id"] = rec["id"]


def _update_record(runner, sr, changes: dict) -> None:
    from reconciler.store import state as st

    mem = memory(runner, sr)
    s = runner.settings
    with st.locked(
        st.state_path(s.state_dir, sr.target.environment, sr.target.infrastructure), "provision", timeout=s.lock_timeout
    ):
        state = st.load(s.state_dir, sr.target.environment, sr.target.infrastructure)
        rec = next((h for h in state.history if h.get("id") == mem.get("record_id")), None)
        if rec is None:
            return
        rec.update(changes, finished_at=_now())
        state.write()


def history_lines(rows: list[dict]) -> str:
    """`history`: what each `provision` record provisioned, under the table."""
    lines = []
    for r in rows:
        if r.get("operation") != "provision":
            continue
        lines.append(
            f"{r['time']}  provisioned by pipeline {r.get('pipeline')}, stage {r.get('stage')} ({r['status']}):"
        )
        for p in r.get("provisioned") or []:
            extra = [f"{k}={v}" for k, v in (p.get("outputs") or {}).items()]
            extra += [f"{k} {p[k]}" for k in ("stack_id", "stack_name", "workspace", "folder") if p.get(k)]
            if p.get("error"):
                extra.append(f"error: {p['error']}")
            lines.append(
                f"  {p.get('step')} ({p.get('type', '-')}, {p.get('status')})"
                + (": " + ", ".join(extra) if extra else "")
            )
    return ("\n" + "\n".join(lines) + "\n") if lines else ""


# ---------------------------------------------------------------- plan --pipeline


def plan_provisioning(runner, sr, infos: list) -> Any:
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


def _existing_stack_outputs(runner, sr) -> tuple[dict, dict]:
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
