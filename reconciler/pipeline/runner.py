"""`reconciler run PIPELINE`: execute a Harness pipeline's Deployment stages, steps and
rollback steps.

A stage deploys to its targets (service × environment × each infrastructure definition, or
every infrastructure of the environment with `deployToAll: true`); with several targets the
stage runs once per target, like Harness's multi-infrastructure stages. Steps run in order:

- `AwsLambdaDeploy`: plan + apply (SPEC §5) of the stage's target, auto-approved — running
  the pipeline is the approval;
- `AwsLambdaRollback`: put back what ran before this stage's deploy (the `previous`
  snapshot the apply recorded in the state history), recorded as a rollback;
- `ShellScript`: `spec.source.spec.script` (Inline) with bash on this machine, expressions
  resolved, deployment facts exported as RECONCILER_* variables, `environmentVariables`
  exported and `outputVariables` read back from the script's shell variables;
- `Wait`: sleep `spec.duration`.

A stage's `environment.provisioner` steps run before its execution steps, and their outputs
are the target's `<+provisioner.NAME>` values; its rollbackSteps run after the execution's
rollback steps (reconciler.provisioners, hooked in here).

`when` (stageStatus Success|Failure|All and a condition), `timeout`, `failureStrategies`
(StageRollback, PipelineRollback, Abort, MarkAsFailure, Ignore, MarkAsSuccess, Retry,
ManualIntervention → its onTimeout action) and step groups (flattened) are honoured.
Runtime inputs come from an input set file (`--inputs FILE`), `--var` and `--artifact`.
"""

from __future__ import annotations

import copy
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError, ErrorList, ReconcilerError, did_you_mean
from reconciler.model import FunctionSpec, Plan, Target
from reconciler.pipeline.checks import check_pipeline
from reconciler.pipeline.conditions import _s, evaluate_condition, parse_duration
from reconciler.pipeline.inputs import load_inputs, overlay
from reconciler.pipeline.model import RunSettings, StageDef, StageResult, StepDef, StepFailed, StepResult
from reconciler.store import state as st
from reconciler.util import secrets as sec
from reconciler.util.yamlsrc import Doc
from reconciler.workspace.expr import Scope, input_default, is_runtime_input, leaves, resolve_expr, resolve_string
from reconciler.workspace.load import Entity, load_workspace, pipe_skipped_stages
from reconciler.workspace.render import Options, render_target, stage_targets, target_scope, variable_input
from reconciler.workspace.shell import base_environment, prepare_script, run_script

DEFAULT_TIMEOUT = "10m"
OUTPUT_TAIL = 16000  # characters of a script's output kept for the summary

# serviceInputs leaves the service itself decides when they stay runtime inputs
SERVICE_DECIDES = ("primaryArtifactRef", "sources")


class StageRun:
    """One stage for one target: its steps, its scope and what its deploys changed."""

    def __init__(
        self, runner: Runner, stage: StageDef, target: Target, opts: Options, spec: FunctionSpec, scope: Scope
    ):
        self.runner, self.stage, self.target, self.opts, self.spec, self.base_scope = (
            runner,
            stage,
            target,
            opts,
            spec,
            scope,
        )
        self.failed = False
        self.deployed: list[str] = []  # apply history record ids, in order
        self.outputs: dict[str, dict] = {}  # step identifier → outputs
        self.result = StageResult(stage.identifier, stage.name, target)

    # ------------------------------------------------------------ expressions
    def scope(self, step: StepDef | None) -> Scope:
        r = self.runner
        fixed = dict(self.base_scope.fixed)
        fixed.update(r.pipeline_fixed)
        fixed.update(
            {
                "stage.name": self.stage.name,
                "stage.identifier": self.stage.identifier,
                "stage.description": self.stage.body.get("description", ""),
            }
        )
        for v in self.stage.body.get("variables") or []:
            if isinstance(v, dict) and "name" in v:
                fixed[f"stage.variables.{v['name']}"] = r.variable_value(v, self.stage.path)
        art = self.spec.artifact or {}
        fixed.update(
            {
                f"artifact.{k}": v
                for k, v in {
                    "identifier": art.get("id"),
                    "type": {"S3": "AmazonS3", "ECR": "Ecr"}.get(art.get("type"), art.get("type")),
                    "bucketName": art.get("bucket"),
                    "filePath": art.get("key"),
                    "region": art.get("region"),
                    "imagePath": art.get("repository"),
                    "tag": art.get("tag"),
                    "digest": art.get("digest"),
                }.items()
                if v is not None
            }
        )
        if step is not None:
            fixed.update({"step.name": step.name, "step.identifier": step.identifier, "step.type": step.type})
        fixed.update(r.outputs_fixed)
        own = f"pipeline.stages.{self.stage.identifier}.spec.execution.steps."
        for k, v in r.outputs_fixed.items():  # this stage's own steps, relative forms
            if k.startswith(own):
                fixed["execution.steps." + k[len(own) :]] = v
                fixed["steps." + k[len(own) :]] = v
        b = self.base_scope
        return Scope(
            fixed=fixed,
            service_variables=b.service_variables,
            env_variables=b.env_variables,
            resolve_variable=b.resolve_variable,
            provisioner=b.provisioner,
            in_pipeline=True,
        )

    def resolve(self, value: Any, path: tuple, step: StepDef | None = None) -> Any:
        if not isinstance(value, str) or "<+" not in value:
            return value
        pipe = self.runner.pipe
        return resolve_string(value, self.scope(step), lambda: (pipe.file, pipe.line(*path)))

    def script(self, step: StepDef) -> tuple[str, dict[str, str]]:
        """A ShellScript step's script with its expressions as environment variable references, and their values."""
        path = (*step.path, "spec", "source", "spec", "script")
        text = (((step.body.get("spec") or {}).get("source") or {}).get("spec") or {}).get("script") or ""
        pipe = self.runner.pipe

        def where():
            return pipe.file, pipe.line(*path)

        scope = self.scope(step)
        return prepare_script(str(text), lambda e: resolve_expr(e, scope, where), where)

    def facts(self) -> dict:
        """The deployment facts exported to scripts: from the state, as recorded now."""
        s = self.spec
        state = st.load(self.runner.settings.state_dir, s.environment, s.infrastructure)
        rec = state.functions.get(s.name) or {}
        aliases = [a["Name"] for a in s.aliases] or sorted(rec.get("aliases") or {})
        arn = rec.get("arn") or ""
        version = rec.get("version") or ""
        return {
            "RECONCILER_FUNCTION_NAME": s.name,
            "RECONCILER_FUNCTION_ARN": arn,
            "RECONCILER_VERSION": version,
            "RECONCILER_VERSION_ARN": f"{arn}:{version}" if arn and version else "",
            "RECONCILER_ALIAS": aliases[0] if aliases else "",
            "RECONCILER_ALIASES": ",".join(aliases),
            "RECONCILER_REGION": s.region,
            "RECONCILER_SERVICE": s.service,
            "RECONCILER_ENVIRONMENT": s.environment,
            "RECONCILER_INFRASTRUCTURE": s.infrastructure,
            "RECONCILER_PIPELINE": self.runner.pipe.identifier,
            "RECONCILER_STAGE": self.stage.identifier,
        }


class Runner:
    def __init__(self, settings: RunSettings, aws_factory: Callable[[], Any], log: Callable[[str], None]):
        self.settings = settings
        self.aws_factory = aws_factory
        self._aws = None
        self.log = log
        self.steps: list[StepResult] = []
        self.stage_results: list[StageResult] = []
        self.outputs_fixed: dict[str, Any] = {}
        self.pipeline_fixed: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.skipped: list[tuple[tuple, dict, str]] = []  # stages that are not reconciler's: (path, stage, why)
        # scrubs every output (step output and output variables included) of secret values, the
        # runner's credentials among them; add() what else must not be shown
        self.masker = sec.Masker()
        sec.remember_credentials()

    @property
    def aws(self):
        if self._aws is None:
            self._aws = self.aws_factory()
        return self._aws

    # ------------------------------------------------------------ preparing
    def prepare(self) -> list[tuple[StageDef, list[tuple[Target, Options, FunctionSpec, Scope]]]]:
        """Load, apply the inputs, check the pipeline and render every stage target: all
        before anything runs, every problem reported together."""
        s = self.settings
        self.ws = load_workspace(s.workspace, s.state_dir)
        if s.pipeline not in self.ws.pipelines:
            hint = did_you_mean(s.pipeline, self.ws.pipelines)
            raise ConfigError(
                f"no pipeline '{s.pipeline}' in the workspace; defined: {', '.join(sorted(self.ws.pipelines)) or 'none'}",
                hint=hint if hint and hint.startswith("did you mean") else None,
            )
        pipe = self.ws.pipelines[s.pipeline]
        inputs_doc = None
        if s.inputs_file:
            over, inputs_doc = load_inputs(Path(s.inputs_file), pipe.identifier)
            pipe = Entity(pipe.kind, pipe.identifier, pipe.name, overlay(pipe.body, over), pipe.doc)
        self.pipe = pipe
        stages, errors = check_pipeline(pipe, self.ws, strict=True)
        errors += self._unresolved_inputs(pipe, inputs_doc, stages)
        self.skipped = pipe_skipped_stages(self.ws, pipe)
        if errors:
            raise errors[0] if len(errors) == 1 else ErrorList(errors)
        self.pipeline_fixed = {
            "pipeline.name": pipe.name,
            "pipeline.identifier": pipe.identifier,
            "pipeline.executionId": str(uuid.uuid4()),
            "pipeline.sequenceId": 1,
            "pipeline.startTs": int(time.time() * 1000),
        }
        for v in pipe.body.get("variables") or []:
            if isinstance(v, dict) and "name" in v:
                self.pipeline_fixed[f"pipeline.variables.{v['name']}"] = self.variable_value(v, ("variables",))
        plan: list = []
        for stage in stages:
            items = []
            base = Options(
                services=[],
                environments=[],
                infrastructures=[],
                variables=dict(s.variables),
                artifact=s.artifact,
                **({"provisioner": s.provisioner} if s.provisioner is not None else {}),
            )
            try:
                tgts = stage_targets(self.ws, pipe, stage.path, stage.body, base)
            except ReconcilerError as exc:
                errors.append(exc)
                continue
            if not tgts:
                errors.append(pipe.error(stage.path, f"stage '{stage.identifier}' deploys to no infrastructure"))
            for t in tgts:
                opts = self.stage_options(stage, t)
                if stage.provision_steps:  # its outputs are known once the steps have run
                    from reconciler.pipeline.provisioners import pending_settings

                    opts.provisioner = pending_settings(opts.provisioner)
                try:
                    warnings: list[str] = []
                    spec = render_target(self.ws, t, opts, warnings)
                    self.warnings += warnings
                    items.append((t, opts, spec, target_scope(self.ws, t, opts)))
                except ErrorList as exc:
                    errors.extend(exc.errors)
                except ReconcilerError as exc:
                    errors.append(exc)
            plan.append((stage, items))
        if errors:
            uniq = list({str(e): e for e in errors}.values())
            raise uniq[0] if len(uniq) == 1 else ErrorList(uniq)
        # every script and condition must resolve (output variables of earlier steps stand in as "")
        for stage, items in plan:
            for t, opts, spec, scope in items:
                errors += self._check_expressions(stage, t, opts, spec, scope)
        if errors:
            uniq = list({str(e): e for e in errors}.values())
            raise uniq[0] if len(uniq) == 1 else ErrorList(uniq)
        return plan

    def variable_value(self, v: dict, where: tuple) -> Any:
        return variable_input(v, self.settings.variables)

    def stage_options(self, stage: StageDef, t: Target) -> Options:
        s = self.settings
        variables = {}
        si = ((stage.body.get("spec") or {}).get("service") or {}).get("serviceInputs") or {}
        sd_spec = ((si.get("serviceDefinition") or {}).get("spec") or {}) if isinstance(si, dict) else {}
        env_inputs = (((stage.body.get("spec") or {}).get("environment") or {}).get("environmentInputs") or {}).get(
            "variables"
        ) or []
        for v in list(env_inputs) + list(sd_spec.get("variables") or []):
            if (
                isinstance(v, dict)
                and "name" in v
                and not is_runtime_input(v.get("value"))
                and v.get("value") is not None
            ):
                variables[str(v["name"])] = v["value"]
        variables.update(s.variables)  # --var wins over the input set
        artifact = s.artifact
        ref = ((sd_spec.get("artifacts") or {}).get("primary") or {}).get("primaryArtifactRef")
        if artifact is None and isinstance(ref, str) and ref and "<+" not in ref:
            artifact = ref
        kw = {"provisioner": s.provisioner} if s.provisioner is not None else {}
        return Options(
            services=[t.service],
            environments=[t.environment],
            infrastructures=[t.infrastructure],
            variables=variables,
            artifact=artifact,
            only=[t],
            **kw,
        )

    def _unresolved_inputs(self, pipe: Entity, inputs_doc: Doc | None, stages: list[StageDef]) -> list[ConfigError]:
        """Every `<+input>` without a default that nothing gives a value to."""
        errs: list[ConfigError] = []
        given = self.settings.variables

        def check(node: Any, path: tuple) -> None:
            if not is_runtime_input(node) or input_default(node)[0]:
                return
            if path and (path[-1] in SERVICE_DECIDES or "artifacts" in path) and "serviceInputs" in path:
                return  # the service's own sources and artifact choice apply (--artifact, --var artifact.FIELD)
            if (
                path[-1:] in (("serviceRef",), ("environmentRef",), ("infrastructureDefinitions",))
                or path[-2:-1] == ("infrastructureDefinitions",)
                or "infrastructureDefinitions" in path
            ):
                return  # chosen with -s/-e/-i: rendering says so when missing
            if path[-1] == "value" and len(path) >= 3 and path[-3] == "variables":
                holder = _at(pipe.body, path[:-1])
                if isinstance(holder, dict) and holder.get("name") in given:
                    return
                what = f"variable '{(holder or {}).get('name')}'"
                hint = f"give it with --var {(holder or {}).get('name')}=VALUE or in an --inputs file"
            else:
                what = _dotted(path)
                hint = "give it in an --inputs FILE (a Harness input set)"
            errs.append(pipe.error(path, f"runtime input {what} (<+input>) has no value", hint))

        # only what the run uses: the pipeline's variables and its AwsLambda stages (a CI stage's
        # inputs or properties.ci.codebase are not reconciler's to ask for)
        for value, path in leaves(pipe.body.get("variables"), ("variables",)):
            check(value, path)
        for at in dict.fromkeys(s.path for s in stages):
            for value, path in leaves(_at(pipe.body, at), at):
                check(value, path)
        return errs

    def _check_expressions(
        self, stage: StageDef, t: Target, opts: Options, spec: FunctionSpec, scope: Scope
    ) -> list[ConfigError]:
        sr = StageRun(self, stage, t, opts, spec, scope)
        errs: list[ConfigError] = []
        declared: dict[str, Any] = {}
        for s in stage.provision_steps + stage.provision_rollback_steps:
            from reconciler.pipeline.provisioners import step_strings

            for value, path in step_strings(s):
                errs += self._try(lambda v=value, p=path, st=s: sr.resolve(v, p, st))
        for s in stage.steps + stage.rollback_steps:
            sp = s.body.get("spec") or {}
            for k in ("timeout",):
                if isinstance(s.body.get(k), str) and "<+" in s.body[k]:
                    errs += self._try(lambda: sr.resolve(s.body[k], (*s.path, k), s))
            if s.type == "ShellScript":
                errs += self._try(lambda: sr.script(s))
                for i, v in enumerate(sp.get("environmentVariables") or []):
                    errs += self._try(
                        lambda: sr.resolve(v.get("value"), (*s.path, "spec", "environmentVariables", i, "value"), s)
                    )
                for v in sp.get("outputVariables") or []:
                    declared[f"{s.identifier}"] = {**declared.get(s.identifier, {}), v["name"]: ""}
            when = s.body.get("when") or {}
            if isinstance(when, dict) and isinstance(when.get("condition"), str) and "<+" in when["condition"]:
                errs += self._try(
                    lambda: evaluate_condition(
                        when["condition"], lambda e: sr.resolve(e, (*s.path, "when", "condition"), s)
                    ),
                    ignore_value_errors=True,
                )
            for sid, outs in declared.items():
                for k in outs:
                    self.outputs_fixed[
                        f"pipeline.stages.{stage.identifier}.spec.execution.steps.{sid}.output.outputVariables.{k}"
                    ] = ""
        return errs

    @staticmethod
    def _try(fn: Callable[[], Any], ignore_value_errors: bool = False) -> list[ConfigError]:
        try:
            fn()
        except ConfigError as exc:
            return [exc]
        except ValueError:
            if not ignore_value_errors:
                raise
        return []

    # ------------------------------------------------------------ running
    def run(self) -> str:
        """Execute; the pipeline's status: Success, Failed or Aborted."""
        t0 = time.monotonic()
        plan = self.prepare()  # (declared output variables stand as "" until their step sets them)
        for w in self.warnings:
            self.log(f"warning: {w}")
        self.log(f"Pipeline {self.pipe.identifier} ({self.pipe.name}): {sum(len(i) for _, i in plan)} stage run(s)")
        for _path, stage, why in self.skipped:
            self.stage_results.append(
                StageResult(
                    str(stage.get("identifier")),
                    str(stage.get("name") or stage.get("identifier")),
                    None,
                    status="Skipped",
                    reason=why,
                )
            )
            self.log(f"== stage {stage.get('name') or stage.get('identifier')}: skipped ({why})")
        status = "Success"
        done: list[StageRun] = []
        for stage, items in plan:
            for t, opts, spec, scope in items:
                sr = StageRun(self, stage, t, opts, spec, scope)
                skip = self._stage_skipped(sr, status)
                if skip:
                    sr.result.status, sr.result.reason = "Skipped", skip
                    self.stage_results.append(sr.result)
                    self.log(f"\n== stage {stage.name} [{t}]: skipped ({skip})")
                    for s in stage.steps:
                        self._record_skip(sr, s, f"stage skipped: {skip}")
                    continue
                outcome = self._run_stage(sr)
                self.stage_results.append(sr.result)
                if outcome == "PipelineRollback":
                    for prev in reversed(done):
                        self.log(f"\n== pipeline rollback: stage {prev.stage.name} [{prev.target}]")
                        self._rollback(prev, f"pipeline rollback after stage '{stage.identifier}' failed")
                done.append(sr)
                if sr.result.status == "Aborted":
                    status = "Aborted"
                elif sr.result.status == "Failed" and status == "Success":
                    status = "Failed"
            if status == "Aborted":
                break
        self.status = status
        self.duration = time.monotonic() - t0
        self.log(f"\nPipeline {self.pipe.identifier}: {status} ({self.duration:.1f}s)")
        return status

    def _stage_skipped(self, sr: StageRun, pipeline_status: str) -> str | None:
        when = sr.stage.body.get("when") or {}
        want = when.get("pipelineStatus", "Success") if isinstance(when, dict) else "Success"
        if want == "Success" and pipeline_status != "Success":
            return "an earlier stage failed"
        if want == "Failure" and pipeline_status == "Success":
            return "when.pipelineStatus is Failure and the pipeline has not failed"
        cond = when.get("condition") if isinstance(when, dict) else None
        if cond is not None and not self._condition(sr, None, cond, (*sr.stage.path, "when", "condition")):
            return f"when.condition {cond!r} evaluated to false"
        return None

    def _condition(self, sr: StageRun, step: StepDef | None, cond: Any, path: tuple) -> bool:
        try:
            return evaluate_condition(cond, lambda e: sr.resolve(e, path, step))
        except ValueError as exc:
            raise self.pipe.error(path, f"when.condition {cond!r}: {exc}") from None

    def _run_stage(self, sr: StageRun) -> str | None:
        stage = sr.stage
        self.log(f"\n== stage {stage.name} [{sr.target}, {sr.spec.region}]")
        action_taken = None
        for step in stage.provision_steps + stage.steps:
            if step is (stage.steps or [None])[0] and stage.provision_steps and not sr.failed:
                from reconciler.pipeline.provisioners import provisioned

                failed = provisioned(self, sr)  # the stage's target rendered again with the provisioner outputs
                if failed is not None:
                    self.steps.append(failed)
                    sr.failed, action_taken = True, "StageRollback"
                    break
            try:
                skip, early = self._step_skipped(sr, step), None
            except ReconcilerError as exc:  # a condition that cannot be evaluated fails the step
                skip, early = None, exc
            if skip:
                self._record_skip(sr, step, skip)
                continue
            res = self._run_step_with_strategy(sr, step, early)
            if res.status == "Failed":
                action = res.reason
                if action in ("StageRollback", "StepGroupRollback", "PipelineRollback", "Abort"):
                    action_taken = action
                    break
        if sr.failed:
            sr.result.status = "Aborted" if action_taken == "Abort" else "Failed"
        else:
            sr.result.status = "Success"
        # the steps after a stop are reported as skipped
        ran = {(r.step, r.phase) for r in self.steps if r.stage == stage.identifier and r.target == sr.target}
        for step in stage.provision_steps + stage.steps:
            if (step.identifier, step.phase) not in ran:
                self._record_skip(sr, step, f"the stage stopped ({action_taken})")
        if action_taken in ("StageRollback", "StepGroupRollback", "PipelineRollback"):
            self._rollback(sr, f"step failed in stage '{stage.identifier}' ({action_taken})")
            return action_taken
        return action_taken

    def _step_skipped(self, sr: StageRun, step: StepDef) -> str | None:
        whens = list(step.group_when) + ([(step.body["when"], (*step.path, "when"))] if step.body.get("when") else [])
        if not whens and sr.failed:
            return "an earlier step failed (stageStatus Success)"
        for when, path in whens:
            if not isinstance(when, dict):
                continue
            want = when.get("stageStatus", "Success")
            if want == "Success" and sr.failed:
                return "an earlier step failed (stageStatus Success)"
            if want == "Failure" and not sr.failed:
                return "stageStatus Failure and no step has failed"
            cond = when.get("condition")
            if cond is not None and not self._condition(sr, step, cond, (*path, "condition")):
                return f"when.condition {cond!r} evaluated to false"
        return None

    def _record_skip(self, sr: StageRun, step: StepDef, reason: str) -> None:
        r = StepResult(
            sr.stage.identifier,
            sr.stage.name,
            sr.target,
            step.identifier,
            step.name,
            step.type,
            step.phase,
            status="Skipped",
            reason=reason,
        )
        self.steps.append(r)
        self.log(f"-- step {step.name} ({step.type}): skipped: {reason}")

    def _strategy(self, sr: StageRun, step: StepDef, error_type: str) -> dict:
        for items in (
            step.body.get("failureStrategies"),
            step.group_strategies,
            sr.stage.body.get("failureStrategies"),
            self.pipe.body.get("failureStrategies"),
        ):
            for item in items or []:
                of = item.get("onFailure") or {}
                errors = of.get("errors") or []
                if "AllErrors" in errors or error_type in errors:
                    return of.get("action") or {}
        return {"type": "StageRollback"}  # no strategy matches: the stage rolls back (SPEC §5 spirit)

    def _run_step_with_strategy(self, sr: StageRun, step: StepDef, early: ReconcilerError | None = None) -> StepResult:
        attempt = 0
        while True:
            res = self._run_step(sr, step, early)
            if res.status != "Failed":
                return res
            action = self._strategy(sr, step, res.error_type or "Unknown")
            kind = action.get("type", "StageRollback")
            spec = action.get("spec") or {}
            if kind == "ManualIntervention":
                sub = (spec.get("onTimeout") or {}).get("action") or {"type": "Abort"}
                self.log(
                    f"   ManualIntervention needs a person; reconciler run is unattended: taking its onTimeout action {sub.get('type')}"
                )
                action, kind, spec = sub, sub.get("type"), sub.get("spec") or {}
            if kind == "Retry" and attempt < int(spec.get("retryCount") or 1):
                intervals = spec.get("retryIntervals") or ["1s"]
                wait = parse_duration(intervals[min(attempt, len(intervals) - 1)])
                attempt += 1
                self.log(f"   retry {attempt}/{spec.get('retryCount') or 1} in {wait:g}s")
                self.steps.remove(res)
                time.sleep(wait)
                continue
            if kind == "Retry":
                sub = (spec.get("onRetryFailure") or {}).get("action") or {"type": "StageRollback"}
                kind = sub.get("type", "StageRollback")
            if kind in ("Ignore", "MarkAsSuccess"):
                res.status = "IgnoreFailed" if kind == "Ignore" else "Success"
                res.reason = kind
                self.log(f"   failure strategy {kind}: the stage goes on")
                return res
            sr.failed = True
            res.reason = kind
            self.log(f"   failure strategy: {kind}")
            return res

    def _run_step(self, sr: StageRun, step: StepDef, early: ReconcilerError | None = None) -> StepResult:
        r = StepResult(
            sr.stage.identifier,
            sr.stage.name,
            sr.target,
            step.identifier,
            step.name,
            step.type,
            step.phase,
            started_at=st.now(),
        )
        self.steps.append(r)
        self.log(f"-- step {step.name} ({step.type})")
        t0 = time.monotonic()
        try:
            if early is not None:
                raise early
            timeout = parse_duration(
                sr.resolve(step.body.get("timeout") or DEFAULT_TIMEOUT, (*step.path, "timeout"), step)
            )
            if step.type == "AwsLambdaDeploy":
                r.outputs = self._deploy(sr, step)
            elif step.type == "AwsLambdaRollback":
                r.outputs = self._rollback_step(sr, step)
            elif step.type == "ShellScript":
                r.outputs, r.output = self._script(sr, step, timeout)
            elif step.phase in ("provision", "provision_rollback"):
                from reconciler.pipeline.provisioners import run_step

                r.outputs, r.output = run_step(self, sr, step, timeout)
            elif step.type == "Wait":
                d = parse_duration((step.body.get("spec") or {}).get("duration"))
                if d > timeout:
                    time.sleep(timeout)
                    raise StepFailed(f"timed out after {timeout:g}s (Wait {d:g}s)", "Timeout")
                self.log(f"   waiting {d:g}s")
                time.sleep(d)
            r.status = "Success"
        except StepFailed as exc:
            r.status, r.error, r.error_type = "Failed", str(exc), exc.error_type
            r.outputs, r.output = exc.outputs, exc.output
        except ReconcilerError as exc:
            r.status, r.error, r.error_type = "Failed", str(exc), "Unknown"
        r.duration = time.monotonic() - t0
        if r.outputs:
            sr.outputs[step.identifier] = r.outputs
            self._publish_outputs(sr, step, r.outputs)
        self.log(f"   {step.name}: {r.status}" + (f": {r.error}" if r.error else "") + f" ({r.duration:.1f}s)")
        return r

    def _publish_outputs(self, sr: StageRun, step: StepDef, outputs: dict) -> None:
        base = f"pipeline.stages.{sr.stage.identifier}.spec.execution.steps"
        for k, v in outputs.items():
            for prefix in [f"{base}.{step.identifier}"] + (
                [f"{base}.{step.group}.steps.{step.identifier}"] if step.group else []
            ):
                self.outputs_fixed[f"{prefix}.output.outputVariables.{k}"] = v
                self.outputs_fixed[f"{prefix}.output.{k}"] = v

    # ------------------------------------------------------------ AwsLambdaDeploy
    def _deploy(self, sr: StageRun, step: StepDef) -> dict:
        from reconciler.engine.apply import ApplyFailed, apply_plan
        from reconciler.engine.refresh import Context, make_plan

        s, spec = self.settings, sr.spec
        log = self.log
        ctx = Context(workspace=s.workspace, state_dir=s.state_dir, options=copy.deepcopy(sr.opts), log=lambda m: None)
        log("Deploying..\n")
        log("Aws Lambda Manifest Content")
        log(json.dumps({"FunctionName": spec.name, **_masked_config(spec.config, s.show_values)}, indent=3))
        plan = make_plan(ctx, self.aws)
        plan.functions = [fp for fp in plan.functions if fp.name == spec.name and fp.action != "orphan"]
        for w in ctx.warnings:
            log(f"warning: {w}")
        fp = plan.functions[0] if plan.functions else None
        if fp is None:
            raise StepFailed(f"the plan has no function {spec.name}")
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
        kind = {"S3": "AmazonS3", "ECR": "Ecr"}.get(art.get("type"), art.get("type"))
        log(
            f"Artifact: {kind} with identifier: {art.get('id')}: {(fp.code.get('source') or {}).get('uri')} (Code Sha256 [{fp.code.get('sha256')}])"
        )
        for c in fp.changes if fp.action == "update" else []:
            if c.kind in ("config", "tag"):
                log(
                    f"  ~ {c.path}"
                    + (
                        ""
                        if c.kind == "config" and c.path.startswith("Environment") and not s.show_values
                        else f": {c.old!r} → {c.new!r}"
                    )
                )
        before_ids = {h.get("id") for h in st.load(s.state_dir, spec.environment, spec.infrastructure).history}
        try:
            if fp.has_changes:
                apply_plan(plan, self.aws, s.state_dir, lambda m: log(f"  {m}"), lock_timeout=s.lock_timeout)
        except ApplyFailed as exc:
            raise StepFailed(str(exc)) from None
        finally:
            state = st.load(s.state_dir, spec.environment, spec.infrastructure)
            sr.deployed += [
                h["id"]
                for h in state.history
                if h.get("id") not in before_ids and h.get("function") == spec.name and h.get("operation") == "apply"
            ]
        facts = sr.facts()
        if fp.has_changes:
            from reconciler.engine.refresh import refresh_function

            live = refresh_function(self.aws, spec.region, spec.connector, spec.name)
            log("Verifying if status of function to be Successful")
            log(
                f"function: [{spec.name}], state: [{live.get('state')}], last update status: [{live.get('last_update_status')}]"
            )
            if fp.publish:
                log(f"Published new version: [{facts['RECONCILER_VERSION']}]")
                log(f"Published function ARN: [{facts['RECONCILER_VERSION_ARN']}]")
            log(f"Successfully deployed lambda function: [{spec.name}]")
            for a in spec.aliases:
                log("\nAws Lambda Alias Manifest Content")
                log(json.dumps({k[:1].lower() + k[1:]: v for k, v in a.items()}, indent=3))
                log(f"Alias [{a['Name']}] of function {spec.name} → version {facts['RECONCILER_VERSION']}")
        log("Done")
        return {
            "functionName": spec.name,
            "functionArn": facts["RECONCILER_FUNCTION_ARN"],
            "version": facts["RECONCILER_VERSION"],
            "alias": facts["RECONCILER_ALIAS"],
            "region": spec.region,
            "action": fp.action,
        }

    # ------------------------------------------------------------ AwsLambdaRollback
    def _rollback_step(self, sr: StageRun, step: StepDef) -> dict:
        if not sr.deployed:
            self.log("   nothing was deployed in this stage: nothing to roll back")
            return {"rolledBack": "false"}
        done = self.restore_stage(
            sr, f"pipeline {self.pipe.identifier}, stage {sr.stage.identifier}: step {step.identifier}"
        )
        return {
            "rolledBack": "true" if done else "false",
            "functionName": sr.spec.name,
            "version": sr.facts()["RECONCILER_VERSION"],
        }

    def restore_stage(self, sr: StageRun, reason: str) -> int:
        """Put back what ran before this stage's deploys, latest deploy first; recorded in the state history."""
        from reconciler.engine.apply import restore
        from reconciler.engine.live import project
        from reconciler.engine.refresh import refresh_function

        s, spec = self.settings, sr.spec
        restored = 0
        with st.locked(
            st.state_path(s.state_dir, spec.environment, spec.infrastructure), "rollback", timeout=s.lock_timeout
        ):
            for rec_id in reversed(sr.deployed):
                state = st.load(s.state_dir, spec.environment, spec.infrastructure)
                applied = next((h for h in state.history if h.get("id") == rec_id), None)
                if applied is None:
                    continue
                if applied.get("status") in ("rolled_back", "rollback_failed"):
                    self.log(f"   {spec.name}: this deploy was already rolled back ({applied.get('status')})")
                    continue
                prev = applied.get("previous") or {"exists": False}
                rec = state.functions.get(spec.name) or {}
                record = {
                    "id": str(uuid.uuid4()),
                    "function": spec.name,
                    "service": spec.service,
                    "operation": "rollback",
                    "status": "in_progress",
                    "started_at": st.now(),
                    "finished_at": None,
                    "version": prev.get("version"),
                    "code_sha256": prev.get("code_sha256"),
                    "reason": reason,
                    "pipeline": self.pipe.identifier,
                    "stage": sr.stage.identifier,
                    "rolls_back": rec_id,
                    "previous": {"exists": bool(rec), **{k: rec.get(k) for k in ("version", "code_sha256", "aliases")}},
                }
                state.history.append(record)
                state.write()
                self.log(
                    f"   {spec.name}: rolling back to "
                    + (
                        f"version {prev.get('version')} (code {prev.get('code_sha256')})"
                        if prev.get("exists")
                        else "no function (this stage created it)"
                    )
                )
                try:
                    restore(
                        self.aws,
                        spec.name,
                        spec.region,
                        spec.connector,
                        prev,
                        lambda m: self.log(f"   {m}"),
                        owner=spec.tags,
                    )
                except ReconcilerError as exc:
                    record.update(status="failed", finished_at=st.now(), error=str(exc))
                    state.write()
                    raise StepFailed(f"rollback of {spec.name} failed: {exc}") from None
                if prev.get("exists"):
                    live = refresh_function(self.aws, spec.region, spec.connector, spec.name)
                    rec.update(
                        version=prev.get("version"),
                        code_sha256=live.get("code_sha256"),
                        aliases=live.get("aliases", {}),
                        configuration=project(live.get("configuration") or {}, rec.get("configuration") or {}),
                        updated_at=st.now(),
                    )
                    if prev.get("code_params"):
                        rec.update(code_params=prev.get("code_params"), code_source=prev.get("code_source"))
                    state.functions[spec.name] = rec
                else:
                    state.functions.pop(spec.name, None)
                applied.update(status="rolled_back", rolled_back_by=record["id"])
                record.update(status="succeeded", finished_at=st.now())
                state.write()
                restored += 1
                self.log(f"   {spec.name}: rolled back")
        return restored

    def _rollback(self, sr: StageRun, reason: str) -> None:
        sr.result.rolled_back = True
        self.log(f"\n== rollback of stage {sr.stage.name} [{sr.target}]: {reason}")
        rb_failed = False
        from reconciler.pipeline.provisioners import rollback_steps

        for step in rollback_steps(self, sr):  # the execution's, then the provisioner's
            if step.body.get("when"):
                skip = None
                when = step.body["when"]
                if (
                    isinstance(when, dict)
                    and when.get("condition") is not None
                    and not self._condition(sr, step, when["condition"], (*step.path, "when", "condition"))
                ):
                    skip = f"when.condition {when['condition']!r} evaluated to false"
                if skip:
                    self._record_skip(sr, step, skip)
                    continue
            if rb_failed:
                self._record_skip(sr, step, "an earlier rollback step failed")
                continue
            res = self._run_step(sr, step)
            if res.status == "Failed":
                rb_failed = True
        if rb_failed:
            sr.result.reason = "rollback failed"
        elif not sr.stage.rollback_steps:
            self.log("   the stage has no rollbackSteps")

    # ------------------------------------------------------------ ShellScript
    def _script(self, sr: StageRun, step: StepDef, timeout: float, extra_env: dict | None = None) -> tuple[dict, str]:
        """A ShellScript step (and the script of a ShellScriptProvision step, with `extra_env`)."""
        spec = step.body.get("spec") or {}
        sp = (*step.path, "spec")
        script, env = sr.script(step)
        env.update(base_environment())
        env.update(sr.facts())
        env.update(extra_env or {})
        if spec.get("includeInfraSelectors") is True:  # the step asks for the infrastructure connector's credentials
            env.update(self._credentials(sr))
        for i, v in enumerate(spec.get("environmentVariables") or []):
            value = sr.resolve(v.get("value"), (*sp, "environmentVariables", i, "value"), step)
            env[v["name"]] = _s(value)
        outs = [(v["name"], str(v.get("value") or v["name"])) for v in spec.get("outputVariables") or []]
        script, env = self._with_secrets(sr, step, str(script), env)
        result = run_script(script, env, self.settings.workspace, timeout, outs, self.log, self.masker.mask)
        if result.timed_out:
            raise StepFailed(
                f"timed out after {timeout:g}s; the script's processes were killed",
                "Timeout",
                result.outputs,
                result.output[-OUTPUT_TAIL:],
            )
        if result.exit_code != 0:
            raise StepFailed(
                f"the script exited {result.exit_code}", "Unknown", result.outputs, result.output[-OUTPUT_TAIL:]
            )
        missing = [n for n, var in outs if n not in result.outputs]
        for n in missing:
            self.log(f"   warning: output variable '{n}': the script did not set ${dict(outs)[n]}")
            result.outputs[n] = ""
        return result.outputs, result.output[-OUTPUT_TAIL:]

    def _with_secrets(self, sr: StageRun, step: StepDef, script: str, env: dict) -> tuple[str, dict]:
        """The script and its environment with secret references replaced by their values,
        read from the store now (with the stage's infrastructure's connector and region);
        every line of output that holds one is scrubbed before it is shown or kept."""
        from reconciler.aws.secrets import read_values as read_secret_values
        from reconciler.util import secrets as sec

        ids = sec.references(script) + sec.references(env)
        if not ids:
            return script, env
        s = sr.spec
        conn = json.dumps(s.connector, sort_keys=True) if s.connector else None
        where = f"ShellScript step {step.identifier} ({self.pipe.file}:{self.pipe.line(*step.path)})"
        values = read_secret_values(self.aws, {(s.region, sid, conn): [where] for sid in ids})
        self.masker.add(*values.values())
        return sec.fill(script, s.region, values), sec.fill(env, s.region, values)

    def _credentials(self, sr: StageRun) -> dict[str, str]:
        """The AWS credentials of the stage target's connector (or the runner's default chain)
        as environment variables; their values are masked in every step's output from now on."""
        spec = sr.spec
        creds = self.aws.credentials(spec.region, spec.connector)
        sec.remember_credentials(creds)
        env = {"AWS_REGION": spec.region, "AWS_DEFAULT_REGION": spec.region, **creds}
        env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_ENDPOINT_URL") or k == "AWS_CA_BUNDLE"})
        return env

    # ------------------------------------------------------------ reports
    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for r in self.steps:
            counts[r.status] = counts.get(r.status, 0) + 1
        return {
            "pipeline": self.pipe.identifier,
            "name": self.pipe.name,
            "status": getattr(self, "status", "Failed"),
            "duration": round(getattr(self, "duration", 0.0), 3),
            "counts": counts,
            "stages": [s.to_dict() for s in self.stage_results],
            "steps": [r.to_dict() for r in self.steps],
        }

    def summary_text(self) -> str:
        rows = [
            [
                r.stage,
                r.target.infrastructure,
                r.phase,
                r.step,
                r.type,
                r.status,
                f"{r.duration:.1f}s",
                (r.error or r.reason or "")
                if r.status != "Success"
                else ", ".join(f"{k}={v}" for k, v in r.outputs.items()),
            ]
            for r in self.steps
        ]
        headers = ["stage", "infra", "phase", "step", "type", "status", "duration", "details"]
        widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
        lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=False)).rstrip() for r in [headers, *rows]]
        s = self.summary()
        counts = ", ".join(f"{n} {k.lower()}" for k, n in sorted(s["counts"].items()))
        skipped = [f"{r.stage} ({r.reason})" for r in self.stage_results if r.target is None and r.status == "Skipped"]
        lines += [""] + ([f"Skipped stages: {', '.join(skipped)}."] if skipped else [])
        lines += [f"Pipeline {s['pipeline']}: {s['status']} ({len(self.steps)} step(s): {counts})."]
        return "\n".join(lines) + "\n"


def _masked_config(config: dict, show_values: bool) -> dict:
    from reconciler.util.secrets import mask_vars

    out = copy.deepcopy(config)
    variables = (out.get("Environment") or {}).get("Variables")
    if isinstance(variables, dict):
        out["Environment"]["Variables"] = mask_vars(variables, show_values)
    return out


def _at(data: Any, path: tuple) -> Any:
    for p in path:
        try:
            data = data[p]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _dotted(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


# ---------------------------------------------------------------- plan --pipeline


def pipeline_plan(settings: RunSettings, aws, log: Callable[[str], None]) -> tuple[Plan, list[str]]:
    """What the pipeline's stages would change: one plan over every stage target."""
    from reconciler.engine.refresh import Context, make_plan

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
                from reconciler.pipeline.provisioners import plan_provisioning

                opts = plan_provisioning(runner, StageRun(runner, stage, t, opts, spec, scope), provisioning)
                if opts is None:
                    continue  # its values wait for the provisioner steps: planned when the pipeline runs
            ctx = Context(
                workspace=settings.workspace, state_dir=settings.state_dir, options=copy.deepcopy(opts), log=log
            )
            p = make_plan(ctx, aws)
            warnings += ctx.warnings
            if merged is None:
                merged = Plan(functions=[], state_refs={}, workspace=p.workspace, created_at=p.created_at)
            merged.state_refs.update(p.state_refs)
            for fp in p.functions:
                key = (fp.state_file, fp.name)
                if key not in seen:
                    seen.add(key)
                    merged.functions.append(fp)
    if merged is None and provisioning:
        merged = Plan(functions=[], state_refs={}, workspace=str(settings.workspace), created_at=st.now())
    if merged is None:
        raise ReconcilerError(f"pipeline '{settings.pipeline}' has no AwsLambdaDeploy step: it deploys nothing")
    merged.provisioners = provisioning  # type: ignore[attr-defined]  (shown and saved by cli_run)
    return merged, list(dict.fromkeys(warnings))
